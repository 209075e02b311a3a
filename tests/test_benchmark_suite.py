"""The issue-19 suite (``benchmarks/_tasks.py``, ``overfitting.py suite-*``): registry, quick runs,
the replayed signals against the monitor's own metric, and the analysis against hand-worked runs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from _scripts import loaded_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def overfitting():
    """Import ``benchmarks/overfitting.py`` (a script) as a module; it puts ``benchmarks/`` on the
    path, so the helper modules import too."""
    with loaded_script(BENCHMARKS / "overfitting.py", "bench_overfitting") as module:
        yield module


@pytest.fixture(scope="module")
def tasks(overfitting):
    return sys.modules["_tasks"] if "_tasks" in sys.modules else __import__("_tasks")


def test_registry_covers_the_issue(tasks):
    """>= 8 families; both splits; every modality, architecture kind and recipe of issue 19."""
    ts = tasks.TASK_LIST
    assert len(ts) >= 8
    assert len(tasks.DEVELOPMENT_TASKS) >= 4
    assert len(tasks.HELD_OUT_TASKS) >= 3
    assert set(tasks.DEVELOPMENT_TASKS).isdisjoint(tasks.HELD_OUT_TASKS)
    for word in ("images", "signals", "tabular", "token"):
        assert any(word in t.modality for t in ts), word
    assert sum(t.hard for t in ts) >= 2
    assert any(t.pretrain_epochs > 0 for t in ts)
    assert any(t.augment is not None for t in ts)
    assert any(t.optimizer_name == "sgd" and t.cosine and t.weight_decay > 0 for t in ts)
    assert any(t.optimizer_name.startswith("adam") for t in ts)
    assert len({t.batch_size for t in ts}) >= 3
    # the existing, tuned-on datasets are development families
    for t in ts:
        if t.name.startswith(("digits", "mnist_mlp")):
            assert t.split == tasks.DEVELOPMENT
    # the split is written down in RESULTS.md
    results = (BENCHMARKS / "RESULTS.md").read_text()
    for t in ts:
        assert (
            f"| {t.name} | {t.split} |" in results or f"| **{t.name}** | **{t.split}** |" in results
        )


def test_registry_models_and_data(tasks):
    """Every family's data are fixed (same split twice), sized, and its model's features are the
    input of its last Linear."""
    for t in tasks.TASK_LIST:
        d = t.data()
        again = t.make_data()
        assert torch.equal(d["x_train"], again["x_train"]), t.name
        assert torch.equal(d["y_test"], again["y_test"]), t.name
        assert int(d["y_train"].max()) == t.num_classes - 1, t.name
        torch.manual_seed(0)
        model = t.model().eval()
        feats, logits = model(d["x_val"][:5])
        assert feats.shape == (5, t.feature_dim), t.name
        torch.testing.assert_close(logits, model.head(feats))


def test_image_augmentation_is_a_translation(tasks):
    """``aug_image14`` moves a 14x14 image by -1..1 pixels (zero fill): compare with a brute-force
    shift of each sample by the offsets the same generator draws."""
    x = torch.rand(6, 196)
    out = tasks.aug_image14(x, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    dx = torch.randint(0, 3, (6,), generator=gen) - 1
    dy = torch.randint(0, 3, (6,), generator=gen) - 1
    for i in range(6):
        img, ref = x[i].view(14, 14), torch.zeros(14, 14)
        for r in range(14):
            for c in range(14):
                rr, cc = r + int(dy[i]), c + int(dx[i])
                if 0 <= rr < 14 and 0 <= cc < 14:
                    ref[r, c] = img[rr, cc]
        assert torch.equal(out[i].view(14, 14), ref)


def test_knn_accuracy_matches_sklearn(overfitting):
    import _suite_runs
    from sklearn.neighbors import KNeighborsClassifier

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(80, 4, generator=gen, dtype=torch.float64)
    y = (z[:, 0] + 0.8 * torch.randn(80, generator=gen, dtype=torch.float64) > 0).long()
    ours = _suite_runs.knn_accuracy(z, y, k=5)
    hits = 0
    for i in range(80):  # leave-one-out, brute force
        keep = torch.arange(80) != i
        clf = KNeighborsClassifier(5).fit(z[keep].numpy(), y[keep].numpy())
        hits += int(clf.predict(z[i : i + 1].numpy())[0] == int(y[i]))
    assert ours == pytest.approx(hits / 80)  # 2 classes, 5 neighbours: no tied votes
    assert 0.55 < ours < 1.0


def test_probe_signals_are_the_monitors(overfitting):
    """The replayed dsmi_y / dsmi_z equal the monitor's per-layer metric (``_DiffusionProfile``
    with its default options: median width, float32, 5 repeats, 10 k-means clusters, seed 0)."""
    import _suite_runs

    from lightning_info.metrics import DiffusionSpectralEntropy
    from lightning_info.metrics.dse import _DiffusionProfile

    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (200,), generator=gen)
    z = torch.randn(200, 16, generator=gen) + 6.0 * torch.nn.functional.one_hot(y, 16).float()
    ours = _suite_runs.probe_signals(z, y)
    options = DiffusionSpectralEntropy(
        sigma="median", dtype=torch.float32, max_samples=None
    ).options()
    metric = _DiffusionProfile(("dsmi_y",), num_repeats=5, self_clusters=10, **options)
    metric.update(z, y[:, None])
    profile = metric.compute()
    assert ours["dsmi_y"] == pytest.approx(float(profile.dsmi["dsmi_y"]), abs=1e-4)
    assert ours["dsmi_z"] == pytest.approx(float(profile.dsmi["dsmi_z"]), abs=1e-4)
    assert ours["dsmi_y"] > 0.5  # separated classes carry label information


@pytest.mark.slow
def test_quick_suite_runs_and_analysis(overfitting, tmp_path):
    """``suite-train --quick``: one tiny run per model/recipe kind, artifacts, resumability,
    determinism; ``suite-analyze`` tables on them."""
    import _suite_analysis
    import _suite_cli
    import _suite_runs

    threads = torch.get_num_threads()
    overfitting.main(["suite-train", "--quick", "--jobs", "1", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads
    files = sorted(p.name for p in tmp_path.glob("*_s0.pt"))
    assert files == sorted(f"{t}_p0.3_s0.pt" for t in _suite_cli.QUICK_TASKS)
    E = _suite_cli.QUICK_EPOCHS
    for name in files:
        art = torch.load(tmp_path / name, weights_only=True)
        cfg = art["config"]
        assert cfg["epochs"] == E
        for key in ("val_acc", "test_acc", "train_acc_noisy", "train_acc_corrupted"):
            curve = art["curves"][key]
            assert curve.shape == (E + 1,), key
            assert torch.isfinite(curve).all(), key
            assert ((curve >= 0) & (curve <= 1)).all(), key
        assert math.isnan(art["curves"]["train_loss"][0])
        assert set(art["signals"]) == {"dsmi_y", "dsmi_z", "knn5"}
        for key, values in art["signals"].items():
            assert values.shape == (E + 1,), key
            assert torch.isfinite(values).all(), key
        n_probe = cfg["n_probe"]
        assert art["probe_features"].shape == (E + 1, n_probe, _tasks_of(cfg).feature_dim)
        # the signals are the ones of the saved features
        e = E
        again = _suite_runs.probe_signals(art["probe_features"][e], art["probe_labels"])
        assert again["dsmi_y"] == pytest.approx(float(art["signals"]["dsmi_y"][e]), abs=1e-6)
        assert cfg["n_corrupted"] == round(0.3 * cfg["n_train"])
    assert (tmp_path / "pretrained_mnist14_finetune_cnn_bn.pt").exists()

    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}
    overfitting.main(["suite-train", "--quick", "--jobs", "1", "--out", str(tmp_path)])
    assert before == {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.pt")}

    line = _suite_runs.run_job(("tokens_gru", 0.3, 0, E, str(tmp_path / "again")))
    assert line.startswith("done tokens_gru_p0.3_s0")
    a = torch.load(tmp_path / "again" / "tokens_gru_p0.3_s0.pt", weights_only=True)
    b = torch.load(tmp_path / "tokens_gru_p0.3_s0.pt", weights_only=True)
    assert torch.equal(a["probe_features"], b["probe_features"])

    text = _suite_analysis.analyze(tmp_path)
    assert "development families" in text
    assert "held-out families" in text
    for t in _suite_cli.QUICK_TASKS:
        assert f"| {t} |" in text


def _tasks_of(cfg):
    import _tasks

    return _tasks.TASKS[cfg["task"]]


def _run(task: str, noise: float, val, test, dsmi, dsmi_z=None, train_loss=None) -> dict:
    n = len(val)
    t = lambda v: torch.tensor(v, dtype=torch.float64)
    return {
        "task": task,
        "noise": noise,
        "epochs": n - 1,
        "curves": {
            "val_acc": t(val),
            "test_acc": t(test),
            "train_acc_corrupted": t([math.nan] * n),
            "train_loss": t([math.nan] * n if train_loss is None else train_loss),
        },
        "signals": {
            "dsmi_y": t(dsmi),
            "dsmi_z": t(dsmi if dsmi_z is None else dsmi_z),
            "knn5": t(val),
        },
    }


def test_policy_replay_by_hand(overfitting):
    """A run worked out by hand: validation accuracy peaks at epoch 2, then 6 epochs without a
    gain while DSMI reaches a new maximum at epoch 6 and test accuracy peaks at epoch 7."""
    import _suite_analysis as A

    val = [0.1, 0.5, 0.6, 0.55, 0.55, 0.55, 0.55, 0.58, 0.59, 0.58] + [0.5] * 12
    test = [0.1, 0.5, 0.6, 0.55, 0.55, 0.55, 0.55, 0.70, 0.60, 0.58] + [0.5] * 12
    dsmi = [0.1, 0.5, 0.6, 0.6, 0.6, 0.6, 0.9, 0.5, 0.4, 0.4] + [0.3] * 12
    run = _run("tokens_transformer", 0.4, val, test, dsmi)
    table = A.regrets([run])["tokens_transformer"]
    # baseline: best 0.6 at epoch 2; epochs 3..7 without a gain: stop at 7, keep 2 (regret 10 pp)
    (_, out, g) = table[A.BASELINE][0]
    assert (out.stop_epoch, out.kept_epoch) == (7, 2)
    assert g == pytest.approx(10.0)
    # old default: memorization stop (DSMI < 0.8 * 0.9 twice: epochs 7, 8) -> stop 8, keep 2
    (_, out, g) = table[A.OLD][0]
    assert (out.stop_epoch, out.kept_epoch) == (8, 2)
    # new default: the DSMI maximum at epoch 6 resets the wait; no gain over 0.6 afterwards:
    # stop at 16, keep epoch 2 (the best validation accuracy)
    (_, out, g) = table[A.NEW][0]
    assert (out.stop_epoch, out.kept_epoch) == (16, 2)
    assert g == pytest.approx(10.0)
    # never stopping keeps the last epoch: 20 pp below the best test accuracy
    assert table["no stop"][0][2] == pytest.approx(20.0)
    crit = A.criteria_table([run], "held-out")
    assert "| tokens_transformer | 10.00 / 10.0 | 10.00 / 10.0 | yes | yes |" in crit


def test_label_free_check_replay_by_hand(overfitting):
    """The label-free stop keeps epoch 1 (its DSMI maximum) and stops at epoch 4 (DSMI below 80 %
    of it at epochs 3 and 4); the kept epoch made 0 % of the training-loss decrease of epochs
    1..4 (2.0 -> 1.0), while test accuracy peaks at epoch 4 (40 pp of regret): a bad run that
    the check catches at every threshold. A second run keeps its last epoch: no warning."""
    import _suite_analysis as A

    nan = math.nan
    bad = _run(
        "tokens_transformer",
        0.0,
        val=[0.1, 0.2, 0.4, 0.5, 0.6],
        test=[0.1, 0.2, 0.4, 0.5, 0.6],
        dsmi=[0.1] * 5,
        dsmi_z=[0.5, 1.0, 0.9, 0.7, 0.6],
        train_loss=[nan, 2.0, 1.6, 1.2, 1.0],
    )
    good = _run(
        "tokens_transformer",
        0.0,
        val=[0.1, 0.2, 0.4, 0.5, 0.6],
        test=[0.1, 0.2, 0.4, 0.5, 0.6],
        dsmi=[0.1] * 5,
        dsmi_z=[0.5, 0.6, 0.7, 0.8, 0.9],
        train_loss=[nan, 2.0, 1.6, 1.2, 1.0],
    )
    (_, out, g) = A.regrets([bad])["tokens_transformer"][A.LABEL_FREE][0]
    assert (out.stop_epoch, out.kept_epoch) == (4, 1)
    assert g == pytest.approx(40.0)
    assert A.label_free_fraction(bad, out) == pytest.approx(0.0)
    (_, out, g) = A.regrets([good])["tokens_transformer"][A.LABEL_FREE][0]
    assert (out.stop_epoch, out.kept_epoch) == (4, 4)
    assert A.label_free_fraction(good, out) == pytest.approx(1.0)
    table = A.check_table([bad, good], "held-out", (0.4,))
    assert "| tokens_transformer | 0.4 | 2 | 1 | 1 / 1 | 0 / 1 | 40.0 / 0.0 |" in table
