"""``examples/dse_initialization.py`` and ``examples/dse_predict_accuracy.py``: quick modes + helpers.

The quick modes run in-process once per module; the tests check the structure of what they return
and print, recompute the reported Spearman correlations with an independent rank implementation,
and check the helpers against hand-written references.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset

pytestmark = pytest.mark.usefixtures("single_thread")


def _spearman(a, b) -> float:
    """Spearman's rho without scipy: Pearson correlation of average ranks (ties share ranks)."""

    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(1, len(v) + 1)
        for value in np.unique(v):  # ties: every member gets the mean of their positions
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def init_module(load_example):
    return load_example("dse_initialization")


@pytest.fixture(scope="module")
def predict_module(load_example):
    return load_example("dse_predict_accuracy")


@pytest.fixture(scope="module")
def init_quick(init_module, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("init")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        out = init_module.main(["--quick", "--out", str(out_dir)])
    return out, out_dir, buffer.getvalue()


@pytest.fixture(scope="module")
def predict_quick(predict_module, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("predict")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        out = predict_module.main(["--quick", "--out", str(out_dir)])
    return out, out_dir, buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# the reference Spearman itself
# ----------------------------------------------------------------------------------------------
def test_reference_spearman_closed_form():
    # Without ties rho = 1 - 6 sum d^2 / (n (n^2 - 1)), d = rank differences.
    a = [0.3, 1.5, -2.0, 4.0, 0.9]  # ranks 2 4 1 5 3
    b = [10.0, 30.0, 20.0, 50.0, 40.0]  # ranks 1 3 2 5 4
    d2 = (2 - 1) ** 2 + (4 - 3) ** 2 + (1 - 2) ** 2 + 0 + (3 - 4) ** 2
    assert _spearman(a, b) == pytest.approx(1 - 6 * d2 / (5 * 24))
    assert _spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks (1.5, 1.5, 3) against (1, 2, 3) -> Pearson of those vectors = sqrt(3)/2
    assert _spearman([5, 5, 7], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)


# ----------------------------------------------------------------------------------------------
# helpers (both scripts carry the same small helpers; each copy is checked)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dse_initialization", "dse_predict_accuracy"])
def test_penultimate_and_accuracy_match_hand_written_forward(load_example, name):
    module = load_example(name)
    torch.manual_seed(0)
    model = MLPClassifier(5, 3, hidden=(4, 6))
    x = torch.randn(20, 5)
    w1, b1 = model.net[0].weight, model.net[0].bias
    w2, b2 = model.net[2].weight, model.net[2].bias
    w3, b3 = model.net[4].weight, model.net[4].bias
    with torch.no_grad():
        h = torch.clamp(torch.clamp(x @ w1.T + b1, min=0) @ w2.T + b2, min=0)
        logits = h @ w3.T + b3
    torch.testing.assert_close(module.penultimate(model, x), h)
    y = torch.randint(0, 3, (20,))
    expected = sum(int(logits[i].argmax() == y[i]) for i in range(20)) / 20
    assert module.accuracy(model, x, y) == pytest.approx(expected)
    assert module.accuracy(model, x, logits.argmax(1)) == 1.0


@pytest.mark.parametrize("name", ["dse_initialization", "dse_predict_accuracy"])
def test_splits_are_disjoint_and_class_balanced(load_example, name):
    module = load_example(name)
    targets = load_dataset("mnist").targets  # stored sorted by class: a contiguous slice fails
    for quick, sizes in ((True, (500, 300, 1000)), (False, (1000, 1000, 3000))):
        idx = module.splits(len(targets), quick=quick)
        assert tuple(len(idx[k]) for k in ("test", "probe", "train")) == sizes
        together = torch.cat([idx["test"], idx["probe"], idx["train"]])
        assert len(set(together.tolist())) == sum(sizes)
        for key, part in idx.items():
            counts = torch.bincount(targets[part], minlength=10)
            assert counts.min() >= 0.6 * len(part) / 10, (key, counts)


def test_init_normal_draws_the_requested_std(load_example):
    module = load_example("dse_initialization")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(800, 400), nn.ReLU(), nn.Linear(400, 300))
    module.init_normal_(model, 0.1)
    for layer in (model[0], model[2]):
        w = layer.weight.detach().double()
        assert w.std().item() == pytest.approx(0.1, rel=0.01)
        assert abs(w.mean().item()) < 0.002
        # Normal, not uniform: 68.3% of the draws lie within one std (uniform: 57.7%).
        assert (w.abs() < 0.1).double().mean().item() == pytest.approx(0.6827, abs=0.005)
        assert torch.count_nonzero(layer.bias) == 0


# ----------------------------------------------------------------------------------------------
# quick modes
# ----------------------------------------------------------------------------------------------
def test_dse_initialization_quick(init_module, init_quick):
    out, out_dir, printed = init_quick
    png = out_dir / "dse_initialization.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    runs, epochs = out["runs"], out["epochs"]
    assert len(runs) == 2 * len(init_module.INIT_STDS)
    log2n = math.log2(out["n_probe"])
    for r in runs:
        assert len(r["dse"]) == len(r["test_acc"]) == epochs + 1
        assert all(0.0 <= v <= log2n for v in r["dse"])
        assert all(0.0 <= a <= 1.0 for a in r["test_acc"])
        assert r["final_acc"] == r["test_acc"][-1]
        assert f"{r['final_acc']:.3f}" in printed
        # DSE of the held-out features rises with training (the paper's first observation).
        assert r["dse"][-1] > r["dse"][0]
        assert r["final_acc"] > 0.3  # well above chance (0.1) after 3 quick epochs
    # Same seed, weights N(0, std^2) from the same normals, zero biases, ReLU: the std 0.1 network
    # is the std 0.01 one scaled by 10 per layer, so its penultimate features are 100x larger.
    by_key = {(r["std"], r["seed"]): r for r in runs}
    for (std, seed), r in by_key.items():
        if std == 0.01:
            assert by_key[(0.1, seed)]["norm0"] == pytest.approx(100 * r["norm0"], rel=1e-4)
    # With sigma = 10 fixed, 10x smaller weights give ~100x smaller penultimate features (two layers), whose
    # DSE at initialization is ~0, far below that of the std 0.1 networks.
    small = [r["dse"][0] for r in runs if r["std"] == 0.01]
    large = [r["dse"][0] for r in runs if r["std"] == 0.1]
    assert max(small) < 0.05
    assert min(large) > 10 * max(small)
    # The reported correlations are Spearman's rho of DSE at epoch e with the final accuracy.
    groups = {"all": runs} | {
        f"std {s:g}": [r for r in runs if r["std"] == s] for s in init_module.INIT_STDS
    }
    assert set(out["correlations"]) == set(groups)
    for name, members in groups.items():
        for e in out["early_epochs"]:
            expected = _spearman([r["dse"][e] for r in members], [r["final_acc"] for r in members])
            rho = out["correlations"][name][e][0]
            assert (math.isnan(rho) and math.isnan(expected)) or rho == pytest.approx(expected)
    assert f"saved {png}" in printed


def test_dse_initialization_quick_default_width(init_module, init_quick):
    """The same runs at the monitor's default width (``DEFAULT_SIGMA``): a width derived from the
    features, so the 100x feature scale between the two init stds leaves DSE at init unchanged."""
    out, _, printed = init_quick
    runs, epochs = out["runs"], out["epochs"]
    log2n = math.log2(out["n_probe"])
    assert f"DSE at sigma = {init_module.DEFAULT_SIGMA}" in printed
    for r in runs:
        assert len(r["dse_default"]) == epochs + 1
        assert all(0.0 <= v <= log2n for v in r["dse_default"])
        assert f"{r['dse_default'][-1]:>9.3f} |" in printed
    by_key = {(r["std"], r["seed"]): r for r in runs}
    for (std, seed), r in by_key.items():
        if std == 0.01:
            other = by_key[(0.1, seed)]["dse_default"][0]
            assert other == pytest.approx(r["dse_default"][0], abs=1e-6)
            assert r["dse_default"][0] > 1.0  # not the near-0 value sigma = 10 gives here
    groups = {"all": runs} | {
        f"std {s:g}": [r for r in runs if r["std"] == s] for s in init_module.INIT_STDS
    }
    assert set(out["correlations_default"]) == set(groups)
    for name, members in groups.items():
        for e in out["early_epochs"]:
            expected = _spearman(
                [r["dse_default"][e] for r in members], [r["final_acc"] for r in members]
            )
            rho = out["correlations_default"][name][e][0]
            assert (math.isnan(rho) and math.isnan(expected)) or rho == pytest.approx(expected)


def test_dse_predict_accuracy_quick(predict_quick):
    out, out_dir, printed = predict_quick
    png = out_dir / "dse_predict_accuracy.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    rows = out["rows"]
    assert len(rows) == 4
    assert len({r["name"] for r in rows}) == 4
    log2n = math.log2(out["n_probe"])
    for r in rows:
        assert 0.0 <= r["test_acc"] <= 1.0
        assert 0.0 <= r["dse"] <= log2n
        assert abs(r["dsmi"]) <= log2n
        assert r["name"] in printed
        assert r["params"] == 784 * r["width"] + r["width"] + r["width"] * 10 + 10  # depth 1
    # more epochs of the same run -> lower training loss and higher test accuracy here
    for width in {r["width"] for r in rows}:
        e1, e3 = sorted((r for r in rows if r["width"] == width), key=lambda r: r["epochs"])
        assert e3["train_loss"] < e1["train_loss"]
        assert e3["test_acc"] > e1["test_acc"]
    acc = [r["test_acc"] for r in rows]
    for key in ("dsmi", "dse"):
        rho, p = out["spearman"][key]
        assert rho == pytest.approx(_spearman([r[key] for r in rows], acc))
        assert 0.0 <= p <= 1.0
        assert f"{rho:+.3f}" in printed
    # ... and over the better half of the models by test accuracy
    top = out["top_half"]
    assert len(top) == 2
    assert min(r["test_acc"] for r in top) >= max(
        r["test_acc"] for r in rows if r["name"] not in {t["name"] for t in top}
    )
    top_acc = [r["test_acc"] for r in top]
    for key in ("dsmi", "dse"):
        rho = out["spearman_top_half"][key][0]
        expected = _spearman([r[key] for r in top], top_acc)
        assert (math.isnan(rho) and math.isnan(expected)) or rho == pytest.approx(expected)
    # The finding on this small family: DSMI(Z;Y) ranks the models like their test accuracy.
    assert out["spearman"]["dsmi"][0] > 0.5
    assert f"saved {png}" in printed


def test_dse_predict_accuracy_quick_default_width(predict_module, predict_quick):
    """Both quantities also at the monitor's default width, each with its Spearman rho printed."""
    out, _, printed = predict_quick
    rows = out["rows"]
    log2n = math.log2(out["n_probe"])
    assert set(out["spearman"]) == set(predict_module.MEASURES)
    acc = [r["test_acc"] for r in rows]
    for r in rows:
        assert 0.0 <= r["dse_default"] <= log2n
        assert abs(r["dsmi_default"]) <= log2n
        assert f"{r['dsmi_default']:>8.3f} {r['dse_default']:>8.3f}" in printed
        assert r["dse_default"] != pytest.approx(r["dse"], abs=1e-3)  # two different widths
    for key in ("dsmi_default", "dse_default"):
        rho, _ = out["spearman"][key]
        assert rho == pytest.approx(_spearman([r[key] for r in rows], acc))
        label = predict_module.MEASURES[key][2].split()[0]
        sigma = predict_module.DEFAULT_SIGMA
        assert (
            f"Spearman rho of {label} (sigma = {sigma}) with test accuracy: {rho:+.3f}" in printed
        )
