"""The finite-t SUI replay refuses, before allocating, a horizon whose memory exceeds the budget.

Issue 20: functional SUI with ``learning_rate=1e6, num_steps=10`` on N = 30 (the stability rescale
raises the steps) or with ``num_steps=10**6`` grew with N·K·steps until an out-of-memory kill at
20.6 GB. The replay's memory does grow with t (the series of every eigenvalue over the t steps, the
FFT buffers of the Volterra solve), so its peak is estimated up front
(:func:`~lightning_info.functional._sui_finite.replay_peak_bytes`) and refused with
``MemoryBudgetError`` naming the cheaper options. The estimate is checked against the PyTorch
profiler's measured peak.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from lightning_info.functional import (
    smooth_unique_information,
    unique_information_from_kernels,
    unique_information_with_plan,
)
from lightning_info.functional._sui_finite import replay_peak_bytes
from lightning_info.utilities.exceptions import MemoryBudgetError
from lightning_info.utilities.memory import DEFAULT_MEMORY_LIMIT_BYTES

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def _peak(fn):
    """(result, peak net live bytes) of ``fn()`` from the profiler's memory events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += int(e.nbytes())
        peak = max(peak, live)
    return result, peak


def _kernel_problem(n, k, trace, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if trace:
        jac = torch.randn(n, k, 12, generator=gen, dtype=F64)
        ntk = torch.einsum("ikp,jkp->ij", jac, jac)
        lam = float(torch.linalg.eigvalsh(ntk / k).max())
    else:
        jac = torch.randn(n * k, 12, generator=gen, dtype=F64)
        ntk = jac @ jac.T
        lam = float(torch.linalg.eigvalsh(ntk).max())
    f0 = 0.1 * torch.randn(n, k, generator=gen, dtype=F64)
    y = torch.arange(n) % k
    return ntk, f0, y, 0.9 * n / lam  # learning rate at 0.45 of the stability limit


@pytest.mark.parametrize(
    ("n", "k", "t", "trace"),
    [(30, 3, 1500, False), (30, 3, 3000, True), (20, 6, 800, False), (120, 1, 400, False)],
)
def test_replay_estimate_bounds_the_measured_peak(n, k, t, trace):
    ntk, f0, y, lr = _kernel_problem(n, k, trace)
    _, peak = _peak(
        lambda: unique_information_from_kernels(ntk, None, f0, y, learning_rate=lr, num_steps=t)
    )
    kb, rhs = (1, k) if trace else (k, 1)
    estimate = replay_peak_bytes(n, kb, rhs, t)
    assert peak <= estimate <= 2.0 * peak, (peak / 1e6, estimate / 1e6)


def test_small_limit_refuses_the_replay_and_names_the_cheaper_options():
    ntk, f0, y, lr = _kernel_problem(30, 3, False)
    kw = dict(learning_rate=lr, num_steps=400)
    estimate = replay_peak_bytes(30, 3, 1, 400)
    with pytest.raises(MemoryBudgetError) as info:
        unique_information_from_kernels(ntk, None, f0, y, memory_limit_bytes=estimate - 1, **kw)
    message = str(info.value)
    for option in ("t = 400", "num_steps=None", 'method="ridge"', "memory_limit_bytes"):
        assert option in message, option
    assert info.value.estimate_bytes == estimate
    # at the estimate it runs, and gives what it gives without a limit
    limited = unique_information_from_kernels(ntk, None, f0, y, memory_limit_bytes=estimate, **kw)
    free = unique_information_from_kernels(ntk, None, f0, y, **kw)
    torch.testing.assert_close(limited.weight_si, free.weight_si, rtol=0, atol=0)


def test_the_cheaper_options_are_not_refused():
    ntk, f0, y, lr = _kernel_problem(30, 3, False)
    for options in (
        {"num_steps": None, "weight_decay": 0.01},
        {"num_steps": 10**6, "method": "ridge"},
    ):
        out = unique_information_from_kernels(
            ntk, None, f0, y, learning_rate=lr, memory_limit_bytes=10**6, **options
        )
        assert torch.isfinite(out.weight_si).all()


def _model():
    """Ten outputs, as the issue's digits runs (the replay's memory grows with N K t)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 10)).double()


@pytest.mark.parametrize(
    "options",
    [{"learning_rate": 1e6, "num_steps": 10}, {"learning_rate": 0.1, "num_steps": 10**6}],
    ids=["rescaled-lr", "many-steps"],
)
def test_issue_cases_refused_at_the_default_budget_without_allocating(options):
    """The two cases of the issue (20.6 GB before) are refused before any large allocation."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=gen, dtype=F64)
    y = torch.arange(30) % 10

    def call():
        with warnings.catch_warnings():  # the rescaled case notes the lowered learning rate
            warnings.simplefilter("ignore", UserWarning)
            with pytest.raises(MemoryBudgetError) as info:
                smooth_unique_information(_model(), x, y, **options)
        return info.value

    err, peak = _peak(call)
    assert peak < 50 * 2**20  # nothing that grows with the steps was allocated
    assert err.estimate_bytes > err.limit_bytes == DEFAULT_MEMORY_LIMIT_BYTES
    assert "num_steps=None" in str(err)


def test_with_plan_checks_the_planned_horizon():
    """A learning rate beyond the stability limit raises the steps; the guard sees those."""
    ntk, f0, y, lr = _kernel_problem(30, 3, False)
    with pytest.raises(MemoryBudgetError, match=r"t = \d{4,}"):
        unique_information_with_plan(
            ntk, None, f0, y, learning_rate=1000 * lr, num_steps=10, method="replay",
            memory_limit_bytes=replay_peak_bytes(30, 3, 1, 1000),
        )  # fmt: skip
