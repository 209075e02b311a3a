"""Tests for stochastic Lanczos quadrature and the large-N DSE solver.

References are independent: exact traces from known spectra, exact quadratic forms computed with a
dense eigendecomposition, and the exact DSE from ``numpy.linalg.eigvalsh`` on a dense float64 kernel.
Stochastic estimates are checked by convergence (errors averaged over seeds fall as the budget grows)
and, for DSE, against a tolerance far above the measured spread.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from lightning_info.functional import diffusion_spectral_entropy, lanczos
from lightning_info.functional.lanczos import _dse_lanczos, stochastic_lanczos_quadrature

pytestmark = pytest.mark.usefixtures("single_thread")


def _spd(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Dense symmetric matrix Q diag(eigenvalues) Q^T with a seeded random orthogonal Q."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return torch.from_numpy((q * eigenvalues) @ q.T)


def _slq(a: torch.Tensor, fn, *, steps: int, probes: int, seed: int, block: bool = True) -> float:
    return stochastic_lanczos_quadrature(
        lambda v: a @ v,
        a.shape[0],
        fn,
        num_steps=steps,
        num_probes=probes,
        generator=torch.Generator().manual_seed(seed),
        block=block,
    ).item()


def _exact_dse(x: np.ndarray, sigma: float, t: float = 1) -> float:
    """Reference DSE (bits): dense float64 kernel, numpy eigvalsh, p = |λ|^t / Σ|λ|^t."""
    sq = cdist(x, x, "sqeuclidean")
    g = np.exp(-sq / (2 * sigma**2))
    s = 1 / np.sqrt(g.sum(1))
    lam = np.abs(np.linalg.eigvalsh(s[:, None] * g * s[None, :])) ** t
    p = lam / lam.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def _data(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.uniform(size=(n, 10))
    if kind == "clustered":
        centres = rng.normal(size=(6, 20)) * 3.0
        return centres[rng.integers(0, 6, n)] + 0.5 * rng.normal(size=(n, 20))
    # noisy circle-with-height manifold embedded in R^20
    angle, height = 2 * np.pi * rng.uniform(size=n), rng.uniform(size=n)
    low = np.stack([4 * np.cos(angle), 4 * np.sin(angle), 2 * height], 1)
    basis, _ = np.linalg.qr(rng.normal(size=(20, 3)))
    return low @ basis.T + 0.1 * rng.normal(size=(n, 20))


# --------------------------------------------------------------------------------------------------
# stochastic_lanczos_quadrature
# --------------------------------------------------------------------------------------------------

EIGS = np.linspace(0.05, 2.0, 60)
A_SPD = _spd(EIGS)
EXACT_LOGDET = float(np.log(EIGS).sum())


def test_slq_error_falls_with_probes():
    """RMS error over seeds of tr log A falls roughly as 1/sqrt(num_probes)."""

    def rms(probes: int) -> float:
        errs = [
            _slq(A_SPD, torch.log, steps=24, probes=probes, seed=s) - EXACT_LOGDET for s in range(6)
        ]
        return float(np.sqrt(np.mean(np.square(errs))))

    few, many = rms(2), rms(128)
    assert many < few / 3  # 1/sqrt(64) = 1/8 expected
    assert many < 0.15 * abs(EXACT_LOGDET)  # Hutchinson sd per probe here: 9.1, / sqrt(128)


def test_slq_error_falls_with_steps():
    """With the same probes, the quadrature bias vanishes as num_steps grows (f = log, near 0)."""
    rng = np.random.default_rng(1)
    eigs = np.sort(10.0 ** rng.uniform(-3, 0, size=50))
    a = _spd(eigs, seed=1)
    gen = torch.Generator().manual_seed(3)
    z = (2 * torch.randint(0, 2, (50, 8), generator=gen) - 1).to(torch.float64)
    vals, vecs = np.linalg.eigh(a.numpy())
    f_a = torch.from_numpy((vecs * np.log(vals)) @ vecs.T)
    hutchinson = float(torch.einsum("il,ij,jl->l", z, f_a, z).mean())  # exact quadratic forms
    errs = [abs(_slq(a, torch.log, steps=k, probes=8, seed=3) - hutchinson) for k in (2, 5, 12, 50)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[3] < 1e-8 * abs(hutchinson)  # num_steps = dim: Gauss quadrature is exact


def test_slq_full_steps_many_probes_matches_trace():
    a = _spd(np.linspace(0.1, 1.0, 30), seed=2)
    exact = float(np.trace(np.asarray(a) @ np.asarray(a)))
    errs = [_slq(a, torch.square, steps=30, probes=500, seed=s) - exact for s in range(4)]
    assert np.sqrt(np.mean(np.square(errs))) < 0.03 * exact  # Hutchinson sd here: 0.1 = 0.9%


def test_slq_block_equals_loop():
    blocked = _slq(A_SPD, torch.log, steps=12, probes=5, seed=7, block=True)
    looped = _slq(A_SPD, torch.log, steps=12, probes=5, seed=7, block=False)
    assert blocked == pytest.approx(looped, rel=1e-10)


def test_slq_breakdown_few_distinct_eigenvalues():
    """Krylov space of dimension 3 < num_steps: early breakdown must give the exact quadratic forms."""
    eigs = np.repeat([0.5, 1.0, 3.0], [10, 15, 15])
    a = _spd(eigs, seed=4)
    gen = torch.Generator().manual_seed(5)
    z = (2 * torch.randint(0, 2, (40, 6), generator=gen) - 1).to(torch.float64)
    f_a = torch.from_numpy(np.asarray(_spd(np.log(eigs), seed=4)))
    reference = float(torch.einsum("il,ij,jl->l", z, f_a, z).mean())
    est = _slq(a, torch.log, steps=20, probes=6, seed=5)
    assert np.isfinite(est)
    assert est == pytest.approx(reference, rel=1e-9)
    ident = _slq(torch.eye(40, dtype=torch.float64), lambda m: m + 1.0, steps=10, probes=3, seed=0)
    assert ident == pytest.approx(80.0, rel=1e-12)  # tr(I + I)


def test_slq_input_errors():
    with pytest.raises(ValueError, match="num_steps"):
        stochastic_lanczos_quadrature(lambda v: v, 5, torch.log, num_steps=0)
    with pytest.raises(ValueError, match="num_probes"):
        stochastic_lanczos_quadrature(lambda v: v, 5, torch.log, num_probes=0)
    with pytest.raises(ValueError, match="dim"):
        stochastic_lanczos_quadrature(lambda v: v, 0, torch.log)
    with pytest.raises(TypeError, match="matvec"):
        stochastic_lanczos_quadrature(None, 5, torch.log)
    with pytest.raises(TypeError, match="fn"):
        stochastic_lanczos_quadrature(lambda v: v, 5, "log")


# --------------------------------------------------------------------------------------------------
# _dse_lanczos
# --------------------------------------------------------------------------------------------------

CASES = [
    # (family, sigma): flat-ish, mid and steep spectra
    ("uniform", 0.3),
    ("uniform", 1.0),
    ("clustered", 2.0),
    ("clustered", 20.0),
    ("manifold", 0.5),
    ("manifold", 5.0),
]


@pytest.mark.parametrize(("kind", "sigma"), CASES, ids=lambda v: str(v))
def test_dse_lanczos_matches_exact(kind, sigma):
    x = _data(kind, 400)
    exact = _exact_dse(x, sigma)
    est = _dse_lanczos(
        torch.from_numpy(x), sigma=sigma, num_lanczos_probes=16, num_lanczos_steps=24, seed=0
    )
    assert est.shape == ()
    assert est.dtype == torch.float64
    assert est.item() == pytest.approx(exact, abs=0.03)


def test_dse_lanczos_t2_matches_exact():
    x = _data("manifold", 500)
    exact = _exact_dse(x, 2.0, t=2)
    est = _dse_lanczos(
        torch.from_numpy(x), sigma=2.0, t=2, num_lanczos_probes=16, num_lanczos_steps=24, seed=0
    )
    assert est.item() == pytest.approx(exact, abs=0.05)


def test_dse_lanczos_error_falls_with_probes():
    """Plain SLQ (no Hutch++ basis, no control variate): RMS error over seeds falls with probes."""
    x = torch.from_numpy(_data("uniform", 300))
    exact = _exact_dse(x.numpy(), 1.0)

    def rms(probes: int) -> float:
        errs = [
            _dse_lanczos(
                x,
                sigma=1.0,
                num_lanczos_probes=probes,
                num_lanczos_steps=16,
                seed=s,
                num_deflate=0,
                estimator="exact_z",
            ).item()
            - exact
            for s in range(5)
        ]
        return float(np.sqrt(np.mean(np.square(errs))))

    assert rms(64) < rms(2) / 2.5  # 1/sqrt(32) = 0.18 expected


def test_dse_lanczos_closed_forms():
    # identical points: K = 11^T/N, DSE = 0 (immediate breakdown after deflation)
    same = torch.ones(50, 3, dtype=torch.float64)
    assert _dse_lanczos(same, sigma=1.0, seed=0).item() == pytest.approx(0.0, abs=1e-9)
    # far-apart points: K = I, DSE = log2 N
    far = torch.arange(40, dtype=torch.float64)[:, None] * 100.0
    assert _dse_lanczos(far, sigma=1.0, seed=0).item() == pytest.approx(np.log2(40), abs=1e-9)
    assert _dse_lanczos(far[:1], sigma=1.0, seed=0).item() == 0.0


def test_dse_lanczos_seeded_reproducible():
    x = torch.from_numpy(_data("clustered", 300))
    first = _dse_lanczos(x, sigma=5.0, seed=3, num_deflate=0, estimator="exact_z")
    again = _dse_lanczos(x, sigma=5.0, seed=3, num_deflate=0, estimator="exact_z")
    other = _dse_lanczos(x, sigma=5.0, seed=4, num_deflate=0, estimator="exact_z")
    assert torch.equal(first, again)
    assert first.item() != other.item()
    state = torch.random.get_rng_state()
    _dse_lanczos(x, sigma=5.0, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


@pytest.mark.parametrize("budget_rows", [0, 67], ids=["no-cache", "partial-cache"])
def test_dse_lanczos_row_blocks_equal_dense(budget_rows):
    x = torch.from_numpy(_data("manifold", 250)).float()
    n = x.shape[0]
    dense = _dse_lanczos(x, sigma=1.0, seed=1)
    blocked = _dse_lanczos(
        x, sigma=1.0, seed=1, block_rows=41, memory_budget_bytes=budget_rows * n * 4
    )
    assert blocked.item() == pytest.approx(dense.item(), abs=1e-6)


def test_dse_lanczos_row_blocks_never_build_dense(monkeypatch):
    """With a zero budget, every kernel block has at most `block_rows` rows: no N x N matrix."""
    x = torch.from_numpy(_data("uniform", 200))
    n, block_rows = x.shape[0], 32
    shapes = []
    real_block = lanczos._kernel_block

    def recording_block(*args, **kwargs):
        out = real_block(*args, **kwargs)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(lanczos, "_kernel_block", recording_block)
    kernel = lanczos._GaussianKernel(
        x, sigma=1.0, kernel_dtype=torch.float32, block_rows=block_rows, memory_budget_bytes=0
    )
    assert kernel.cache.numel() == 0
    est = _dse_lanczos(x, sigma=1.0, seed=0, block_rows=block_rows, memory_budget_bytes=0)
    assert np.isfinite(est.item())
    assert shapes
    assert all(rows <= block_rows and cols <= n for rows, cols in shapes)
    # the symmetric triangle is used: the blocks of one product cover about half of G
    per_product = sum(r * c for r, c in shapes[: -(-n // block_rows)])
    assert per_product < 0.6 * n * n


@pytest.mark.parametrize("budget_rows", [0, 37, 120], ids=["no-cache", "partial-cache", "dense"])
def test_gaussian_kernel_products_match_dense(budget_rows):
    x = _data("clustered", 120)
    g = np.exp(-cdist(x, x, "sqeuclidean") / (2 * 3.0**2))
    kernel = lanczos._GaussianKernel(
        torch.from_numpy(x),
        sigma=3.0,
        kernel_dtype=torch.float32,
        block_rows=16,
        memory_budget_bytes=budget_rows * 120 * 4,
    )
    v = np.random.default_rng(0).normal(size=(120, 3))
    vt = torch.from_numpy(v)
    np.testing.assert_allclose(kernel.degree.numpy(), g.sum(1), rtol=1e-5)
    np.testing.assert_allclose(kernel.matmat(vt).numpy(), g @ v, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        kernel.matmat(vt, square=True).numpy(), (g * g) @ v, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("scale", [1e-30, 1e29, 1e30])
def test_gaussian_kernel_extreme_scales_match_unit_scale(scale):
    """G depends on x / sigma only: float32 data at 1e29 (squares overflow float32) or 1e-30
    (squares underflow) with sigma scaled alike give the kernel of the unit-scale data, no NaN."""
    x = _data("clustered", 120)
    g = np.exp(-cdist(x, x, "sqeuclidean") / (2 * 3.0**2))
    kernel = lanczos._GaussianKernel(
        torch.from_numpy(x * scale).float(),
        sigma=3.0 * scale,
        kernel_dtype=torch.float32,
        block_rows=16,
        memory_budget_bytes=37 * 120 * 4,
    )
    np.testing.assert_allclose(kernel.degree.numpy(), g.sum(1), rtol=1e-5)
    v = torch.from_numpy(np.random.default_rng(0).normal(size=(120, 2)))
    np.testing.assert_allclose(kernel.matmat(v).numpy(), g @ v.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("budget_rows", [0, 20, 64], ids=["no-cache", "partial-cache", "dense"])
def test_gaussian_kernel_tiny_sigma_duplicates(budget_rows):
    """1 / (2 sigma^2) = 5e59 overflows float32 (was 0 * inf = NaN on zero distances): G is 1
    exactly on equal rows and 0 elsewhere, also where round-off makes a duplicate's expanded
    squared distance a tiny positive number."""
    base = _data("uniform", 54)
    x = np.concatenate([base, base[:10]])  # rows 54..63 repeat rows 0..9
    g = (cdist(x, x) == 0).astype(float)
    kernel = lanczos._GaussianKernel(
        torch.from_numpy(x).float(),
        sigma=1e-30,
        kernel_dtype=torch.float32,
        block_rows=8,
        memory_budget_bytes=budget_rows * 64 * 4,
    )
    np.testing.assert_array_equal(kernel.degree.numpy(), g.sum(1))
    v = np.random.default_rng(0).normal(size=(64, 3))
    np.testing.assert_allclose(
        kernel.matmat(torch.from_numpy(v)).numpy(), g @ v, rtol=1e-6, atol=1e-6
    )


def test_control_variate_estimate_closed_form():
    """g = 2 h1 - 3 h2 + 1 exactly: the CV estimate is 2 rest1 - 3 rest2 + 1 with zero error."""
    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.normal(size=(16, 2)))
    g = 2 * h[:, 0] - 3 * h[:, 1] + 1
    rest = torch.tensor([0.3, -0.7], dtype=torch.float64)
    est, se = lanczos._control_variate_estimate(g, h, rest)
    assert est.item() == pytest.approx(2 * 0.3 - 3 * -0.7 + 1, abs=1e-12)
    assert se.item() == pytest.approx(0.0, abs=1e-12)
    noisy = g + torch.from_numpy(rng.normal(size=16)) * 0.1  # se ~ 0.1 / sqrt(16)
    assert 0.01 < lanczos._control_variate_estimate(noisy, h, rest)[1].item() < 0.05


def _low_rank(n: int, rank: int, seed: int = 0) -> torch.Tensor:
    """n points uniform on a rank-dimensional cube of side 10, embedded in R^50, no noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(50, rank)))
    return torch.from_numpy(rng.uniform(0, 10, size=(n, rank)) @ basis.T)


@pytest.mark.slow
@pytest.mark.parametrize(("rank", "sigma"), [(1, 10.0), (1, 1.0), (2, 10.0)])
def test_dse_lanczos_very_low_rank_data_matches_exact(rank, sigma):
    """Points on a line / plane in R^50 above the Lanczos threshold (N = 1100): the remainder
    spectrum after the 32-dim Hutch++ subspace is below float32 resolution. Before the cv2 guard
    the estimates were -15 to -19 bits (rank 1, sigma 10; exact 0.40), -0.2 to -0.27 bit off
    (rank 1, sigma 1) and +0.24 to +1.7 bits off (rank 2, sigma 10)."""
    x = _low_rank(1100, rank)
    exact = float(diffusion_spectral_entropy(x, sigma=sigma, solver="exact"))
    for seed in range(3):
        est = float(diffusion_spectral_entropy(x, sigma=sigma, solver="lanczos", seed=seed))
        assert est == pytest.approx(exact, abs=0.01), (seed, est, exact)


def test_dse_lanczos_rejects_unknown_estimator():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="`estimator` must be one of"):
        _dse_lanczos(x, sigma=1.0, estimator="ratio")
