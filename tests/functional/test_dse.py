"""Tests for DSE / DSMI against the independent NumPy reference and closed forms."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch
from _reference import ref_bin_scalar, ref_dse, ref_dsmi
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.functional.dse import _bin_scalar, _dse_compute, _dsmi_compute
from lightning_info.utilities.enums import EigenSolver

dse = diffusion_spectral_entropy
dsmi = diffusion_spectral_mutual_information


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------
# data families (seeded, small)
# ------------------------------------------------------------------------------------------
def _uniform(n=400, seed=0):
    return np.random.default_rng(seed).uniform(0, 5, size=(n, 20))


def _near_rank_one(n=500, seed=1):
    # uniform [0,1]^10 with sigma=10: a nearly rank-one kernel, the worst case for float32
    return np.random.default_rng(seed).uniform(size=(n, 10))


def _clustered(n=400, seed=2):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, 30)) * 8
    return centers[rng.integers(0, 8, n)] + rng.normal(size=(n, 30))


def _swiss_roll(n=500, seed=3):
    rng = np.random.default_rng(seed)
    s = np.sort(rng.uniform(0, 4 * np.pi, n))
    x = np.c_[s * np.cos(s), 10 * rng.uniform(size=n), s * np.sin(s)] * 3
    return x + 0.5 * rng.normal(size=x.shape)


def _digits(n=400):
    return load_digits().data[:n].astype(np.float64)


FAMILIES = {
    "uniform": _uniform,
    "near_rank_one": _near_rank_one,
    "clustered": _clustered,
    "swiss_roll_noise": _swiss_roll,
    "digits": _digits,
}


def _blobs(k, per, dim, sd, sep, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * sep
    y = np.repeat(np.arange(k), per)
    return centers[y] + sd * rng.normal(size=(k * per, dim)), y


# ------------------------------------------------------------------------------------------
# agreement with the reference
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(FAMILIES), ids=str)
def test_dse_float64_matches_reference(family):
    x = FAMILIES[family]()
    expected = ref_dse(x)
    got = dse(torch.from_numpy(x), dtype=torch.float64)
    assert got.dtype == torch.float64
    assert got.ndim == 0
    assert abs(got.item() - expected) <= 1e-6 * abs(expected) + 1e-10


@pytest.mark.parametrize("family", list(FAMILIES), ids=str)
def test_dse_float32_error_below_budget(family):
    """Measured float32 error in bits on each family (budget 1e-4 bits)."""
    x = FAMILIES[family]()
    err = abs(dse(torch.from_numpy(x), dtype=torch.float32).item() - ref_dse(x))
    assert err < 1e-4, f"{family}: float32 error {err:.2e} bits"


def test_default_dtype_is_float64():
    x = torch.from_numpy(_near_rank_one(200)).float()  # float32 *input* does not pick float32
    assert dse(x).item() == dse(x, dtype=torch.float64).item()


@pytest.mark.parametrize("sigma", [2.0, 25.0])
@pytest.mark.parametrize("t", [1, 2, 3.5])
def test_dse_options_match_reference(sigma, t):
    x = _clustered(200)
    expected = ref_dse(x, sigma=sigma, t=t)
    assert dse(x, sigma=sigma, t=t).item() == pytest.approx(expected, rel=1e-6, abs=1e-10)


def test_numpy_and_int_input_accepted():
    x = _digits(120)
    expected = ref_dse(x)
    assert dse(x).item() == pytest.approx(expected, rel=1e-6)
    assert dse(x.astype(np.int64)).item() == pytest.approx(expected, rel=1e-6)
    assert dse(x.tolist()).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.cuda
def test_runs_on_cuda_and_matches_cpu():
    x = torch.from_numpy(_clustered(200))
    got = dse(x.cuda())
    assert got.device.type == "cuda"
    assert got.item() == pytest.approx(dse(x).item(), rel=1e-9)
    y = torch.arange(200) % 4
    assert dsmi(x.cuda(), y.cuda()).device.type == "cuda"


def test_solver_enum_and_string_agree():
    x = torch.from_numpy(_uniform(100))
    a = dse(x, solver="exact").item()
    assert dse(x, solver=EigenSolver.EXACT).item() == a
    assert dse(x, solver="auto").item() == a  # N <= 4096 -> exact


# ------------------------------------------------------------------------------------------
# closed forms and properties
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_tight_separated_clusters_give_log2_k(k):
    rng = np.random.default_rng(k)
    centers = 200.0 * np.eye(k, 6)
    x = np.repeat(centers, 30, axis=0) + 1e-3 * rng.normal(size=(30 * k, 6))
    assert dse(x).item() == pytest.approx(math.log2(k), abs=1e-4)


def test_identical_points_give_zero():
    x = np.tile(np.array([[0.1, -3.7, 2.2]]), (50, 1))
    assert abs(dse(x).item()) < 1e-10


def test_sigma_to_zero_gives_log2_n():
    x = _uniform(300)
    assert dse(x, sigma=1e-3).item() == pytest.approx(math.log2(300), abs=1e-9)


def test_sigma_to_infinity_gives_zero():
    x = _uniform(300)
    assert 0 <= dse(x, sigma=1e6).item() < 1e-6


def test_invariant_to_rotation_translation_permutation():
    x = _clustered(150)
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    base = dse(x).item()
    assert dse(x @ q).item() == pytest.approx(base, abs=1e-9)
    assert dse(x + 50.0 * rng.normal(size=(1, 30))).item() == pytest.approx(base, abs=1e-9)
    assert dse(x[rng.permutation(len(x))]).item() == pytest.approx(base, abs=1e-9)


def test_not_scale_invariant_as_documented():
    x = _near_rank_one(200)
    values = [dse(c * x).item() for c in (1.0, 10.0, 100.0)]
    assert values[0] < values[1] < values[2]


def test_strictly_decreasing_in_t():
    x = _digits(300)
    values = [dse(x, t=t).item() for t in (1, 2, 3, 5, 8)]
    assert all(a > b for a, b in itertools.pairwise(values))
    np.testing.assert_allclose(values, [ref_dse(x, t=t) for t in (1, 2, 3, 5, 8)], rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_bounds_zero_to_log2_n(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    x = rng.normal(size=(n, int(rng.integers(1, 6)))) * rng.choice([0.01, 1.0, 10.0, 100.0])
    value = dse(x, sigma=float(rng.choice([0.5, 10.0, 50.0]))).item()
    assert -1e-12 <= value <= math.log2(n) + 1e-9


def test_two_points():
    # K = [[a, b], [b, a]] normalised: eigenvalues 1 and (1 - g) / (1 + g), g = exp(-d^2 / 2s^2)
    g = math.exp(-(3.0**2) / (2 * 2.0**2))
    lam = np.array([1.0, (1 - g) / (1 + g)])
    p = lam / lam.sum()
    expected = -(p * np.log2(p)).sum()
    assert dse([[0.0], [3.0]], sigma=2.0).item() == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------
# subsampling and RNG hygiene
# ------------------------------------------------------------------------------------------
def test_max_samples_uses_no_global_rng_and_is_seeded():
    x = torch.from_numpy(_uniform(300))
    random.seed(123)
    torch_state, np_state, py_state = (
        torch.get_rng_state(),
        np.random.get_state(),
        random.getstate(),
    )
    a = dse(x, max_samples=100, seed=1).item()
    dsmi(x, np.arange(300) % 3, max_samples=100, seed=1)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    new_np = np.random.get_state()
    assert new_np[0] == np_state[0]
    assert np.array_equal(new_np[1], np_state[1])
    assert new_np[2:] == np_state[2:]
    assert dse(x, max_samples=100, seed=1).item() == a
    assert dse(x, max_samples=100, seed=2).item() != a
    assert 0 < a <= math.log2(100)
    assert dse(x, max_samples=300).item() == dse(x).item()


def test_max_samples_keeps_cluster_structure():
    rng = np.random.default_rng(0)
    x = np.repeat(200.0 * np.eye(4, 5), 100, axis=0) + 1e-3 * rng.normal(size=(400, 5))
    assert dse(x, max_samples=200).item() == pytest.approx(2.0, abs=0.05)


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
GOOD = np.random.default_rng(0).normal(size=(10, 3))


@pytest.mark.parametrize(
    ("x", "kwargs", "err", "match"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}, ValueError, "`embeddings` contains 1 NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), {}, ValueError, "NaN or infinite"),
        (np.ones((1, 3)), {}, ValueError, "at least 2 samples"),
        (np.ones((4, 3, 2)), {}, ValueError, r"2-D \(N, D\); got shape \(4, 3, 2\)"),
        (np.ones(4), {}, ValueError, "must be 2-D"),
        (GOOD, {"sigma": 0}, ValueError, "`sigma` must be a finite number > 0; got 0.0"),
        (GOOD, {"sigma": -2.0}, ValueError, "`sigma`"),
        (GOOD, {"sigma": "10"}, ValueError, r"`sigma` must be a number > 0 .* or one of"),
        (GOOD, {"sigma": [10]}, TypeError, "`sigma` must be a number"),
        (GOOD, {"t": 0}, ValueError, "`t` .* >= 1; got 0"),
        (GOOD, {"t": 0.5}, ValueError, "`t`"),
        (GOOD, {"t": "1"}, TypeError, "`t` must be a number"),
        (GOOD, {"solver": "eig"}, ValueError, "`solver` must be one of 'exact', 'lanczos', 'auto'"),
        (GOOD, {"dtype": torch.float16}, ValueError, "`dtype` must be None, torch.float32"),
        (GOOD, {"dtype": "double64"}, ValueError, "`dtype`"),
        (GOOD, {"max_samples": 1}, ValueError, "`max_samples` must be >= 2"),
        (GOOD, {"seed": 1.5}, TypeError, "`seed` must be an integer"),
        (GOOD, {"num_lanczos_probes": 0}, ValueError, "`num_lanczos_probes` must be >= 1"),
        (GOOD, {"num_lanczos_steps": 0}, ValueError, "`num_lanczos_steps` must be >= 1"),
        ("not an array", {}, TypeError, "`embeddings` must be a torch.Tensor"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_dse_errors(x, kwargs, err, match):
    with pytest.raises(err, match=match):
        dse(x, **kwargs)


@pytest.mark.parametrize(
    ("ref", "kwargs", "err", "match"),
    [
        (np.arange(9), {}, ValueError, "same number of samples; got 10 and 9"),
        (np.r_[np.zeros(9), np.nan], {}, ValueError, "`reference` contains 1 NaN"),
        (np.ones((10, 2, 2)), {}, ValueError, "`reference` must be 1-D"),
        (np.ones((10, 3)), {"discrete": True}, ValueError, "`discrete=True` needs a 1-D"),
        (np.arange(10), {"discrete": "yes"}, TypeError, "`discrete` must be None, True or False"),
        (np.arange(10), {"num_clusters": 1}, ValueError, "`num_clusters` must be >= 2"),
        (np.arange(10), {"num_repeats": 0}, ValueError, "`num_repeats` must be >= 1"),
        (np.arange(10), {"t": 0}, ValueError, "`t`"),
        (np.arange(10), {"sigma": 0.0}, ValueError, "`sigma`"),
        (np.arange(10), {"solver": "svd"}, ValueError, "`solver` must be one of"),
        (np.arange(10), {"dtype": "half"}, ValueError, "`dtype`"),
        (None, {}, ValueError, "`reference` is required unless `clusters` is given"),
        (None, {"clusters": np.zeros(10)}, TypeError, "`clusters` must hold integer"),
        (None, {"clusters": np.zeros(9, dtype=int)}, ValueError, "got 10 and 9"),
        (None, {"clusters": np.zeros((10, 2), dtype=int)}, ValueError, "`clusters` must be 1-D"),
        (
            np.random.default_rng(0).normal(size=(10, 3)),
            {"num_clusters": 11},
            ValueError,
            r"`num_clusters` must be < the number of samples \(10\) for spectral clustering; got 11",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_dsmi_errors(ref, kwargs, err, match):
    with pytest.raises(err, match=match):
        dsmi(GOOD, ref, **kwargs)


def test_dsmi_embedding_errors():
    with pytest.raises(ValueError, match="`embeddings` contains 1 NaN"):
        dsmi(np.r_[GOOD[:-1], [[np.nan, 0, 0]]], np.arange(10))
    with pytest.raises(ValueError, match="at least 2 samples"):
        dsmi(GOOD[:1], np.arange(1))
    with pytest.raises(ValueError, match="must be 2-D"):
        dsmi(GOOD[None], np.arange(10))


def test_private_compute_rejects_unknown_solver():
    with pytest.raises(ValueError, match="`solver` must be one of"):
        _dse_compute(torch.from_numpy(GOOD), solver="qr")


# ------------------------------------------------------------------------------------------
# DSMI
# ------------------------------------------------------------------------------------------
def test_dsmi_one_class_is_zero():
    x = _clustered(120)
    assert abs(dsmi(x, np.zeros(120, dtype=int)).item()) < 1e-12
    assert abs(ref_dsmi(x, np.zeros(120, dtype=int))) < 1e-12  # the reference agrees


def test_dsmi_separated_blobs_clearly_positive():
    x, y = _blobs(4, 40, 16, 0.01, 50.0)
    value = dsmi(x, y).item()
    # groups are single tight clusters (conditional DSE ~ 0); random subsets see all 4 clusters
    assert value == pytest.approx(2.0, abs=0.1)


def test_dsmi_random_labels_about_zero():
    x, _ = _blobs(4, 60, 16, 1.0, 5.0, seed=3)
    values = [
        dsmi(x, np.random.default_rng(s).integers(0, 4, len(x)), seed=s).item() for s in range(3)
    ]
    assert abs(np.mean(values)) < 0.03
    assert max(abs(v) for v in values) < 0.06


def test_dsmi_monotone_in_label_corruption():
    # docs/dse.md §5: blobs in R^256 with within-class sd 0.5 are monotone (sd 1.0 is not, sigma
    # too small)
    x, y = _blobs(6, 40, 256, 0.5, 1.0, seed=4)
    rng = np.random.default_rng(0)
    values = []
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y_c = y.copy()
        idx = rng.choice(len(y), size=int(frac * len(y)), replace=False)
        y_c[idx] = rng.permutation(y_c[idx])
        values.append(dsmi(x, y_c).item())
    assert all(a > b for a, b in itertools.pairwise(values)), values
    assert values[0] > 1.0
    assert abs(values[-1]) < 0.1


def test_dsmi_agrees_in_distribution_with_reference():
    x, y = _blobs(4, 30, 32, 0.5, 1.0, seed=5)
    y[:30] = np.random.default_rng(1).permutation(y[:30])  # some corruption
    ours = [dsmi(x, y, seed=s).item() for s in range(5)]
    ref = [ref_dsmi(x, y, seed=s) for s in range(5)]
    spread = max(np.std(ours), np.std(ref), 1e-3)
    assert abs(np.mean(ours) - np.mean(ref)) < 4 * spread / math.sqrt(5) + 1e-3, (ours, ref)
    # the conditional part is deterministic: with num_repeats -> the same subsets (whole groups)
    # only the random A* term differs, so the seed spread is small
    assert np.std(ours) < 0.05


def test_dsmi_compute_matches_public_on_labels():
    x, y = _blobs(3, 20, 8, 0.5, 2.0)
    xt = torch.from_numpy(x)
    expected = dsmi(xt, y, seed=3, num_repeats=2).item()
    got = _dsmi_compute(xt, torch.from_numpy(y), sigma=10.0, t=1, num_repeats=2, seed=3).item()
    assert got == expected


def _dsmi_by_public_dse(x, labels, *, sigma, t, num_repeats, seed):
    """The DSMI subset protocol written with one public DSE call per subset (no shared
    distances, no batching): same generator draws as ``_dsmi_compute``."""
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    mi = 0.0
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        n_c = len(members)
        if n_c < 2 or n_c == n:
            continue
        torch.randint(0, 2**31 - 1, (1,), generator=gen)
        h_cond = dse(x[members], sigma=sigma, t=t).item()
        h_star = 0.0
        for _ in range(num_repeats):
            idx = torch.randperm(n, generator=gen)[:n_c]
            torch.randint(0, 2**31 - 1, (1,), generator=gen)
            h_star += dse(x[idx], sigma=sigma, t=t).item()
        mi += n_c / n * (h_star / num_repeats - h_cond)
    return mi


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_dsmi_shared_affinity_batched_path_matches_per_subset_dse(dtype):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(120, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (120,), generator=gen)
    labels[:3] = 7  # a small group
    labels[3] = 9  # a singleton group contributes 0
    x[:40] += 2.0 * labels[:40, None]  # some dependence on the labels
    for sigma, t in ((1.0, 1), (3.0, 2.5)):
        expected = _dsmi_by_public_dse(x, labels, sigma=sigma, t=t, num_repeats=3, seed=11)
        got = _dsmi_compute(x, labels, sigma=sigma, t=t, num_repeats=3, seed=11, dtype=dtype)
        tol = 1e-10 if dtype is None else 1e-4
        assert abs(got.item() - expected) < tol, (got.item(), expected)


# ------------------------------------------------------------------------------------------
# reference handling: discrete inference, binning, clustering
# ------------------------------------------------------------------------------------------
def test_discrete_inference_rules():
    x, y = _blobs(3, 20, 8, 0.5, 3.0)
    as_int = dsmi(x, y).item()
    # integer dtype, bool and whole-number floats with <= 100 distinct values are classes
    assert dsmi(x, y.astype(np.float32)).item() == as_int
    assert dsmi(x, y.astype(np.float64), discrete=None).item() == as_int
    assert dsmi(x, (y == 0)).item() == dsmi(x, (y == 0).astype(int)).item()
    # the same labels forced continuous are binned into num_clusters bins (3 values -> 3 bins here)
    binned = torch.from_numpy(ref_bin_scalar(y, 10))
    assert dsmi(x, y, discrete=False).item() == dsmi(x, None, clusters=binned).item()
    # non-whole floats are binned ...
    s = np.random.default_rng(0).normal(size=60)
    expected = dsmi(x, None, clusters=torch.from_numpy(ref_bin_scalar(s, 4)), num_clusters=4).item()
    assert dsmi(x, s, num_clusters=4).item() == expected
    assert dsmi(x, s[:, None], num_clusters=4).item() == expected  # (N, 1) is a scalar too
    # ... unless declared discrete: every distinct value is then its own class (all singletons)
    assert dsmi(x, s, discrete=True).item() == 0.0
    # whole-number floats with more than 100 distinct values are binned
    x2 = np.random.default_rng(2).normal(size=(150, 4))
    many = np.arange(150.0)
    expected = dsmi(x2, None, clusters=torch.from_numpy(ref_bin_scalar(many, 10))).item()
    assert dsmi(x2, many).item() == expected


def test_binning_matches_numpy_digitize_with_outlier():
    y = np.r_[np.random.default_rng(0).normal(size=500), 40.0, np.linspace(-1, 1, 21)]
    for n_bins in (2, 7, 10):
        got = _bin_scalar(torch.from_numpy(y), n_bins).numpy()
        np.testing.assert_array_equal(got + 1, ref_bin_scalar(y, n_bins))


def test_constant_scalar_reference_warns():
    x, _ = _blobs(3, 20, 8, 0.5, 3.0)
    with pytest.warns(UserWarning, match="`reference` is constant"):
        value = dsmi(x, np.full(60, 0.5), discrete=False)
    assert value.item() == 0.0


def test_vector_reference_clusters_and_reuse():
    rng = np.random.default_rng(0)
    b, groups = _blobs(3, 25, 5, 0.3, 10.0, seed=6)
    x = np.c_[b, rng.normal(size=(75, 3))]
    c = cluster_reference(b, num_clusters=3)
    assert c.dtype == torch.long
    assert c.shape == (75,)
    assert adjusted_rand_score(groups, c.numpy()) == 1.0
    inside = dsmi(x, b, num_clusters=3).item()
    assert dsmi(x, b, num_clusters=3, clusters=c).item() == inside
    assert dsmi(x, None, clusters=c).item() == inside
    assert inside == pytest.approx(dsmi(x, groups).item(), abs=1e-12)


def test_cluster_reference_small_n_and_1d():
    b = np.array([0.0, 0.1, 0.2, 10.0, 10.1])
    c = cluster_reference(b, num_clusters=2)  # num_neighbors=10 capped at N - 1
    assert adjusted_rand_score([0, 0, 0, 1, 1], c.numpy()) == 1.0
    with pytest.raises(ValueError, match="at least 2 samples"):
        cluster_reference(np.ones((1, 3)))
    for k in (5, 6):  # k = N used to fail inside scipy's eigensolver (found by fuzzing)
        with pytest.raises(ValueError, match="`num_clusters` must be < the number of samples"):
            cluster_reference(b, num_clusters=k)


def test_cluster_reference_kmeans_finds_separated_groups_and_checks_its_options():
    gen = torch.Generator().manual_seed(3)
    centres = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]])
    groups = torch.arange(3).repeat_interleave(20)
    x = centres[groups] + torch.randn(60, 2, generator=gen)
    c = cluster_reference(x, num_clusters=3, method="kmeans")
    assert c.dtype == torch.long
    assert c.shape == (60,)
    assert adjusted_rand_score(groups.numpy(), c.numpy()) == 1.0
    with pytest.raises(ValueError, match="`method`"):
        cluster_reference(x, method="agglomerative")
    with pytest.raises(ValueError, match="for k-means"):
        cluster_reference(x[:5], num_clusters=5, method="kmeans")


@pytest.mark.parametrize("sigma", [2.0, "median", "knn"])
def test_information_profile_shares_one_affinity_and_keeps_values(monkeypatch, sigma):
    from lightning_info.functional import dse as dse_mod

    gen = torch.Generator().manual_seed(7)
    z = torch.randn(150, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (150,), generator=gen)
    c = torch.randint(0, 4, (150,), generator=gen)
    separate = [
        _dse_compute(z, sigma=sigma).item(),
        _dsmi_compute(z, y, sigma=sigma).item(),
        _dsmi_compute(z, c, sigma=sigma).item(),
    ]
    calls = []
    real = dse_mod._gaussian_affinity
    monkeypatch.setattr(dse_mod, "_gaussian_affinity", lambda x, s: calls.append(s) or real(x, s))
    profile = dse_mod._information_profile(z, {"y": y, "c": c}, sigma=sigma)
    assert len(calls) == 1  # one pairwise-distance pass for DSE and both DSMIs
    got = [profile.dse.item(), profile.dsmi["y"].item(), profile.dsmi["c"].item()]
    assert got == pytest.approx(separate, abs=1e-12)
    assert profile.eigvals.shape == (150,)
    assert float(profile.eigvals.max()) == pytest.approx(1.0, abs=1e-12)
    if sigma == 2.0:  # the median distance, recovered from the median affinity
        median_dist = float(torch.pdist(z).sort().values[(150 * 149 // 2 - 1) // 2])
        recovered = 2.0 * math.sqrt(-2 * math.log(profile.median_affinity))
        assert recovered == pytest.approx(median_dist, rel=1e-9)


# ------------------------------------------------------------------------------------------
# data-derived widths: sigma="median" / "knn"
# ------------------------------------------------------------------------------------------
def _labelled_blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, n)
    return rng.normal(size=(5, 20))[labels] * 3 + rng.normal(size=(n, 20)), labels


@pytest.mark.parametrize("rule", ["median", "knn"])
def test_bandwidth_rules_match_reference(rule):
    x = _clustered(n=61, seed=4)  # 61 * 60 / 2 pairs: an odd count, one middle value
    ours = diffusion_spectral_entropy(x, sigma=rule)
    assert float(ours) == pytest.approx(ref_dse(x, sigma=rule), abs=1e-9)


@pytest.mark.parametrize("rule", ["median", "knn"])
def test_bandwidth_rules_are_scale_invariant(rule):
    x, y = _labelled_blobs(n=300, seed=5)
    x = torch.as_tensor(x, dtype=torch.float64)
    dse = [float(diffusion_spectral_entropy(x * c, sigma=rule)) for c in (1e-3, 0.1, 1, 7, 1e3)]
    dsmi = [
        float(diffusion_spectral_mutual_information(x * c, torch.as_tensor(y), sigma=rule))
        for c in (1e-3, 1, 1e3)
    ]
    assert dse == pytest.approx([dse[2]] * 5, rel=1e-9)
    assert dsmi == pytest.approx([dsmi[1]] * 3, rel=1e-9)
    assert 0.5 < dse[2] < math.log2(300)  # neither degenerate end
    # the paper's fixed width follows the scale instead: from ~0 to ~log2 N
    fixed = [float(diffusion_spectral_entropy(x * c)) for c in (1e-3, 1e3)]
    assert fixed[0] < 0.01
    assert fixed[1] > math.log2(300) - 0.01


def test_bandwidth_rule_widths_come_from_all_rows_in_dsmi():
    # DSMI's groups and random subsets use the width of all N rows: with "median" it equals
    # DSMI at that fixed number
    from lightning_info.functional.diffusion import _resolve_width

    x, y = _labelled_blobs(n=200, seed=6)
    x = torch.as_tensor(x, dtype=torch.float64)
    width = _resolve_width(x, "median")
    pairs = torch.pdist(x)
    assert width == pytest.approx(float(pairs.sort().values[(pairs.numel() - 1) // 2]), rel=1e-12)
    by_rule = diffusion_spectral_mutual_information(x, torch.as_tensor(y), sigma="median")
    by_number = diffusion_spectral_mutual_information(x, torch.as_tensor(y), sigma=width)
    assert float(by_rule) == pytest.approx(float(by_number), abs=1e-9)


def test_bandwidth_rules_with_duplicates_and_lanczos():
    same = torch.ones(30, 4, dtype=torch.float64)  # one point repeated: K = 11^T/N, DSE 0
    two = torch.zeros(30, 4, dtype=torch.float64)
    two[15:] = 1.0  # two points, each repeated 15 times (more than 10 neighbours at distance 0)
    for rule in ("median", "knn"):
        assert float(diffusion_spectral_entropy(same, sigma=rule)) == pytest.approx(0, abs=1e-9)
        value = float(diffusion_spectral_entropy(two, sigma=rule))
        assert 0.0 < value <= 1.0 + 1e-9  # two distinct points: at most one bit
        assert value == pytest.approx(float(diffusion_spectral_entropy(two * 1e3, sigma=rule)))
    with pytest.raises(ValueError, match=r"knn.*exact solver"):
        diffusion_spectral_entropy(torch.randn(1100, 5), sigma="knn", solver="lanczos")


# --------------------------------------------------------------------------------------------
# the eigensolver dispatch table (issue 21): one entry per EigenSolver member, one routing site
# --------------------------------------------------------------------------------------------
def test_every_eigensolver_member_has_one_dispatch_entry():
    from lightning_info.functional.dse import _DISPATCH, _EXACT, _LANCZOS
    from lightning_info.utilities.enums import EigenSolver

    assert set(_DISPATCH) == set(EigenSolver)
    # the documented thresholds: "lanczos" exact below 1024 rows, "auto" exact up to 4096
    assert [_DISPATCH[EigenSolver.LANCZOS](n) for n in (1023, 1024)] == [_EXACT, _LANCZOS]
    assert [_DISPATCH[EigenSolver.AUTO](n) for n in (4096, 4097)] == [_EXACT, _LANCZOS]
    assert _DISPATCH[EigenSolver.EXACT](10**6) is _EXACT


def test_dispatch_entry_routes_dse_dsmi_and_profile(monkeypatch):
    """Replacing one dispatch entry reroutes every core: the table is the only routing site."""
    import lightning_info.functional.dse as dse_mod
    from lightning_info.utilities.enums import EigenSolver

    calls = []

    def fake(x, **_):
        calls.append(x.shape[0])
        return torch.tensor(7.0, dtype=torch.float64)

    monkeypatch.setitem(
        dse_mod._DISPATCH, EigenSolver.AUTO, lambda n: dse_mod._Backend(fake, dense=False)
    )
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(40) % 2
    assert diffusion_spectral_entropy(z, solver="auto").item() == 7.0
    # DSMI with a non-dense backend: every group and subset DSE comes from the backend (7 - 7 = 0)
    assert diffusion_spectral_mutual_information(z, y, solver="auto", num_repeats=2).item() == 0.0
    profile = dse_mod._information_profile(z, {"y": y}, solver="auto", num_repeats=2)
    assert profile.dse.item() == 7.0
    assert profile.eigvals is None
    assert calls[0] == 40
    assert set(calls[1:]) == {40, 20}
