"""The issue-13 training harness (``benchmarks/overfitting.py``): artifacts, shapes, resumability."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _scripts import loaded_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def overfitting():
    """Import ``benchmarks/overfitting.py`` (a script, not a package) as a module."""
    with loaded_script(BENCHMARKS / "overfitting.py", "bench_overfitting") as module:
        yield module


@pytest.mark.slow
def test_quick_training_artifacts(overfitting, tmp_path):
    threads = torch.get_num_threads()
    overfitting.main(["train", "--quick", "--jobs", "1", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # the in-process run restores the thread count
    files = sorted(p.name for p in tmp_path.glob("*.pt"))
    expected = sorted(
        f"digits_{r}_p{p:.1f}_s0.pt" for r in overfitting.RECIPES for p in overfitting.QUICK_NOISE
    )
    assert files == expected
    assert not list(tmp_path.glob(".*tmp*"))  # no leftover temporary files

    E, n_val, n_sub, d = overfitting.QUICK_EPOCHS, 360, 1077, 128
    for name in files:
        art = torch.load(tmp_path / name, weights_only=True)
        cfg, cv = art["config"], art["curves"]
        assert cfg["epochs"] == E
        assert cfg["dataset"] == "digits"
        assert cfg["n_subset"] == n_sub
        assert set(cv) == set(overfitting.CURVES)
        for key, curve in cv.items():
            assert curve.dtype == torch.float64, key
            assert curve.shape == (E + 1,), key
        for key in ("val_acc", "val_loss", "test_acc", "test_loss", "train_acc_noisy"):
            assert torch.isfinite(cv[key]).all(), key
        assert math.isnan(cv["train_loss"][0])
        assert torch.isfinite(cv["train_loss"][1:]).all()
        assert cv["train_acc_noisy"][-1] > cv["train_acc_noisy"][0]
        assert ((cv["val_acc"] >= 0) & (cv["val_acc"] <= 1)).all()

        assert art["val_features"].dtype == torch.float32
        assert art["val_features"].shape == (E + 1, n_val, d)
        assert art["val_labels"].dtype == torch.int64
        assert art["val_labels"].shape == (n_val,)
        assert art["train_subset_features"].dtype == torch.float16
        assert art["train_subset_features"].shape == (E + 1, n_sub, d)
        assert torch.isfinite(art["val_features"]).all()
        assert torch.isfinite(art["train_subset_features"].float()).all()
        assert (art["val_features"] >= 0).all()  # the penultimate features follow a ReLU
        assert torch.equal(art["train_subset_index"], torch.arange(n_sub))
        for key in ("train_subset_labels_noisy", "train_subset_labels_clean"):
            assert art[key].dtype == torch.int64
            assert art[key].shape == (n_sub,)
        bad = art["train_subset_corrupted"]
        assert bad.dtype == torch.bool
        assert bad.shape == (n_sub,)
        clean, noisy = art["train_subset_labels_clean"], art["train_subset_labels_noisy"]
        assert torch.equal(bad, noisy != clean)
        assert abs(bad.double().mean().item() - cfg["noise"]) < 0.01
        assert art["epoch_seconds"].shape == (E + 1,)
        assert art["epoch_seconds"][0] == 0
        assert (art["epoch_seconds"][1:] > 0).all()
        assert (art["eval_seconds"] > 0).all()

    # rerunning skips the existing files (resumable sweep) and leaves them untouched
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    lines = overfitting.cmd_train(
        overfitting.argparse.Namespace(
            datasets=["digits"],
            recipes=list(overfitting.RECIPES),
            noise=list(overfitting.QUICK_NOISE),
            seeds=[0],
            epochs=None,
            jobs=1,
            out=str(tmp_path),
            quick=True,
        )
    )
    assert len(lines) == len(files)
    assert all(line.startswith("skip") for line in lines)
    assert before == {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}

    # deterministic: the same seed gives the same curves and features
    line = overfitting.run_job(("digits", "mlp_adam", 0.4, 0, E, str(tmp_path / "again")))
    assert line.startswith("done digits_mlp_adam_p0.4_s0")
    again = torch.load(tmp_path / "again" / "digits_mlp_adam_p0.4_s0.pt", weights_only=True)
    saved = torch.load(tmp_path / "digits_mlp_adam_p0.4_s0.pt", weights_only=True)
    for key in ("val_acc", "val_loss", "train_loss", "train_acc_noisy"):
        assert torch.equal(again["curves"][key].nan_to_num(), saved["curves"][key].nan_to_num())
    assert torch.equal(again["val_features"], saved["val_features"])


def test_random_streams_are_independent(overfitting):
    """The saved training subset and the epoch order must not replay the corruption permutation."""
    n, p = 3000, 0.8
    sub = overfitting.train_subset_index(n, 1000)
    assert sub.numel() == 1000
    assert torch.equal(sub, sub.sort().values)
    targets = torch.arange(n) % 10
    for seed in (0, 1, 2):
        _, bad = overfitting.corrupt_labels(
            targets,
            fraction=p,
            num_classes=10,
            seed=overfitting.NOISE_SEED_OFFSET + seed,
            mode="flip",
        )
        assert abs(bad[sub].double().mean().item() - p) < 0.05
        gen = torch.Generator().manual_seed(overfitting.ORDER_SEED_OFFSET + seed)
        first = torch.randperm(n, generator=gen)[: round(p * n)]
        assert abs(bad[first].double().mean().item() - p) < 0.05
