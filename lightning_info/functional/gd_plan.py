r"""How a training run is replayed on the linearized network: one plan for every entry point.

Smooth unique information (Harutyunyan et al., ICLR 2021, arXiv:2101.06640) trains the
linearized network by full-batch gradient descent on the mean MSE loss (``docs/sui.md`` §2).
Three numerical decisions sit between a training recipe (learning rate, steps, weight decay) and
the closed forms; :func:`plan_gradient_descent` takes all of them, so the
:class:`~lightning_info.callbacks.SmoothUniqueInformation` callback, ``lightning-info score`` and
:func:`~lightning_info.functional.smooth_unique_information` replay a run the same way:

1. **Stability.** GD with :math:`\eta = lr/N` on :math:`A = \Theta + N\,\mathrm{wd}\, I`
   converges only if :math:`\eta\,\lambda_{\max}(A) < 2` (``docs/sui.md`` §7). Real training
   often runs at the edge of stability, beyond that limit for the linearized model; then the
   learning rate is lowered to 0.9 of the limit and the steps raised to keep the optimization
   time :math:`lr \cdot t`, with a note.
2. **Finite-horizon method.** ``method="auto"`` replays the ``t`` steps exactly
   (``"replay"``) when the estimated cost (flops of the eigendecomposition and the Volterra
   solve) is at most ``max_replay_cost``, else uses the ridge equivalent of early stopping
   (``"ridge"``, ``docs/sui.md`` §6).
3. **Singular kernels** (:func:`solve_planned`). The converged solution (``num_steps=None``)
   without weight decay is unique only for a positive definite kernel; for a singular one a
   ridge of :math:`10^{-8}\lambda_{\max}/N` is added, with a note.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from lightning_info.utilities.checks import _check_choice, _check_int, _check_positive
from lightning_info.utilities.enums import SUI_METHOD_CHOICES, SUIMethod
from lightning_info.utilities.exceptions import NotPositiveDefiniteError

__all__ = [
    "GradientDescentPlan",
    "kernel_lambda_max",
    "plan_gradient_descent",
    "power_lambda_max",
]

#: ``plan_gradient_descent(method="auto")`` replays the finite horizon exactly up to this many
#: flops.
DEFAULT_MAX_REPLAY_COST = 2e10
#: Above this many kernel rows, lambda_max comes from power iteration instead of ``eigvalsh``.
_EIGVALSH_MAX_ROWS = 6000
#: Matrix-vector products of :func:`power_lambda_max`.
_POWER_ITERATIONS = 100
#: Factor that turns the power-iteration lower bound into the plan's upper estimate.
_POWER_SAFETY = 1.1
#: A learning rate at or beyond this fraction of the stability limit is rescaled ...
_RESCALE_AT = 0.95
#: ... to this fraction of it.
_RESCALE_TO = 0.9
#: Ridge added to a singular kernel at t = ∞, relative to lambda_max / N.
_JITTER = 1e-8

T = TypeVar("T")


@dataclass(frozen=True)
class GradientDescentPlan:
    r"""The gradient-descent run replayed on the linearized network (see the module docstring).

    Attributes:
        learning_rate: lr of the mean loss actually replayed.
        num_steps: steps t actually replayed, or None for the converged solution.
        weight_decay: wd actually used (the given one, or the singular-kernel ridge).
        method: the :class:`~lightning_info.utilities.enums.SUIMethod` value solved:
            ``"replay"`` (the finite horizon replayed exactly), ``"ridge"`` (its ridge
            equivalent) or ``"converged"`` (``num_steps`` is None).
        lambda_max: :math:`\lambda_{\max}(A)` of the kernel the plan was made for.
        learning_rate_given: the learning rate asked for.
        num_steps_given: the steps asked for.
        notes: ``(kind, message)`` for each way the plan differs from what was asked
            (``"stability"``: the learning rate was lowered; ``"jitter"``: a ridge was added);
            the callers show them as warnings.
    """

    learning_rate: float
    num_steps: int | None
    weight_decay: float
    method: str
    lambda_max: float
    learning_rate_given: float
    num_steps_given: int | None
    notes: tuple[tuple[str, str], ...] = ()

    @property
    def rescaled(self) -> bool:
        """Whether the learning rate was lowered to the stability limit."""
        return self.learning_rate != self.learning_rate_given


def power_lambda_max(matrix: Tensor, iters: int = _POWER_ITERATIONS) -> float:
    """Power-iteration estimate of λ_max of a symmetric PSD matrix: a lower bound.

    The one power iteration of the package: deterministic (start ``1 + linspace(0, 1)``,
    normalized, so that it is not orthogonal to the top eigenvector of a centred kernel), the
    Rayleigh quotient after ``iters`` steps. Callers that need an upper bound inflate it.

    Args:
        matrix: (n, n) symmetric PSD matrix.
        iters: number of matrix-vector products.

    Returns:
        The Rayleigh quotient (0.0 for a zero matrix).

    Example:
        >>> round(power_lambda_max(torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))), 6)
        3.0
    """
    n = matrix.shape[0]
    v = torch.ones(n, dtype=matrix.dtype, device=matrix.device)
    v = v + torch.linspace(0, 1, n, dtype=matrix.dtype, device=matrix.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = matrix @ v
        lam = float(v @ w)
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return lam


def kernel_lambda_max(ntk: Tensor, num_samples: int, weight_decay: float) -> float:
    r""":math:`\lambda_{\max}(A)` of :math:`A = \Theta + N\,\mathrm{wd}\, I` for the stability check.

    Exact (``eigvalsh``) up to 6000 rows; above, :func:`power_lambda_max` inflated by 10 %
    (power iteration approaches the top eigenvalue from below).

    Args:
        ntk: (n, n) kernel as the engine uses it (a trace kernel already divided by K).
        num_samples: N.
        weight_decay: wd.

    Returns:
        The estimate of :math:`\lambda_{\max}(A)`.

    Example:
        >>> kernel_lambda_max(torch.diag(torch.tensor([1.0, 3.0])), 2, 0.5)
        4.0
    """
    ridge = num_samples * weight_decay
    if ntk.shape[0] <= _EIGVALSH_MAX_ROWS:
        return float(torch.linalg.eigvalsh(ntk.double())[-1]) + ridge
    return _POWER_SAFETY * power_lambda_max(ntk.double()) + ridge


def plan_gradient_descent(
    lambda_max: float,
    num_samples: int,
    *,
    learning_rate: float,
    num_steps: int | None,
    weight_decay: float = 0.0,
    method: SUIMethod | str = SUIMethod.AUTO,
    max_replay_cost: float = DEFAULT_MAX_REPLAY_COST,
    rows_per_sample: int = 1,
    right_hand_sides: int = 1,
) -> GradientDescentPlan:
    r"""Decide the stable learning rate, the steps and the finite-horizon method of a replay.

    With :math:`lr_{\max} = 2N/\lambda_{\max}(A)`: a learning rate
    :math:`lr \ge 0.95\, lr_{\max}` is replaced by :math:`0.9\, lr_{\max}` and the steps by
    :math:`\lceil t \cdot lr / lr' \rceil` (the same optimization time :math:`lr\,t`).
    ``method="auto"`` chooses ``"replay"`` when
    :math:`n^3 + t N n K_b^2 + N t^2 K_b^2 R \le` ``max_replay_cost`` (n = N K_b kernel rows,
    R right-hand sides), else ``"ridge"``.

    Args:
        lambda_max: :math:`\lambda_{\max}(A)` (e.g. :func:`kernel_lambda_max`), > 0.
        num_samples: N >= 2.
        learning_rate: lr of the mean loss, > 0.
        num_steps: t >= 1, or None for the converged solution.
        weight_decay: wd >= 0.
        method: a :class:`~lightning_info.utilities.enums.SUIMethod`: ``"auto"``, ``"replay"``
            or ``"ridge"``.
        max_replay_cost: flop budget of ``"replay"`` under ``"auto"``.
        rows_per_sample: kernel rows per sample :math:`K_b` (K for the full kernel, 1 for trace).
        right_hand_sides: R (1 for the full kernel, K for the trace kernel).

    Returns:
        The :class:`GradientDescentPlan`.

    Raises:
        ValueError: on invalid options.

    Example:
        >>> plan = plan_gradient_descent(10.0, 100, learning_rate=50.0, num_steps=100)
        >>> round(plan.learning_rate, 3), plan.num_steps, plan.rescaled, plan.method
        (18.0, 278, True, 'replay')
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    lr = _check_positive(learning_rate, "learning_rate")
    steps = _check_int(num_steps, "num_steps", minimum=1, allow_none=True)
    wd = _check_positive(weight_decay, "weight_decay", allow_zero=True)
    method = SUIMethod(_check_choice(method, "method", SUI_METHOD_CHOICES))
    notes: list[tuple[str, str]] = []
    lr_max = 2.0 * num_samples / max(lambda_max, 1e-300)
    new_lr, new_steps = lr, steps
    if lr >= _RESCALE_AT * lr_max:
        new_lr = _RESCALE_TO * lr_max
        new_steps = None if steps is None else max(1, math.ceil(steps * lr / new_lr))
        notes.append(
            (
                "stability",
                f"learning_rate={lr:g} exceeds the stability limit 2N/λ_max = {lr_max:.4g} of "
                "gradient descent on the linearized network (common at the edge of stability); "
                f"replaying the same optimization time with lr={new_lr:.4g} for {new_steps} steps "
                "instead.",
            )
        )
    if new_steps is None:
        chosen = SUIMethod.CONVERGED
    elif method is SUIMethod.AUTO:
        cost = _replay_cost(num_samples, new_steps, rows_per_sample, right_hand_sides)
        chosen = SUIMethod.REPLAY if cost <= max_replay_cost else SUIMethod.RIDGE
    else:
        chosen = method
    return GradientDescentPlan(
        learning_rate=new_lr,
        num_steps=new_steps,
        weight_decay=wd,
        method=chosen.value,
        lambda_max=float(lambda_max),
        learning_rate_given=lr,
        num_steps_given=steps,
        notes=tuple(notes),
    )


def _replay_cost(n_samples: int, steps: int, kb: int, rhs: int) -> float:
    """Estimated flops of the finite-horizon replay (eigh + Volterra systems).

    Returns:
        :math:`n^3 + t N n K_b^2 + N t^2 K_b^2 R` with n = N K_b.
    """
    nk = n_samples * kb
    return float(nk**3 + steps * n_samples * nk * kb**2 + n_samples * steps**2 * kb**2 * rhs)


def solve_planned(
    solve: Callable[[GradientDescentPlan], T], plan: GradientDescentPlan, num_samples: int
) -> tuple[T, GradientDescentPlan]:
    r"""Run ``solve(plan)``; for a singular kernel at t = ∞ without weight decay, add a tiny ridge.

    The converged (``num_steps=None``) leave-one-out solutions of a singular kernel are not
    unique; :math:`\mathrm{wd} = 10^{-8}\lambda_{\max}/N` makes them so (recorded in the returned
    plan's ``weight_decay`` and ``notes``).

    Args:
        solve: the engine call, given the plan to use.
        plan: the plan.
        num_samples: N.

    Returns:
        ``(result, plan used)``.

    Raises:
        NotPositiveDefiniteError: when the kernel is not positive definite in any other case.
    """
    try:
        return solve(plan), plan
    except NotPositiveDefiniteError:
        if plan.num_steps is not None or plan.weight_decay > 0:
            raise
    jitter = _JITTER * plan.lambda_max / num_samples
    note = (
        "the kernel is numerically singular, so the converged (num_steps=None) solution is not "
        f"unique; adding weight_decay={jitter:.3g} (1e-8 λ_max / N) to make it so."
    )
    plan = dataclasses.replace(plan, weight_decay=jitter, notes=(*plan.notes, ("jitter", note)))
    return solve(plan), plan
