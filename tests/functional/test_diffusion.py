"""Tests for the Gaussian affinity and the symmetric diffusion kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _reference import ref_kernel, ref_random_walk
from scipy.spatial.distance import cdist

from lightning_info.functional.diffusion import (
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
