"""The `lightning-info` command line: help, a tiny demo, and scoring a saved checkpoint."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import SmoothUniqueInformation
from lightning_info.cli import build_parser, main
from lightning_info.demo import auroc
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, train_val_split


def test_help_lists_every_option(capsys):
    for argv, expected in [
        ([], ["demo", "score"]),
        (["demo"], ["--dataset", "--epochs", "--corrupt-fraction", "--out", "--sui-samples"]),
        (["score"], ["--model", "--ckpt", "--datamodule", "--dataset", "--linearize-at"]),
    ]:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for word in expected:
            assert word in out


def test_console_script_help_runs():
    res = subprocess.run(
        [sys.executable, "-m", "lightning_info.cli", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    assert "lightning-info" in res.stdout


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=50).round(1)  # ties on purpose
    flags = rng.random(50) < 0.3
    pos, neg = scores[flags], scores[~flags]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg])
    assert auroc(scores, flags) == pytest.approx(brute)
    assert np.isnan(auroc(scores, np.zeros(50, bool)))


@pytest.mark.slow
def test_tiny_demo_writes_valid_report(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(
        [
            "demo", "--dataset", "digits", "--epochs", "2", "--max-samples", "400",
            "--probe-size", "80", "--sui-samples", "60", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| run |" in printed
    assert f"tensorboard --logdir {out / 'tensorboard'}" in printed
    report = out / "report"
    for name in ["dse_dsmi_curves.png", "most_informative.png", "most_suspicious.png"]:
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        assert len(data) > 5000, name
    csvs = sorted(report.glob("sui_scores_*.csv"))
    assert len(csvs) == 3
    for path in csvs:
        rows = list(csv.DictReader(path.open()))
        assert len(rows) == 60
        assert len({r["index"] for r in rows}) == 60
        assert all(np.isfinite(float(r["weight_si"])) for r in rows)
    summary = json.loads((report / "summary.json").read_text())
    assert set(summary["runs"]) == {"clean", "flipped_20pct", "flipped_20pct_no_stop"}
    flipped = summary["runs"]["flipped_20pct"]
    for key in ("auroc_loss", "auroc_weight_si", "auroc_loo_error"):
        assert 0.5 < flipped[key] <= 1.0  # each score finds the flipped labels better than chance
    assert "OverfittingEarlyStopping" in printed or "trained all 2 epochs" in printed
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_score_checkpoint_equals_callback_scores(tmp_path, capsys, optimizer):
    # one horizon rule for both entry points: SGD replays its steps, Adam the converged solution
    ds = load_dataset("digits")
    tr, _ = train_val_split(ds.inputs.shape[0], val_fraction=0.2, seed=0)
    va = train_val_split(ds.inputs.shape[0], val_fraction=0.2, seed=0)[1]
    pl.seed_everything(0, verbose=False)
    lr = 0.3 if optimizer == "sgd" else 1e-3
    model = MLPClassifier(64, 10, hidden=(16,), loss="mse", optimizer=optimizer, lr=lr)
    sui = SmoothUniqueInformation(max_samples=50, max_heldout=40, progress=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[sui, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(
        model,
        DataLoader(TensorDataset(ds.inputs[tr], ds.targets[tr]), batch_size=128),
        DataLoader(TensorDataset(ds.inputs[va], ds.targets[va]), batch_size=256),
    )
    out = tmp_path / "scored"
    code = main(
        [
            "score", "--model", "lightning_info.models:MLPClassifier",
            "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--dataset", "digits",
            "--max-samples", "50", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    assert "linearized at the init weights" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "sui_scores.csv").open()))
    assert [int(r["index"]) for r in rows] == sui.scores_.indices.tolist()
    # the CLI reads the snapshot, lr and steps from the checkpoint: the same scores as in fit
    # (held-out set sizes differ: the CLI uses up to 500 held-out samples, so compare weight SI)
    got = torch.tensor([float(r["weight_si"]) for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, sui.scores_.weight_si.double(), rtol=1e-6, atol=1e-12)
    expected_steps = None if optimizer == "adam" else trainer.global_step
    assert sui.scores_.settings["num_steps"] == expected_steps


@pytest.mark.slow
def test_score_num_steps_sentinels_are_the_pythons(tmp_path, capsys):
    ds = load_dataset("digits")
    pl.seed_everything(0, verbose=False)
    model = MLPClassifier(64, 10, hidden=(8,), loss="mse", optimizer="sgd", lr=0.3)
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(ds.inputs[:200], ds.targets[:200]), batch_size=50))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    base = [
        "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(tmp_path / "m.ckpt"),
        "--dataset", "digits", "--max-samples", "30", "--linearize-at", "final",
    ]  # fmt: skip
    for flag, expected in [("converged", None), ("auto", 4), ("7", 7)]:
        assert main([*base, "--num-steps", flag, "--out", str(tmp_path / flag)]) == 0
        from lightning_info.scoring import score_checkpoint

        result = score_checkpoint(
            MLPClassifier, tmp_path / "m.ckpt", dataset="digits", linearize_at="final",
            max_samples=30, num_steps=None if flag == "converged" else (int(flag) if flag.isdigit() else flag),
            out=tmp_path / f"py_{flag}",
        )  # fmt: skip
        assert result.settings["num_steps"] == expected
    with pytest.raises(SystemExit):  # 0 is not a horizon: the converged solution is 'converged'
        main([*base, "--num-steps", "0"])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def test_score_requires_data_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", "x.ckpt"])
    assert exc.value.code == 2
    assert "--datamodule" in _one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "nocolon", "--ckpt", "x.ckpt", "--dataset", "digits"])
    assert exc.value.code == 2
    assert "package.module:ClassName" in _one_error_line(capsys)


_USER_MODULE = '''
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn


class TinyCNN(pl.LightningModule):
    """A user's image model: it needs (N, 1, 8, 8) inputs and rejects flat pixels."""

    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16, 10)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(h.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''


@pytest.mark.slow
def test_score_imports_user_module_from_path_and_reshapes_embedded_images(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "user_models.py").write_text(_USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "user_models", raising=False)
    spec = importlib.util.spec_from_file_location("user_models", tmp_path / "user_models.py")
    user_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user_models)
    ds = load_dataset("digits")
    images = ds.inputs[:200].reshape(-1, 1, 8, 8)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(user_models.TinyCNN(), DataLoader(TensorDataset(images, ds.targets[:200]), 50))
    trainer.save_checkpoint(tmp_path / "cnn.ckpt")
    with pytest.raises(Exception, match=r"conv2d|Expected|shape"):  # flat pixels do not fit
        user_models.TinyCNN()(ds.inputs[:2])

    code = main(
        [
            "score", "--path", ".", "--model", "user_models:TinyCNN",
            "--ckpt", str(tmp_path / "cnn.ckpt"), "--dataset", "digits", "--max-samples", "40",
            "--out", str(tmp_path / "scored"),
        ]
    )  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "scored" / "sui_scores.csv").open()))
    assert len(rows) == 40
    assert all(np.isfinite(float(r["weight_si"])) for r in rows)


def test_score_import_error_points_to_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "only_here.py").write_text("class Model:\n    pass\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exc:
        main(["score", "--model", "only_here:Model", "--ckpt", "x.ckpt", "--dataset", "digits"])
    assert exc.value.code == 2
    err = _one_error_line(capsys)
    assert "only_here" in err
    assert "--path" in err
    assert "only_here" not in sys.modules  # not imported from the working directory
