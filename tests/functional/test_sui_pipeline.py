"""The one model-level SUI pipeline (``score_model``), its options and its solver dispatch.

References are independent of the pipeline: explicit per-sample Jacobians with brute-force
leave-one-out retraining (``tests/_reference_sui.py``), or the kernel engine on kernels built
here, and ``eigvalsh`` for the power iteration.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn

from lightning_info.functional import gd_plan
from lightning_info.functional.gd_plan import kernel_lambda_max, power_lambda_max
from lightning_info.functional.jacobian import empirical_ntk, per_sample_jacobians
from lightning_info.functional.sui import (
    JacobianRequest,
    ScoringRun,
    SUIOptions,
    loo_weight_decay,
    score_model,
    smooth_unique_information,
    unique_information_from_features,
    unique_information_from_kernels,
)
from lightning_info.functional.training_recipe import TrainingRecipe
from lightning_info.utilities.enums import SUIMethod
from tests._reference_sui import brute_force_loo

F64 = torch.float64


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture
def setup():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(9, 4, generator=gen, dtype=F64)
    x_star = torch.randn(4, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0])
    jac = per_sample_jacobians(model, x, params="2.")
    jac_star = per_sample_jacobians(model, x_star, params="2.")
    with torch.no_grad():
        f0 = model(x)
    y = torch.nn.functional.one_hot(labels, 3).to(F64)
    return model, x, x_star, labels, jac, jac_star, f0, y


def test_weight_decay_loo_and_auto_in_the_function_equal_brute_force(setup):
    model, x, x_star, labels, jac, jac_star, f0, y = setup
    flat = jac.flatten(0, 1)
    wd = loo_weight_decay(flat @ flat.T, f0, labels)  # itself checked against refits
    ref = brute_force_loo(jac, jac_star, f0, y, lr=0.5, t=None, wd=wd)
    for rule in ("loo", "auto"):
        out = smooth_unique_information(
            model, x, labels, x_star, learning_rate=0.5, weight_decay=rule, params="2."
        )
        assert out.plan.weight_decay == pytest.approx(wd, rel=1e-9)
        assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8
        assert _rel(out.function_change_sq, ref["f_sq"]) < 1e-8
    # "auto" for a finite horizon: no training run to read, so no weight decay
    out = smooth_unique_information(
        model, x, labels, learning_rate=0.5, num_steps=15, weight_decay="auto", params="2."
    )
    ref = brute_force_loo(jac, jac_star, f0, y, lr=0.5, t=15, wd=0.0)
    assert out.plan.weight_decay == 0.0
    assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8


@pytest.mark.parametrize(("full_ntk_max", "expected"), [(27, "full"), (26, "trace")])
def test_ntk_auto_in_the_function_picks_by_full_ntk_max(setup, full_ntk_max, expected):
    model, x, _, labels, *_ = setup  # N K = 27 rows; every layer, so trace != full
    kw = dict(learning_rate=0.5, weight_decay=0.01)
    out = smooth_unique_information(model, x, labels, ntk="auto", full_ntk_max=full_ntk_max, **kw)
    with torch.no_grad():
        f0 = model(x)
    refs = {
        ntk: unique_information_from_kernels(
            empirical_ntk(model, x, ntk=ntk), None, f0, labels, **kw
        )
        for ntk in ("full", "trace")
    }
    other = "trace" if expected == "full" else "full"
    assert _rel(refs["full"].weight_si, refs["trace"].weight_si) > 1e-3  # distinguishable
    assert _rel(out.weight_si, refs[expected].weight_si) < 1e-10
    assert _rel(out.weight_si, refs[other].weight_si) > 1e-3


def test_method_auto_in_the_function_replays_within_budget_else_ridge(setup):
    model, x, x_star, labels, jac, jac_star, f0, y = setup
    kw = dict(learning_rate=0.5, num_steps=15, weight_decay=0.01, params="2.", method="auto")
    out = smooth_unique_information(model, x, labels, x_star, **kw)
    assert out.plan.method == "replay"
    ref = brute_force_loo(jac, jac_star, f0, y, lr=0.5, t=15, wd=0.01)
    assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8
    cheap = smooth_unique_information(model, x, labels, x_star, replay_max_cost=1.0, **kw)
    assert cheap.plan.method == "ridge"
    flat, flat_star = jac.flatten(0, 1), jac_star.flatten(0, 1)
    ridge = unique_information_from_kernels(
        flat @ flat.T, flat_star @ flat.T, f0, labels, learning_rate=0.5, num_steps=15,
        weight_decay=0.01, method="ridge",
    )  # fmt: skip
    assert _rel(cheap.weight_si, ridge.weight_si) < 1e-8


def test_function_options_without_a_training_run_fail_naming_the_argument(setup):
    model, x, _, labels, *_ = setup
    for bad in (dict(weight_decay="optimizer"), dict(weight_decay=None), dict(num_steps="auto")):
        with pytest.raises(ValueError, match="no training run to read"):
            smooth_unique_information(model, x, labels, learning_rate=0.5, **bad)
    with pytest.raises(ValueError, match=r"`method` must be one of 'auto', 'replay', 'ridge'"):
        smooth_unique_information(model, x, labels, learning_rate=0.5, method="fast")
    with pytest.raises(ValueError, match="space='kernel'"):
        smooth_unique_information(
            model, x, labels, learning_rate=0.5, weight_decay="loo", space="features",
            projection_dim=4,
        )  # fmt: skip
    with pytest.raises(ValueError, match="replay_max_cost"):
        SUIOptions(replay_max_cost=0).validated()


class _ExplicitJacobians:
    """A Linearization that builds the kernels from explicit Jacobians (not empirical_ntk)."""

    def __init__(self):
        self.requests: list[JacobianRequest] = []
        self.stages = 0

    def stage(self):
        self.stages += 1
        return nullcontext()

    def solve(self, request, solve):
        self.requests.append(request)
        jac = per_sample_jacobians(request.model, request.inputs, params="2.").flatten(0, 1)
        jac_star = per_sample_jacobians(request.model, request.heldout_inputs, params="2.")
        return solve(jac @ jac.T, jac_star.flatten(0, 1) @ jac.T)


def test_score_model_resolves_the_recipe_and_uses_the_linearization_given(setup):
    model, x, x_star, labels, jac, jac_star, f0, y = setup
    recipe = TrainingRecipe(optimizer="SGD", learning_rate=0.5, weight_decay=0.01, steps_taken=15)
    options = SUIOptions(
        learning_rate=None, num_steps="auto", weight_decay="auto", method="auto", ntk="auto"
    )
    backend, announced = _ExplicitJacobians(), []
    info, run = score_model(
        model, x, labels, x_star, options, recipe=recipe, linearization=backend,
        announce=announced.append,
    )  # fmt: skip
    assert run == ScoringRun(9, 0.5, 15, 0.01, "full", "kernel")
    assert announced == [run]
    assert backend.stages == 1
    assert [r.features for r in backend.requests] == [False]
    ref = brute_force_loo(jac, jac_star, f0, y, lr=0.5, t=15, wd=0.01)
    assert _rel(info.weight_change_sq, ref["w_sq"]) < 1e-8
    assert _rel(info.function_change_sq, ref["f_sq"]) < 1e-8


def test_one_power_iteration_bounds_the_top_eigenvalue(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=gen, dtype=F64))
    eig = torch.linspace(0.0, 1.0, 40, dtype=F64) ** 3 * 5.0  # gap 5 -> 4.63 at the top
    a = (q * eig) @ q.T
    top = float(torch.linalg.eigvalsh(a)[-1])
    lam = power_lambda_max(a)
    assert top * (1 - 1e-4) < lam <= top * (1 + 1e-12)  # a Rayleigh quotient: never above
    assert power_lambda_max(torch.zeros(5, 5, dtype=F64)) == 0.0
    monkeypatch.setattr(gd_plan, "_EIGVALSH_MAX_ROWS", 10)  # force the power-iteration branch
    estimate = kernel_lambda_max(a, 40, 0.5)
    assert top + 20.0 <= estimate <= 1.1 * top * (1 + 1e-12) + 20.0


def test_engines_take_the_method_enum_and_reject_converged_with_steps():
    gen = torch.Generator().manual_seed(0)
    jac = torch.randn(6, 3, generator=gen, dtype=F64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    kw = dict(learning_rate=0.1, num_steps=10, weight_decay=0.1)
    ridge = unique_information_from_kernels(
        jac @ jac.T, None, torch.zeros(6), y, method=SUIMethod.RIDGE, **kw
    )
    by_name = unique_information_from_kernels(
        jac @ jac.T, None, torch.zeros(6), y, method="ridge", **kw
    )
    torch.testing.assert_close(ridge.weight_si, by_name.weight_si, rtol=1e-12, atol=0)
    feats = unique_information_from_features(
        jac[:, None, :], None, torch.zeros(6), y, method=SUIMethod.RIDGE, **kw
    )
    assert _rel(feats.weight_si, ridge.weight_si) < 1e-8
    with pytest.raises(ValueError, match="converged"):
        unique_information_from_kernels(
            jac @ jac.T, None, torch.zeros(6), y, method="converged", **kw
        )
    with pytest.raises(ValueError, match="not available in feature space"):
        unique_information_from_features(
            jac[:, None, :], None, torch.zeros(6), y, method="replay", **kw
        )


@pytest.mark.parametrize(
    ("weight_decay", "converged", "rule"),
    [
        ("auto", True, "loo"),
        ("auto", False, "optimizer"),
        ("loo", True, "loo"),
        (None, True, "optimizer"),
        ("optimizer", False, "optimizer"),
        (0.1, True, "given"),
        (0, False, "given"),
    ],
)
def test_options_say_how_the_weight_decay_was_chosen(weight_decay, converged, rule):
    options = SUIOptions(weight_decay=weight_decay).validated()
    assert options.weight_decay_rule(converged) == rule


@pytest.mark.parametrize(
    ("num_steps", "rule"),
    [("auto", "auto"), (None, "converged"), ("converged", "converged"), (5, "given")],
)
def test_options_say_how_the_horizon_was_chosen(num_steps, rule):
    assert SUIOptions(num_steps=num_steps).validated().horizon_rule() == rule
