"""Smoke tests of the SUI gallery examples' ``--quick`` modes, plus checks of their helpers
(AUROC against a brute-force pair count, FGSM against its defining properties)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def apps(load_example):
    return load_example("sui_applications")


@pytest.fixture(scope="module")
def wvf(load_example):
    return load_example("sui_weight_vs_functional")


def _auroc_pairs(pos: np.ndarray, score: np.ndarray) -> float:
    """Brute force: fraction of (positive, negative) pairs ranked right, ties counting 1/2."""
    wins = 0.0
    pairs = 0
    for i in np.flatnonzero(pos):
        for j in np.flatnonzero(~pos):
            wins += 1.0 if score[i] > score[j] else 0.5 if score[i] == score[j] else 0.0
            pairs += 1
    return wins / pairs


def test_auroc_matches_brute_force_pair_count(apps):
    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 40 + 7 * trial
        pos = rng.random(n) < 0.3
        pos[0], pos[1] = True, False
        score = rng.integers(0, 6, n).astype(float)  # many ties
        assert apps.auroc(pos, score) == pytest.approx(_auroc_pairs(pos, score), abs=1e-12)
        cont = rng.normal(size=n) + pos
        assert apps.auroc(pos, cont) == pytest.approx(_auroc_pairs(pos, cont), abs=1e-12)
    pos = np.array([True, True, False, False, False])
    assert apps.auroc(pos, np.array([5.0, 4.0, 1.0, 2.0, 3.0])) == 1.0
    assert apps.auroc(pos, -np.array([5.0, 4.0, 1.0, 2.0, 3.0])) == 0.0
    assert apps.auroc(pos, np.ones(5)) == 0.5
    with pytest.raises(ValueError, match="positive and one negative"):
        apps.auroc(np.zeros(4, dtype=bool), np.arange(4.0))


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_fgsm_is_the_max_norm_eps_step_that_increases_the_loss(apps, loss):
    torch.manual_seed(0)
    d, eps = 4, 0.1
    model = torch.nn.Linear(d, 3).double()  # loss convex in x: the linear bound holds exactly
    x = torch.randn(6, d, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])

    def per_sample_loss(inp):
        out = model(inp)
        if loss == "cross_entropy":
            return F.cross_entropy(out, y, reduction="none")
        return 0.5 * (out - F.one_hot(y, 3).double()).pow(2).sum(1)

    x_adv = apps.fgsm(model, x, y, eps, loss=loss, clip=None)
    delta = x_adv - x
    assert torch.allclose(delta.abs(), torch.full_like(delta, eps), atol=1e-12)  # ||delta||_inf
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(per_sample_loss(xg).sum(), xg)
    for i in range(x.shape[0]):
        # FGSM maximizes the first-order gain g . delta over the eps ball: best of all 2^d corners
        corners = torch.tensor(list(itertools.product((-eps, eps), repeat=d)), dtype=x.dtype)
        best = float((corners @ grad[i]).max())
        assert float(grad[i] @ delta[i]) == pytest.approx(best, rel=1e-12)
    before, after = per_sample_loss(x), per_sample_loss(x_adv)
    # convexity: loss(x + delta) >= loss(x) + g . delta = loss(x) + eps ||g||_1 > loss(x)
    assert torch.all(after >= before + eps * grad.abs().sum(1) - 1e-12)
    assert torch.all(after > before)


def test_fgsm_clipping_keeps_pixels_in_range(apps):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.rand(10, 16)
    x[:, :4] = 0.0
    x[:, 4:8] = 1.0
    y = torch.randint(0, 3, (10,))
    x_adv = apps.fgsm(model, x, y, 0.3)
    assert float(x_adv.min()) >= 0.0
    assert float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) <= 0.3 + 1e-6
    assert model.training  # the model's mode is restored
    with pytest.raises(ValueError, match="loss"):
        apps.fgsm(model, x, y, 0.1, loss="hinge")


def test_blur_of_constant_image_is_constant_and_preserves_the_mean_inside(apps):
    x = torch.full((2, 64), 0.7)
    assert torch.allclose(apps.blur(x, (8, 8)), x)
    img = torch.zeros(1, 64)
    img[0, 3 * 8 + 3] = 9.0  # an interior pixel spreads evenly over its 3x3 neighbourhood
    out = apps.blur(img, (8, 8)).reshape(8, 8)
    assert torch.allclose(out[2:5, 2:5], torch.ones(3, 3))
    assert float(out.sum()) == pytest.approx(9.0)


def test_sui_applications_quick(apps, tmp_path, capsys):
    res = apps.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    png = tmp_path / "sui_applications.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    for key in ("a. Summarization", "b. Under-sampled", "c. Data sources", "AUROC"):
        assert key in printed

    a = res["summarization"]
    for key in ("iterative", "one_shot", "bottom", "random", "random_std"):
        assert len(a[key]) == len(a["fractions"]) == 2
        assert all(0.0 <= v <= 1.0 for v in a[key])
    assert a["full"] > 0.5  # 10 classes: well above chance after training on all samples
    assert a["num_rescorings"] >= 2  # the iterative form rescored the remaining samples

    b = res["rare_class"]
    assert b["counts"][apps.RARE_CLASS] == b["kept"] == round(0.1 * b["of"])
    assert sum(b["counts"].values()) == 300 - b["of"] + b["kept"]
    # the counts-weighted mean of the normalized class means is 1 by construction
    for by in ("weight_si", "functional_si"):
        total = sum(b["counts"][c] * b[by][c] for c in b["counts"])
        assert total / sum(b["counts"].values()) == pytest.approx(1.0)
        assert b[f"{by}_ratio"] > 1.0  # the paper's finding, also in the quick run

    c = res["sources"]
    assert c["counts"] == [180, 60, 60]
    assert np.dot(c["counts"], c["weight_si"]) / 300 == pytest.approx(1.0)

    d = res["corrupted"]
    assert d["n_each"] == 15
    assert d["attacked_acc_after"] < d["attacked_acc_before"]  # FGSM fools the clean model
    for row in d["auroc"].values():
        assert set(row) == {"weight SI", "functional SI", "training loss"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
    assert d["auroc"]["noise-corrupted"]["weight SI"] > 0.5


def test_sui_weight_vs_functional_quick(wvf, tmp_path, capsys):
    res = wvf.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    png = tmp_path / "sui_weight_vs_functional.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    assert "Spearman" in printed
    w, f = res["weight_si"], res["functional_si"]
    assert w.shape == f.shape == (300,)
    assert np.all(w > 0)
    assert np.all(f > 0)
    assert int(res["flipped"].sum()) == 15
    # independent recomputation of the correlations: Spearman = Pearson of the ranks
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)
    assert res["spearman"] == pytest.approx(np.corrcoef(rank(w), rank(f))[0, 1], abs=1e-9)
    assert res["pearson_log"] == pytest.approx(
        np.corrcoef(np.log10(w), np.log10(f))[0, 1], abs=1e-9
    )
    k = res["top_k"]
    assert k == 15
    brute_overlap = len(set(np.argsort(-w)[:k]) & set(np.argsort(-f)[:k]))
    assert res["top_overlap"] == brute_overlap
    groups = res["groups"]
    assert groups["top by both"]["n"] + groups["top by weight only"]["n"] == k
    assert groups["top by both"]["n"] + groups["top by F-SI only"]["n"] == k
    assert res["by_type"]["flipped"][0] > res["by_type"]["clean"][0]
