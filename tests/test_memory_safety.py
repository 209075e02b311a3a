"""Memory safety of the large-N paths (issue 8, item 4), measured with torch.profiler.

Every CPU allocation made during a call is read from the profiler's memory events
(``profile_memory=True``: one ``[memory]`` event per allocation, +bytes, and per free, -bytes).
The tests assert that no single allocation, and no net growth of live memory, reaches the size of
the object that must never exist: the N x N diffusion kernel for DSE with ``solver="lanczos"``
under a small kernel budget, and the full (N, K, P) Jacobian for the NTK/SUI path under a small
``memory_budget_bytes``.

Each test has a positive control on the same detector: the same call with a budget large enough
to hold the object (or the exact solver) *does* show an allocation of that size. So the assertion
is able to fail; a regression that forms the object (e.g. a dense ``kernel @ v`` or a
``torch.cat`` of all Jacobians) trips it, as the controls demonstrate.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lightning_info.functional import (
    diffusion_spectral_entropy,
    empirical_ntk,
    jacobian_features,
    lanczos,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _allocations(fn):
    """Run ``fn()`` under the profiler; return (result, largest allocation, peak net growth, count).

    Sizes are in bytes. The peak is the maximum over time of (bytes allocated - bytes freed)
    since the start of the call, in event order.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    sizes = [int(e.nbytes()) for e in events]
    largest = max((s for s in sizes if s > 0), default=0)
    live = peak = 0
    for s in sizes:
        live += s
        peak = max(peak, live)
    return result, largest, peak, len(sizes)


# ---------------------------------------------------------------------------------------------
# (a) DSE, solver="lanczos": the N x N kernel is never formed under a small kernel budget
# ---------------------------------------------------------------------------------------------
N_DSE = 2048  # > _LANCZOS_MIN_N = 1024, so solver="lanczos" really runs Lanczos
BLOCK_ROWS = 64
CACHED_ROWS = 256


def _dse_lanczos_public(x: torch.Tensor) -> torch.Tensor:
    # few probes/steps: the Lanczos basis (start vectors x steps x N float64) stays far below N^2
    return diffusion_spectral_entropy(
        x, sigma=2.0, solver="lanczos", num_lanczos_probes=4, num_lanczos_steps=8
    )


def _x_dse() -> torch.Tensor:
    return torch.randn(N_DSE, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_dse_lanczos_small_budget_never_allocates_n_by_n(monkeypatch):
    """Kernel cache of CACHED_ROWS rows and recomputed blocks of BLOCK_ROWS rows: every allocation
    is O(N * rows); the smallest N x N matrix the code could form (float32, 16.8 MB) never is."""
    n, itemsize32 = N_DSE, 4
    monkeypatch.setattr(lanczos, "DEFAULT_MEMORY_BUDGET_BYTES", CACHED_ROWS * n * itemsize32)
    monkeypatch.setattr(lanczos, "_BLOCK_BYTES", BLOCK_ROWS * n * itemsize32)
    value, largest, peak, count = _allocations(lambda: _dse_lanczos_public(_x_dse()))
    assert count > 100  # the profiler saw the allocations (the test cannot pass vacuously)
    assert torch.isfinite(value)
    n_by_n = n * n * itemsize32
    # largest expected: the 256-row float32 cache (2.1 MB) or the Lanczos basis
    # (36 start vectors x 8 steps x N float64 = 4.7 MB); both are < N^2 float32 / 3.
    # Measured: largest 4.7 MB, peak 13.7 MB (about 3 x the basis; 27.5 MB at N = 4096, i.e.
    # linear in N) against 16.8 MB for one float32 N x N matrix.
    assert largest < n_by_n / 3, (largest, n_by_n)
    assert peak < n_by_n, (peak, n_by_n)


def test_dse_lanczos_control_dense_budget_is_detected(monkeypatch):
    """Positive control: with the default budget (dense float32 cache) and with the exact solver
    the same detector sees an N x N allocation, so the assertion above can fail."""
    n = N_DSE
    monkeypatch.setattr(lanczos, "_BLOCK_BYTES", BLOCK_ROWS * n * 4)  # blocks stay small
    _, largest, _, _ = _allocations(lambda: _dse_lanczos_public(_x_dse()))
    assert largest >= n * n * 4, largest
    x = _x_dse()[:1500]
    _, largest, _, _ = _allocations(lambda: diffusion_spectral_entropy(x, solver="exact"))
    assert largest >= 1500 * 1500 * 8, largest  # the dense float64 kernel


# ---------------------------------------------------------------------------------------------
# (b) SUI / NTK: full (N, K, P) Jacobians are never formed beyond the budget
# ---------------------------------------------------------------------------------------------
N_NTK, K_OUT = 128, 3


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    # P = 20*200 + 200 + 200*50 + 50 + 50*3 + 3 = 14,403 parameters
    return nn.Sequential(
        nn.Linear(20, 200), nn.Tanh(), nn.Linear(200, 50), nn.Tanh(), nn.Linear(50, K_OUT)
    )


def _full_jacobian_bytes(model: nn.Module) -> int:
    p = sum(q.numel() for q in model.parameters())
    return N_NTK * K_OUT * p * 4  # float32 parameters


@pytest.mark.parametrize("form", ["explicit", "structured"])
def test_empirical_ntk_small_budget_never_allocates_full_jacobians(form):
    model = _mlp()
    x = torch.randn(N_NTK, 20, generator=torch.Generator().manual_seed(1))
    full = _full_jacobian_bytes(model)  # 22.1 MB
    budget = 4 << 20  # 4 MiB: a chunk holds 6 samples' (K, P) Jacobians (1 MB)
    ntk, largest, peak, count = _allocations(
        lambda: empirical_ntk(model, x, memory_budget_bytes=budget, form=form)
    )
    assert count > 10
    assert ntk.shape == (N_NTK * K_OUT, N_NTK * K_OUT)
    # independent check of the value: the exact NTK from plain autograd, one output at a time
    rows = []
    for i in range(N_NTK):
        for k in range(K_OUT):
            model.zero_grad()
            model(x[i : i + 1])[0, k].backward()
            rows.append(torch.cat([q.grad.flatten() for q in model.parameters()]).double())
    jac = torch.stack(rows)
    torch.testing.assert_close(ntk, jac @ jac.T, rtol=1e-4, atol=1e-4)
    assert largest < full / 4, (largest, full)
    assert largest <= budget, (largest, budget)
    # Measured peak (explicit path): 9.6 MB = 2.3 x the budget, independent of N: the stored
    # float32 outer block (half the budget) plus its float64 copy in the kernel product (the
    # budget), an inner chunk and vmap temporaries. The budget bounds *stored* Jacobians only.
    assert peak <= 3 * budget, (peak, budget)
    assert peak < full / 2, (peak, full)


def test_empirical_ntk_control_large_budget_is_detected():
    """Positive control: with a budget that holds all Jacobians they are stored at once and the
    detector sees an allocation of the full (N, K, P) size."""
    model = _mlp()
    x = torch.randn(N_NTK, 20, generator=torch.Generator().manual_seed(1))
    full = _full_jacobian_bytes(model)
    _, largest, _, _ = _allocations(
        lambda: empirical_ntk(model, x, memory_budget_bytes=1 << 30, form="explicit")
    )
    assert largest >= full, (largest, full)


@functools.cache  # both tests below read the same (slow) explicit run
def _features_allocations(form: str, budget: int, n: int = 192, d: int = 64):
    model = _mlp()
    x = torch.randn(n, 20, generator=torch.Generator().manual_seed(1))
    feats, largest, _, _ = _allocations(
        lambda: jacobian_features(model, x, projection_dim=d, memory_budget_bytes=budget, form=form)
    )
    assert feats.shape == (n, K_OUT, d)
    return largest, n * K_OUT * sum(q.numel() for q in model.parameters()) * 4


@pytest.mark.parametrize("form", ["explicit", "structured"])
def test_jacobian_features_projection_never_full_jacobians(form):
    """Projected features (N, K, d) under a 1 MiB budget: no allocation comes near the full
    (N, K, P) Jacobians (N = 192: 33 MB) or, on the explicit path, the full P x d projection
    (3.7 MB)."""
    largest, full = _features_allocations(form, 1 << 20)
    p_by_d = 14_403 * 64 * 4
    assert largest < full / 3, (largest, full)
    assert largest < p_by_d / 3, (largest, p_by_d)


@pytest.mark.parametrize("form", ["explicit", "structured"])
def test_jacobian_features_projection_within_budget(form):
    """The documented bound: R is 'never materialized beyond memory_budget_bytes'. Allowed: 2x
    the budget, because each 1024 x d block of R is drawn in float64 before the cast to float32
    (the budget check counts float32 bytes only)."""
    budget = 1 << 20
    largest, _ = _features_allocations(form, budget)
    assert largest <= 2 * budget, largest
