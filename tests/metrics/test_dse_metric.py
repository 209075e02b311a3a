"""The torchmetrics contract of the DSE/DSMI metrics (torchmetrics ``_class_test`` style).

Batched updates + compute must equal the functional (and the independent NumPy reference) on the
concatenation; ``index`` puts samples in canonical order whatever the split; reset, clone, pickle
and forward behave as torchmetrics metrics do.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from _reference import ref_dse, ref_kernel

from lightning_info.functional import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.metrics import DiffusionSpectralEntropy, DiffusionSpectralMutualInformation


def _data(n=90, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    z = 4.0 * torch.eye(k, d)[y] + 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z, y


@pytest.mark.parametrize("batches", [1, 3, 7], ids=lambda b: f"{b}batches")
def test_dse_batched_equals_functional_and_reference(batches):
    z, _ = _data()
    metric = DiffusionSpectralEntropy(sigma=3.0, max_samples=None)
    for chunk in z.tensor_split(batches):
        metric.update(chunk)
    value = metric.compute()
    assert value.ndim == 0
    torch.testing.assert_close(value, diffusion_spectral_entropy(z, sigma=3.0), rtol=0, atol=1e-12)
    # independent dense NumPy reference (adds eps to every p: differs by < 1e-9 bits here)
    assert abs(value.item() - ref_dse(z.numpy(), sigma=3.0)) < 1e-8


def test_dse_subsampling_matches_functional():
    z, _ = _data(n=120)
    metric = DiffusionSpectralEntropy(sigma=3.0, max_samples=50, seed=3)
    for chunk in z.split(40):
        metric.update(chunk)
    expected = diffusion_spectral_entropy(z, sigma=3.0, max_samples=50, seed=3)
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=1e-12)
    # and it really subsampled: the full-data value differs
    assert abs(expected.item() - diffusion_spectral_entropy(z, sigma=3.0).item()) > 1e-4


@pytest.mark.parametrize("batches", [1, 4], ids=lambda b: f"{b}batches")
def test_dsmi_batched_equals_functional(batches):
    z, y = _data()
    metric = DiffusionSpectralMutualInformation(sigma=3.0, num_repeats=3, seed=1)
    for zc, yc in zip(z.tensor_split(batches), y.tensor_split(batches)):
        metric.update(zc, yc)
    expected = diffusion_spectral_mutual_information(z, y, sigma=3.0, num_repeats=3, seed=1)
    torch.testing.assert_close(metric.compute(), expected, rtol=0, atol=1e-12)
    assert expected.item() > 0.1  # the labels are informative here, so the check has teeth


def test_index_gives_canonical_order_and_drops_duplicates():
    """Shuffled batches with positions (plus a padded duplicate) == in-order data."""
    z, y = _data(n=60)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    dse_m = DiffusionSpectralEntropy(sigma=3.0, max_samples=40, seed=2)
    mi_m = DiffusionSpectralMutualInformation(sigma=3.0, num_repeats=2, max_samples=40, seed=2)
    for part in perm.tensor_split(3):
        dse_m.update(z[part], index=part)
        mi_m.update(z[part], y[part], index=part)
    # a DistributedSampler-style padded repeat of sample perm[0]
    dse_m.update(z[perm[:1]], index=perm[:1])
    mi_m.update(z[perm[:1]], y[perm[:1]], index=perm[:1])
    torch.testing.assert_close(
        dse_m.compute(),
        diffusion_spectral_entropy(z, sigma=3.0, max_samples=40, seed=2),
        rtol=0,
        atol=1e-12,
    )
    torch.testing.assert_close(
        mi_m.compute(),
        diffusion_spectral_mutual_information(
            z, y, sigma=3.0, num_repeats=2, max_samples=40, seed=2
        ),
        rtol=0,
        atol=1e-12,
    )


def test_without_index_order_matters_for_dsmi():
    """Documented: without ``index`` the concatenation order is used (subsets depend on it)."""
    z, y = _data(n=60)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(5))
    m = DiffusionSpectralMutualInformation(sigma=3.0, num_repeats=1, seed=0)
    m.update(z[perm], y[perm])
    in_order = diffusion_spectral_mutual_information(z, y, sigma=3.0, num_repeats=1, seed=0)
    assert abs(m.compute().item() - in_order.item()) > 1e-9


def test_reset_clears_state():
    z, _ = _data()
    metric = DiffusionSpectralEntropy(sigma=3.0)
    metric.update(z[:30] * 100)
    metric.reset()
    assert metric.embeddings == []
    assert metric.index == []
    metric.update(z)
    torch.testing.assert_close(metric.compute(), diffusion_spectral_entropy(z, sigma=3.0))


def test_clone_is_independent_and_keeps_options():
    z, _ = _data()
    metric = DiffusionSpectralEntropy(sigma=2.5, t=2, max_samples=70, seed=4)
    twin = metric.clone()
    assert (twin.sigma, twin.t, twin.max_samples, twin.seed) == (2.5, 2.0, 70, 4)
    metric.update(z)
    assert twin.embeddings == []
    twin.update(z[:50])
    assert len(metric.embeddings) == 1
    assert metric.embeddings[0].shape[0] == 90


def test_pickle_roundtrip_with_state():
    z, y = _data()
    metric = DiffusionSpectralMutualInformation(sigma=3.0, num_repeats=2)
    metric.update(z, y)
    restored = pickle.loads(pickle.dumps(metric))
    torch.testing.assert_close(restored.compute(), metric.compute(), rtol=0, atol=0)


def test_forward_returns_batch_value_and_accumulates():
    z, _ = _data()
    metric = DiffusionSpectralEntropy(sigma=3.0)
    first = metric(z[:45])
    second = metric(z[45:])
    torch.testing.assert_close(first, diffusion_spectral_entropy(z[:45], sigma=3.0))
    torch.testing.assert_close(second, diffusion_spectral_entropy(z[45:], sigma=3.0))
    torch.testing.assert_close(metric.compute(), diffusion_spectral_entropy(z, sigma=3.0))


def test_higher_rank_embeddings_are_flattened():
    z, _ = _data(n=40, d=12)
    metric = DiffusionSpectralEntropy(sigma=3.0)
    metric.update(z.reshape(40, 3, 4))
    torch.testing.assert_close(metric.compute(), diffusion_spectral_entropy(z, sigma=3.0))


def test_spectrum_matches_dense_reference():
    z, _ = _data(n=50)
    metric = DiffusionSpectralEntropy(sigma=3.0)
    metric.update(z)
    spectrum = metric.spectrum()
    expected = np.sort(np.linalg.eigvalsh(ref_kernel(z.numpy(), sigma=3.0)))
    np.testing.assert_allclose(spectrum.numpy(), expected, atol=1e-10)
    assert metric.embeddings[0].shape[0] == 50  # local state untouched


def test_errors_name_the_argument():
    z, y = _data(n=20)
    bad = z.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="embeddings"):
        DiffusionSpectralEntropy().update(bad)
    with pytest.raises(ValueError, match="reference"):
        DiffusionSpectralMutualInformation().update(z, y[:5])
    with pytest.raises(ValueError, match="sigma"):
        DiffusionSpectralEntropy(sigma=0.0)
    with pytest.raises(ValueError, match="max_samples"):
        DiffusionSpectralEntropy(max_samples=1)
    with pytest.raises(ValueError, match="num_repeats"):
        DiffusionSpectralMutualInformation(num_repeats=0)
    with pytest.raises(TypeError, match="discrete"):
        DiffusionSpectralMutualInformation(discrete="yes")
    with pytest.raises(ValueError, match="index"):
        DiffusionSpectralEntropy().update(z, index=torch.arange(3))
    partial = DiffusionSpectralEntropy()
    partial.update(z[:10], index=torch.arange(10))
    partial.update(z[10:])
    with pytest.raises(ValueError, match="index"):
        partial.compute()
    failed = DiffusionSpectralMutualInformation()
    with pytest.raises(ValueError, match="reference"):
        failed.update(z, y[:5])
    assert failed.embeddings == []  # a rejected batch leaves no half-stored state


def test_spectrum_after_compute_reuses_the_eigensolve(monkeypatch):
    import lightning_info.metrics.dse as metrics_dse

    z, _ = _data(n=50)
    calls = []
    real = metrics_dse._information_profile
    monkeypatch.setattr(
        metrics_dse, "_information_profile", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    metric = DiffusionSpectralEntropy(sigma=3.0)
    metric.update(z)
    value = metric.compute()
    spectrum = metric.spectrum()
    assert len(calls) == 1  # one eigensolve for both
    expected = np.sort(np.linalg.eigvalsh(ref_kernel(z.numpy(), sigma=3.0)))
    np.testing.assert_allclose(spectrum.numpy(), expected, atol=1e-10)
    assert abs(value.item() - ref_dse(z.numpy(), sigma=3.0)) < 1e-8
    metric.update(z[:20] * 3)  # new data: the cached spectrum must not be reused
    assert metric.spectrum().shape == (70,)
    assert len(calls) == 2
