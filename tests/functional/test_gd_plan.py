"""The gradient-descent plan, on its own (no Trainer): stability rescale, method choice, jitter.

References are closed forms written here (the stability limit 2N/λ_max from ``eigvalsh``) and
direct calls of the engine with the planned settings.
"""

from __future__ import annotations

import math

import pytest
import torch

from lightning_info.functional import (
    NotPositiveDefiniteError,
    empirical_ntk,
    plan_gradient_descent,
    smooth_unique_information,
    unique_information_from_kernels,
    unique_information_with_plan,
)
from lightning_info.functional.gd_plan import kernel_lambda_max, solve_planned
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset


def _kernel(n=12, p=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    jac = torch.randn(n, p, generator=g, dtype=torch.float64)
    return jac @ jac.T, torch.randint(0, 2, (n,), generator=g)


def test_stable_learning_rate_is_kept_and_unstable_one_rescaled_to_the_same_time():
    theta, _ = _kernel()
    n = theta.shape[0]
    lam_max = float(torch.linalg.eigvalsh(theta)[-1]) + n * 0.01
    assert kernel_lambda_max(theta, n, 0.01) == pytest.approx(lam_max, rel=1e-12)
    limit = 2 * n / lam_max
    kept = plan_gradient_descent(
        lam_max, n, learning_rate=0.5 * limit, num_steps=40, weight_decay=0.01
    )
    assert (kept.learning_rate, kept.num_steps, kept.rescaled, kept.notes) == (
        0.5 * limit,
        40,
        False,
        (),
    )
    plan = plan_gradient_descent(
        lam_max, n, learning_rate=3 * limit, num_steps=40, weight_decay=0.01
    )
    assert plan.learning_rate == pytest.approx(0.9 * limit)
    assert plan.num_steps == math.ceil(40 * 3 / 0.9)  # the same optimization time lr * t
    assert plan.rescaled
    assert plan.notes[0][0] == "stability"
    converged = plan_gradient_descent(lam_max, n, learning_rate=3 * limit, num_steps=None)
    assert converged.num_steps is None
    assert converged.method == "converged"


def test_auto_method_follows_the_cost_model():
    cheap = plan_gradient_descent(10.0, 50, learning_rate=1.0, num_steps=10, method="auto")
    assert cheap.method == "replay"
    dear = plan_gradient_descent(
        10.0, 50, learning_rate=1.0, num_steps=10, method="auto", max_replay_cost=1e3
    )
    assert dear.method == "ridge"
    forced = plan_gradient_descent(10.0, 50, learning_rate=1.0, num_steps=10, method="ridge")
    assert forced.method == "ridge"


def test_singular_kernel_at_convergence_gets_the_documented_ridge():
    theta, y = _kernel(n=20, p=6)  # rank 6 < N: singular
    f0 = torch.zeros(20)
    with pytest.raises(NotPositiveDefiniteError):
        unique_information_from_kernels(theta, None, f0, y, learning_rate=0.01)
    out = unique_information_with_plan(theta, None, f0, y, learning_rate=0.01)
    jitter = 1e-8 * float(torch.linalg.eigvalsh(theta)[-1]) / 20
    assert out.plan.weight_decay == pytest.approx(jitter, rel=1e-10)
    assert [kind for kind, _ in out.plan.notes] == ["jitter"]
    direct = unique_information_from_kernels(
        theta, None, f0, y, learning_rate=0.01, weight_decay=jitter
    )
    torch.testing.assert_close(out.weight_si, direct.weight_si, rtol=0, atol=0)
    # a finite horizon or weight decay never gets one: the error is the engine's
    plan = plan_gradient_descent(1.0, 20, learning_rate=0.01, num_steps=None, weight_decay=1e-3)

    def fail(_plan):
        raise NotPositiveDefiniteError(1.0)

    with pytest.raises(NotPositiveDefiniteError):
        solve_planned(fail, plan, 20)


def test_functional_plan_replays_an_unstable_run_at_the_stability_limit():
    # a learning rate 1.5 times the linearized limit 2N/λ_max at the initial weights of a digits
    # MLP: lowered to 0.9 of the limit, the steps raised to keep lr * t
    ds = load_dataset("digits")
    x, y = ds.inputs[:40], ds.targets[:40]
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(8,))
    theta = empirical_ntk(model, x)
    lr = 1.5 * 2 * 40 / float(torch.linalg.eigvalsh(theta)[-1])
    with pytest.warns(UserWarning, match="exceeds the stability limit"):
        out = smooth_unique_information(model, x, y, learning_rate=lr, num_steps=30)
    assert out.plan.rescaled
    assert out.plan.learning_rate == pytest.approx(0.9 * lr / 1.5, rel=1e-9)
    assert out.plan.num_steps == math.ceil(30 * lr / out.plan.learning_rate)  # lr * t kept


@pytest.mark.parametrize("k", [1, 3], ids=["K1", "K3-full"])
def test_loo_weight_decay_equals_brute_force_refits(k):
    # for every candidate ridge, refit kernel ridge without each sample and predict it: the
    # candidate with the smallest mean squared error must be the one chosen
    from lightning_info.functional import loo_weight_decay
    from lightning_info.functional.sui import LOO_GRID

    g = torch.Generator().manual_seed(3)
    n, p = 14, 9
    jac = torch.randn(n * k, p, generator=g, dtype=torch.float64)
    theta = jac @ jac.T
    f0 = torch.randn(n, k, generator=g, dtype=torch.float64)
    y = torch.randint(0, max(2, k), (n,), generator=g)
    target = y.double()[:, None] if k == 1 else torch.nn.functional.one_hot(y, k).double()
    r = (f0 - target).reshape(-1)
    mean_eig = float(torch.linalg.eigvalsh(theta).clamp_min(0).mean())
    errors = []
    for kappa in LOO_GRID:
        lam = kappa * mean_eig
        err = 0.0
        for i in range(n):
            keep = [j for j in range(n * k) if j // k != i]
            rows = list(range(i * k, (i + 1) * k))
            coef = torch.linalg.solve(theta[keep][:, keep] + lam * torch.eye(len(keep)), r[keep])
            pred_residual = r[rows] - theta[rows][:, keep] @ coef  # f_loo(x_i) - y_i
            err += float(pred_residual.square().sum())
        errors.append(err / n)
    best = LOO_GRID[int(torch.tensor(errors).argmin())]
    assert loo_weight_decay(theta, f0, y) == pytest.approx(best * mean_eig / n, rel=1e-12)


def test_loo_weight_decay_in_the_plan_and_the_callback():
    from lightning_info.callbacks import SmoothUniqueInformation
    from lightning_info.functional import loo_weight_decay
    from lightning_info.functional.training_recipe import TrainingRecipe

    ds = load_dataset("digits")
    x, y = ds.inputs[:60], ds.targets[:60]
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(8,))
    theta = empirical_ntk(model, x)
    f0 = model(x).detach()
    wd = loo_weight_decay(theta, f0, y)
    out = unique_information_with_plan(theta, None, f0, y, learning_rate=1e-3, weight_decay="loo")
    assert out.plan.weight_decay == pytest.approx(wd, rel=1e-12)
    with pytest.raises(ValueError, match="converged"):
        unique_information_with_plan(
            theta, None, f0, y, learning_rate=1e-3, num_steps=5, weight_decay="loo"
        )
    # the callback's default for an Adam run (converged replay) is this leave-one-out choice
    sui = SmoothUniqueInformation(linearize_at="final", max_samples=None)
    recipe = TrainingRecipe(optimizer="Adam", learning_rate=1e-3, steps_taken=40)
    scores = sui.score(model, torch.utils.data.TensorDataset(x, y), recipe=recipe, write=False)
    assert scores.plan.num_steps is None
    assert scores.plan.weight_decay == pytest.approx(wd, rel=1e-10)
    torch.testing.assert_close(scores.weight_si, out.weight_si, rtol=1e-9, atol=0)
