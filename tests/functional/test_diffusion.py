"""Tests for the Gaussian affinity and the symmetric diffusion kernel."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from _reference import ref_kernel, ref_random_walk
from scipy.spatial.distance import cdist

from lightning_info.functional.diffusion import (
    _mul_scaled_,
    _pairwise_sq_dists,
    diffusion_kernel,
    gaussian_affinity,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _data(n=60, d=5, scale=4.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) * scale


def test_pairwise_sq_dists_match_exact_differences_far_from_origin():
    x = _data() + 1e4  # far from the origin: naive |x|^2+|y|^2-2xy cancels badly here
    expected = cdist(x, x) ** 2
    got64 = _pairwise_sq_dists(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got64, expected, rtol=1e-9, atol=1e-9)
    x32 = torch.from_numpy(x).float()
    got32 = _pairwise_sq_dists(x32).double().numpy()
    # centring first keeps the float32 error near the float32 level of the distances themselves,
    # measured against exact differences of the same (float32-rounded) points
    expected32 = cdist(x32.double().numpy(), x32.double().numpy()) ** 2
    off = ~np.eye(len(x), dtype=bool)
    assert np.max(np.abs(got32 - expected32)[off] / expected32[off]) < 1e-4
    for got in (got64, got32):
        assert np.all(np.diag(got) == 0)
        assert np.all(got >= 0)
        assert np.array_equal(got, got.T)


def test_gaussian_affinity_matches_formula():
    x = _data()
    g = gaussian_affinity(torch.from_numpy(x), sigma=3.0).numpy()
    np.testing.assert_allclose(g, np.exp(-(cdist(x, x) ** 2) / 18.0), rtol=1e-12, atol=1e-14)
    assert np.all(np.diag(g) == 1.0)


@pytest.mark.parametrize("sigma", [1.0, 4.0, 10.0])
def test_kernel_matches_dense_reference_and_is_symmetric(sigma):
    x = _data()
    k = diffusion_kernel(x, sigma=sigma)
    assert k.dtype == torch.float64
    k = k.numpy()
    np.testing.assert_allclose(k, ref_kernel(x, sigma), rtol=1e-10, atol=1e-14)
    assert np.array_equal(k, k.T)
    assert np.all(k >= 0)


def test_kernel_spectrum_in_unit_interval_with_top_one_and_same_as_random_walk():
    x = _data(n=50)
    k = diffusion_kernel(torch.from_numpy(x), sigma=4.0)
    lam = np.sort(torch.linalg.eigvalsh(k).numpy())
    assert lam.min() >= -1 - 1e-12
    assert lam.max() == pytest.approx(1.0, abs=1e-12)
    lam_p = np.sort(np.linalg.eigvals(ref_random_walk(x, 4.0)).real)
    np.testing.assert_allclose(lam, lam_p, atol=1e-10)


def test_kernel_float32_and_numpy_input():
    x = _data()
    k32 = diffusion_kernel(torch.from_numpy(x), dtype=torch.float32)
    assert k32.dtype == torch.float32
    np.testing.assert_allclose(k32.double().numpy(), ref_kernel(x, 10.0), atol=1e-6)
    np.testing.assert_array_equal(
        diffusion_kernel(x, dtype="float64").numpy(), diffusion_kernel(torch.from_numpy(x)).numpy()
    )


@pytest.mark.parametrize(
    ("kwargs", "x", "err", "match"),
    [
        ({"sigma": 0.0}, np.ones((3, 2)), ValueError, "`sigma` must be a finite number > 0"),
        ({"sigma": -1.0}, np.ones((3, 2)), ValueError, "`sigma`"),
        ({"dtype": torch.float16}, np.ones((3, 2)), ValueError, "`dtype` must be None"),
        ({}, np.ones((3, 2, 2)), ValueError, "must be 2-D"),
        ({}, np.ones((1, 2)), ValueError, "at least 2 samples"),
        ({}, np.array([[0.0, np.nan], [1.0, 2.0]]), ValueError, "NaN or infinite"),
        ({}, "abc", TypeError, "torch.Tensor or numpy.ndarray"),
    ],
    ids=["sigma0", "sigma_neg", "dtype16", "rank3", "one_row", "nan", "string"],
)
@pytest.mark.parametrize("fn", [gaussian_affinity, diffusion_kernel], ids=["affinity", "kernel"])
def test_errors(fn, kwargs, x, err, match):
    with pytest.raises(err, match=match):
        fn(x, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("factor", "exp2"),
    [
        (1.0, 0),
        (0.3, 5),
        (5e59, 0),
        (0.5, 200),
        (1.7, -200),
        (1.0, 3000),
        (1.0, -3000),
        (0.75, 2 * 97),
    ],
)
def test_mul_scaled_matches_exact_rational_product(dtype, factor, exp2):
    """0 stays 0 (never 0 * inf = NaN) and nonzero entries round/overflow/underflow as exact maths."""
    values = [0.0, -0.0, 1e-30, 3.0, -2.5, 1e30, 7e-40 if dtype == torch.float32 else 1e-300]
    t = torch.tensor(values, dtype=dtype)
    got = _mul_scaled_(t, factor, exp2).tolist()
    for v, g in zip(t.new_tensor(values).tolist(), got):
        exact = Fraction(v) * Fraction(factor) * Fraction(2) ** exp2
        if exact == 0:
            assert g == 0.0, (v, g)
            continue
        tiny = Fraction(float(torch.finfo(dtype).tiny)) * Fraction(float(torch.finfo(dtype).eps))
        big = Fraction(float(torch.finfo(dtype).max))
        if abs(exact) > 2 * big:
            assert g == (float("inf") if exact > 0 else float("-inf")), (v, g)
        elif abs(exact) < tiny / 4:
            assert g == 0.0, (v, g)
        elif tiny * 2**30 < abs(exact) < big / 2:  # normal range: rounding of a few steps
            assert g == pytest.approx(float(exact), rel=4 * float(torch.finfo(dtype).eps)), (v, g)


@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e29, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kernel_scale_invariant_at_extreme_scales(scale, dtype):
    """K(s x, s sigma) = K(x, sigma): float32 data at 1e29 (squares overflow) or 1e-30 (squares
    underflow) must still give the float64 reference kernel of the unit-scale data."""
    x = _data(n=30, d=4, scale=1.0, seed=3)
    xs = torch.from_numpy(x * scale).to(dtype)
    k = diffusion_kernel(xs, sigma=2.0 * scale, dtype=dtype)
    assert bool(torch.isfinite(k).all())
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(k.double().numpy(), ref_kernel(x, 2.0), rtol=tol, atol=tol * 1e-2)
    d2 = _pairwise_sq_dists(xs).double().numpy()
    expected = cdist(x, x, "sqeuclidean") * scale**2
    off = ~np.eye(30, dtype=bool)
    if dtype == torch.float32 and scale >= 1e29:  # (1e29)^2 > float32 max: inf, never NaN
        assert np.all(np.isinf(d2[off]))
    elif dtype == torch.float32 and scale <= 1e-30:  # (1e-30)^2 < float32 min: 0, never NaN
        assert np.all(d2 == 0)
    else:
        np.testing.assert_allclose(d2, expected, rtol=tol * 10, atol=0)


@pytest.mark.parametrize("sigma", [1e-30, 1e-140])
def test_affinity_tiny_sigma_duplicates_are_one_and_others_zero(sigma):
    """1/(2 sigma^2) far beyond float32's range (and, squared distances included, float64's):
    G = 1 exactly on duplicate rows and 0 elsewhere, never NaN."""
    x = _data(n=8, d=2, seed=1)
    x = np.concatenate([x, x[:3]])
    for dtype in (torch.float32, torch.float64):
        g = gaussian_affinity(x, sigma=sigma, dtype=dtype).double().numpy()
        same = cdist(x, x) == 0
        np.testing.assert_array_equal(g, same.astype(float))
