r"""Smooth unique information (SUI) of every training sample, in closed form: the public API.

Harutyunyan, Achille, Paolini, Majumder, Ravichandran, Bhotika, Soatto, *Estimating
informativeness of samples with Smooth Unique Information*, ICLR 2021, arXiv:2101.06640.

Setting (do not change; see ``docs/sui.md`` §2-§3). The network is linearized at its
current parameters :math:`w_0` (:mod:`lightning_info.functional.jacobian`) and the linearized
model is trained by full-batch gradient descent, started at :math:`w_0`, on the **mean** loss

.. math::

    L(w) = \frac{1}{N} \sum_j \tfrac12 \lVert f(x_j; w) - y_j \rVert^2
           + \frac{\mathrm{wd}}{2} \lVert w - w_0 \rVert^2

with learning rate ``lr`` for ``t`` steps (``t = None``: converged). In kernel form, with
:math:`w_t - w_0 = J_S^\top a_t`, :math:`\eta = \mathrm{lr}/N`, :math:`\lambda = N\,\mathrm{wd}`,
:math:`A = \Theta + \lambda I` and residual :math:`r = f_0 - Y`,

.. math::

    a_{s+1} = a_s - \eta (A a_s + r), \qquad a_t = -A^{-1}\bigl(I - (I - \eta A)^t\bigr) r .

**Leave-one-out convention** (the authors' one): the run without sample i uses the principal
submatrix :math:`A_{-i}` (λ stays :math:`N\,\mathrm{wd}`) with :math:`\eta_{-i} = \mathrm{lr}/(N-1)`.
Exact retraining on N-1 samples would use :math:`\lambda = (N-1)\mathrm{wd}`; the difference is
O(wd/N) and rank-irrelevant (measured in docs/sui.md §3). With wd = 0 both conventions
coincide.

Scores, with :math:`\delta_i = \mathrm{pad}_i(a^{(-i)}_t) - a_t` (:math:`\Delta = ` new − old,
"new" = trained without sample i) and noise scale σ:

.. math::

    \lVert \Delta w_i \rVert^2 = \delta_i^\top \Theta \delta_i, \quad
    \mathrm{SI}_i = \frac{\lVert \Delta w_i \rVert^2}{2\sigma^2}, \quad
    \text{F-SI}_i = \frac{1}{2\sigma^2 M} \sum_{m=1}^{M}
        \lVert \Theta(x^*_m, S)\, \delta_i \rVert^2 .

Layout: this module holds the one model-level pipeline, :func:`score_model` (used by
:func:`smooth_unique_information` and the :class:`~lightning_info.callbacks.SmoothUniqueInformation`
callback, which passes its DDP-sharded :class:`Linearization`), its options :class:`SUIOptions`,
and the engines, which validate inputs and dispatch on
:class:`~lightning_info.utilities.enums.SUIMethod` (``_SOLVERS``). The closed forms live in
:mod:`~lightning_info.functional._sui_algebra` (t = ∞, kernel and feature space) and
:mod:`~lightning_info.functional._sui_finite` (the finite t replayed exactly); how a training
run is replayed (stability, method, singular kernels) is decided by
:mod:`~lightning_info.functional.gd_plan`, and what it was read from by
:mod:`~lightning_info.functional.training_recipe`.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from lightning_info.functional._jacobian_common import _DEFAULT_BUDGET, _check_projection
from lightning_info.functional._sui_algebra import _features, _infinite
from lightning_info.functional._sui_finite import _finite_replay, replay_peak_bytes
from lightning_info.functional.gd_plan import (
    DEFAULT_MAX_REPLAY_COST,
    GradientDescentPlan,
    kernel_lambda_max,
    plan_gradient_descent,
    power_lambda_max,
    solve_planned,
)
from lightning_info.functional.jacobian import (
    NTKKind,
    ParamSelection,
    ProjectionType,
    _check_outputs,
    empirical_ntk,
    jacobian_features,
    model_outputs,
)
from lightning_info.functional.training_recipe import (
    AUTO,
    LOO,
    OPTIMIZER,
    Horizon,
    TrainingRecipe,
    WeightDecay,
    check_horizon,
    check_weight_decay,
)
from lightning_info.utilities.checks import (
    _as_tensor,
    _check_choice,
    _check_finite,
    _check_int,
    _check_ndim,
    _check_positive,
)
from lightning_info.utilities.enums import SUI_METHOD_CHOICES, SUIMethod
from lightning_info.utilities.exceptions import NotPositiveDefiniteError
from lightning_info.utilities.memory import check_memory

__all__ = [
    "JacobianRequest",
    "Linearization",
    "LocalLinearization",
    "NotPositiveDefiniteError",
    "SUIOptions",
    "ScoringRun",
    "UniqueInformation",
    "loo_weight_decay",
    "score_model",
    "smooth_unique_information",
    "unique_information_from_features",
    "unique_information_from_kernels",
    "unique_information_with_plan",
]

SUISpace = Literal["auto", "kernel", "features"]

_NTKS = ("full", "trace")
_SPACES = ("auto", "kernel", "features")


@dataclass(frozen=True)
class UniqueInformation:
    r"""Per-sample smooth unique information, every field in input order.

    Attributes:
        weight_si: (N,) weight SI :math:`\lVert\Delta w\rVert^2 / (2\sigma^2)`, nats; higher =
            more informative about the weights.
        functional_si: (N,) functional SI :math:`\mathrm{mean}_x \lVert\Delta f(x)\rVert^2 /
            (2\sigma^2)` over the held-out inputs, nats; higher = more informative about the
            function. ``None`` when no held-out inputs/kernel were given.
        weight_change_sq: (N,) raw :math:`\lVert\Delta w\rVert^2` (the authors' ``weights-plain``).
        function_change_sq: (N,) raw :math:`\mathrm{mean}_x \sum_k \Delta f_k(x)^2` (the
            authors' ``predictions``), or ``None`` without held-out inputs.
        self_prediction_change: (N, K) :math:`f_{S\setminus i}(x_i) - f_S(x_i)`, the leave-one-out
            change of the sample's own prediction (raw outputs).
        loo_residual: (N, K) :math:`f_{S\setminus i}(x_i) - y_i`: how far the run trained without
            sample i predicts it from its (possibly wrong) label, the exact N-fold
            cross-validation residual of the linearized run (``docs/sui.md`` §4); its squared
            norm is :attr:`loo_error`.
        plan: the gradient-descent run that was replayed (:func:`smooth_unique_information`, the
            callback), or None for the kernel/feature engines, which replay what they are given.
    """

    weight_si: Tensor
    functional_si: Tensor | None
    weight_change_sq: Tensor
    function_change_sq: Tensor | None
    self_prediction_change: Tensor
    loo_residual: Tensor
    plan: GradientDescentPlan | None = None

    def __len__(self) -> int:
        """Number of scored samples.

        Returns:
            N.
        """
        return int(self.weight_si.numel())

    @property
    def loo_error(self) -> Tensor:
        r""":math:`\lVert f_{S\setminus i}(x_i) - y_i\rVert^2` (N,): each sample's leave-one-out error.

        High for samples that the rest of the data predicts poorly: mislabeled or atypical ones
        (the ``"loo_error"`` ranking of :func:`~lightning_info.applications.suspicious_samples`).

        Returns:
            The (N,) errors.
        """
        return self.loo_residual.square().sum(1)


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _prepare_targets(targets: Tensor, num_samples: int, num_outputs: int) -> Tensor:
    """Return (N, K) float64 targets from float targets or integer class labels.

    Returns:
        The targets; labels become one-hot rows (K > 1) or a 0/1 column (K = 1).

    Raises:
        ValueError: for a scalar, another length, float targets of another shape, or labels
            out of range.
    """
    targets = _as_tensor(targets, "targets")
    if targets.ndim == 0:
        raise ValueError(
            f"`targets` must be (N,) labels or (N, K) floats with N = {num_samples}; got a scalar."
        )
    if targets.shape[0] != num_samples:
        raise ValueError(
            f"`targets` must have one row per training sample ({num_samples}); "
            f"got {targets.shape[0]}."
        )
    if targets.is_floating_point():
        _check_finite(targets, "targets")
        if targets.ndim == 1:
            targets = targets[:, None]
        if targets.ndim != 2 or targets.shape[1] != num_outputs:
            raise ValueError(
                f"`targets` (float) must have shape (N, K) = ({num_samples}, {num_outputs}); "
                f"got {tuple(targets.shape)}."
            )
        return targets.double()
    if targets.ndim != 1:
        raise ValueError(
            f"integer `targets` must be class labels of shape (N,); got {tuple(targets.shape)}."
        )
    labels = targets.long()
    high = 2 if num_outputs == 1 else num_outputs
    if bool((labels < 0).any()) or bool((labels >= high).any()):
        raise ValueError(
            f"integer `targets` must lie in [0, {high - 1}] for K = {num_outputs} outputs "
            f"({'0/1 labels' if num_outputs == 1 else 'one-hot'}); got range "
            f"[{int(labels.min())}, {int(labels.max())}]."
        )
    if num_outputs == 1:
        return labels.double()[:, None]
    return torch.nn.functional.one_hot(labels, num_outputs).double()


def _check_kernel(ntk: Tensor, name: str, rows: int, cols: int, hint: str) -> Tensor:
    """A finite floating (rows, cols) kernel.

    Returns:
        The kernel in float64.

    Raises:
        ValueError: for another shape or NaN/inf entries.
    """
    ntk = _as_tensor(ntk, name, allow_int=False)
    _check_ndim(ntk, name, (2,), hint)
    if tuple(ntk.shape) != (rows, cols):
        raise ValueError(
            f"`{name}` must have shape {(rows, cols)} ({hint}); got {tuple(ntk.shape)}."
        )
    _check_finite(ntk, name)
    return ntk.double()


@dataclass(frozen=True)
class _Problem:
    """Validated outputs, targets and hyper-parameters shared by the two engines."""

    f0: Tensor  # (N, K) float64 outputs at the linearization point
    targets: Tensor  # (N, K) float64
    learning_rate: float
    num_steps: int | None
    weight_decay: float
    noise_scale: float
    method: SUIMethod
    ridge_c: float
    memory_limit_bytes: int | None = None  # of the finite-t replay's up-front guard

    @staticmethod
    def build(init_outputs: Any, targets: Any, **options: Any) -> _Problem:
        """Validate everything the engines share.

        Returns:
            The validated problem.

        Raises:
            ValueError: invalid options or inputs, fewer than 2 samples, or
                ``method="converged"`` with a finite ``num_steps``.
        """
        f0 = _as_tensor(init_outputs, "init_outputs", allow_int=False)
        _check_ndim(f0, "init_outputs", (1, 2), "(N,) or (N, K)")
        _check_finite(f0, "init_outputs")
        f0 = (f0[:, None] if f0.ndim == 1 else f0).double()
        n_samples, num_outputs = f0.shape
        if n_samples < 2:
            raise ValueError(
                f"leave-one-out needs at least 2 training samples; got N = {n_samples}."
            )
        num_steps = _check_int(options["num_steps"], "num_steps", minimum=1, allow_none=True)
        method = SUIMethod(_check_choice(options["method"], "method", _ENGINE_METHODS))
        if method is SUIMethod.CONVERGED and num_steps is not None:
            raise ValueError(
                f"`method='converged'` is the t = ∞ solution; pass `num_steps=None` (got "
                f"{num_steps}) or method 'replay' / 'ridge'."
            )
        return _Problem(
            f0=f0,
            targets=_prepare_targets(targets, n_samples, num_outputs),
            learning_rate=_check_positive(options["learning_rate"], "learning_rate"),
            num_steps=num_steps,
            weight_decay=_check_positive(options["weight_decay"], "weight_decay", allow_zero=True),
            noise_scale=_check_positive(options["noise_scale"], "noise_scale"),
            method=method,
            ridge_c=_check_positive(options["ridge_c"], "ridge_c"),
            memory_limit_bytes=options.get("memory_limit_bytes"),
        )

    @property
    def solver(self) -> SUIMethod:
        """The key of the dispatch table ``_SOLVERS``: ``CONVERGED`` for t = ∞, else the method."""
        return SUIMethod.CONVERGED if self.num_steps is None else self.method

    @property
    def num_samples(self) -> int:
        """N."""
        return self.f0.shape[0]

    @property
    def num_outputs(self) -> int:
        """K."""
        return self.f0.shape[1]

    @property
    def ridge(self) -> float:
        r""":math:`\lambda = N\,\mathrm{wd}`."""
        return self.num_samples * self.weight_decay

    @property
    def closed_form_ridge(self) -> float:
        r"""The ridge of the t = ∞ closed forms: :math:`\lambda`, plus :math:`c/(\eta t)` (ridge)."""
        if self.num_steps is None:
            return self.ridge
        return self.ridge + self.ridge_c / (
            (self.learning_rate / self.num_samples) * self.num_steps
        )

    def residuals(self, trace: bool) -> tuple[Tensor, int]:
        """The residuals :math:`r = f_0 - Y` in the engines' layout.

        Returns:
            ``(r, Kb)``: (N, K) residuals sharing a trace kernel (Kb = 1), or the (N K, 1)
            column of the full kernel (Kb = K).
        """
        if trace:
            return self.f0 - self.targets, 1
        return (self.f0 - self.targets).reshape(-1, 1), self.num_outputs

    def finish(
        self, w_sq: Tensor, f_sq: Tensor | None, self_change: Tensor, fitted: Tensor
    ) -> UniqueInformation:
        """Scale the raw numerators into scores (nats); the leave-one-out residuals.

        Returns:
            The :class:`UniqueInformation` (without a plan).
        """
        denom = 2.0 * self.noise_scale**2
        shape = (self.num_samples, self.num_outputs)
        self_change = self_change.reshape(shape)
        return UniqueInformation(
            weight_si=w_sq / denom,
            functional_si=None if f_sq is None else f_sq / denom,
            weight_change_sq=w_sq,
            function_change_sq=f_sq,
            self_prediction_change=self_change,
            loo_residual=fitted.reshape(shape) + self_change,
        )


def _check_stable(lam_max: float, lr: float, n: int, what: str) -> None:
    """Check that GD with η = lr/N is stable: η λ_max(A) < 2.

    Raises:
        ValueError: otherwise, with the largest stable learning rate.
    """
    eta = lr / n
    if eta * lam_max >= 2.0:
        raise ValueError(
            f"`learning_rate` = {lr:g} is too large for gradient descent on the linearized model "
            f"to converge: η·λ_max(A) = (lr/N)·λ_max = {eta * lam_max:.4g} >= 2 ({what}). "
            f"The max stable learning_rate is 2N/λ_max = {2.0 * n / lam_max:.6g}."
        )


def _kernels(ntk: Any, heldout_ntk: Any, problem: _Problem) -> tuple[Tensor, Tensor | None, bool]:
    """Validated float64 kernels (a trace kernel divided by K) and whether it is a trace kernel.

    Returns:
        ``(theta, theta_star or None, trace)``.

    Raises:
        ValueError: for wrong shapes, NaN/inf, or an asymmetric ``ntk``.
    """
    n_samples, num_outputs = problem.num_samples, problem.num_outputs
    ntk_t = _as_tensor(ntk, "ntk", allow_int=False)
    trace = num_outputs > 1 and tuple(ntk_t.shape) == (n_samples, n_samples)
    kb = 1 if trace else num_outputs
    theta = _check_kernel(ntk_t, "ntk", n_samples * kb, n_samples * kb, "(N*K, N*K) or (N, N)")
    asym = float((theta - theta.T).abs().max())
    if asym > 1e-6 * max(float(theta.abs().max()), 1e-300):
        raise ValueError(f"`ntk` must be symmetric; got max |Θ - Θᵀ| = {asym:.3g}.")
    theta = 0.5 * (theta + theta.T)
    theta_star = None
    if heldout_ntk is not None:
        hs = _as_tensor(heldout_ntk, "heldout_ntk", allow_int=False)
        if hs.ndim != 2 or hs.shape[0] % kb != 0 or hs.shape[0] == 0:
            raise ValueError(
                f"`heldout_ntk` must have shape (M*{kb}, {n_samples * kb}) with M >= 1 held-out "
                f"samples (or be None: no functional SI); got {tuple(hs.shape)}."
            )
        theta_star = _check_kernel(hs, "heldout_ntk", hs.shape[0], n_samples * kb, "(M*K, N*K)")
    if trace:
        theta = theta / num_outputs
        theta_star = None if theta_star is None else theta_star / num_outputs
    return theta, theta_star, trace


def unique_information_from_kernels(
    ntk: Tensor,
    heldout_ntk: Tensor | None,
    init_outputs: Tensor,
    targets: Tensor,
    *,
    learning_rate: float,
    num_steps: int | None = None,
    weight_decay: float = 0.0,
    noise_scale: float = 1.0,
    method: SUIMethod | str = "replay",
    ridge_c: float = 0.5,
    memory_limit_bytes: int | None = None,
) -> UniqueInformation:
    r"""Compute per-sample weight SI and functional SI from precomputed NTKs (no model).

    Harutyunyan et al. (2021, arXiv:2101.06640), Eq. for SI/F-SI of the linearized network; see
    the module docstring for the training semantics and the leave-one-out convention.

    .. math::

        \mathrm{SI}_i = \frac{\delta_i^\top \Theta \delta_i}{2\sigma^2}, \qquad
        \text{F-SI}_i = \frac{\lVert \Theta(X^*, S)\,\delta_i \rVert^2}{2\sigma^2 M}.

    How each horizon is solved:

    * ``num_steps=None`` (t = ∞): block-inverse closed forms (one float64 Cholesky of A, batched
      K x K solves over samples; docs/sui.md §5). Exact.
    * ``method="replay"``, finite t: the t steps replayed exactly. One eigendecomposition of A,
      then every leave-one-out run is recovered exactly from a K-dimensional lower-triangular
      Toeplitz (Volterra) system in the "pinning" forces :math:`c_s` that keep block
      :math:`B_i` at zero, solved for all samples at once by a power-series (FFT, Newton) inverse: O((NK)^3 + t N^2 K^3 + N t log t K^3), no
      per-sample matrix power or eigendecomposition. Exact up to round-off (docs/sui.md §6.1;
      ``benchmarks/RESULTS.md`` section 2).
    * ``method="ridge"``, finite t: the t = ∞ formulas with :math:`\lambda_\mathrm{eff} = N\,
      \mathrm{wd} + c/(\eta t)` (``c = ridge_c``), the ridge equivalent of early stopping
      (docs/sui.md §6.2). An approximation: the rankings agree closely with the replayed ones,
      the magnitudes differ (docs/sui.md §6.2, ``benchmarks/RESULTS.md`` section 3).

    Kernel shapes decide the kernel kind. ``ntk`` of shape (N K, N K) is the full sample-major
    kernel; shape (N, N) with K > 1 is the **trace** kernel of
    :func:`~lightning_info.functional.jacobian.empirical_ntk` (sum over outputs), used as
    :math:`(\Theta_\mathrm{trace}/K) \otimes I_K`: the K outputs share one N x N kernel (the
    algebra runs on N x N, vectorized over outputs); ``heldout_ntk`` must then be (M, N).

    Args:
        ntk: (N K, N K) full or (N, N) trace train kernel :math:`\Theta = J_S J_S^\top`.
        heldout_ntk: (M K, N K) or (M, N) held-out/train kernel, or None (no F-SI).
        init_outputs: (N, K) or (N,) outputs :math:`f(x_i; w_0)` at the linearization point.
        targets: (N, K) float targets, or (N,) integer labels (one-hot if K > 1, 0/1 if K = 1).
        learning_rate: lr of full-batch GD on the mean loss, > 0.
        num_steps: number of GD steps t >= 1, or None for t = ∞.
        weight_decay: wd >= 0 of the mean loss (pull toward :math:`w_0`).
        noise_scale: σ > 0 of the isotropic smoothing noise (weights and outputs).
        method: ``"replay"`` or ``"ridge"`` (only matters for finite ``num_steps``).
        ridge_c: constant c of the ridge approximation, > 0 (docs/sui.md §6.2: 0.5-1).
        memory_limit_bytes: refusal threshold of the up-front memory guard of the finite-t
            replay, whose memory grows with N K t (the series of every eigenvalue over the t
            steps), or None for :data:`~lightning_info.utilities.memory.DEFAULT_MEMORY_LIMIT_BYTES`
            (8 GiB).

    Returns:
        :class:`UniqueInformation` with (N,) float64 scores in nats (higher = more informative);
        ``functional_si``/``function_change_sq`` are None when ``heldout_ntk`` is None.

    Raises:
        ValueError: mismatched shapes/lengths, non-finite values, invalid options, a kernel that is
            not positive definite at t = ∞ with ``weight_decay=0`` (use ``weight_decay > 0`` or a
            finite ``num_steps``), or ``learning_rate`` too large for GD to converge
            (η·λ_max(A) >= 2; the message gives the max stable value).
        TypeError: non-numeric inputs.
        MemoryBudgetError: (a ``MemoryError``) before allocating, when the finite-t replay's
            estimated peak exceeds ``memory_limit_bytes``; the message names the cheaper
            options (fewer ``num_steps``, ``num_steps=None``, ``method="ridge"``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> jac = torch.randn(6, 3, generator=g, dtype=torch.float64)
        >>> out = unique_information_from_kernels(
        ...     jac @ jac.T, None, torch.zeros(6), torch.tensor([0, 1, 0, 1, 1, 0]),
        ...     learning_rate=0.1, weight_decay=0.1)
        >>> [round(x, 4) for x in out.weight_si.tolist()][:3]
        [0.3634, 0.0138, 0.0044]
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    problem = _Problem.build(
        init_outputs,
        targets,
        learning_rate=learning_rate,
        num_steps=num_steps,
        weight_decay=weight_decay,
        noise_scale=noise_scale,
        method=method,
        ridge_c=ridge_c,
        memory_limit_bytes=memory_limit_bytes,
    )
    theta, theta_star, trace = _kernels(ntk, heldout_ntk, problem)
    r, kb = problem.residuals(trace)
    return problem.finish(*_SOLVERS[problem.solver](problem, theta, theta_star, r, kb))


def _ridged(problem: _Problem, theta: Tensor) -> Tensor:
    r""":math:`A = \Theta + \lambda I`.

    Returns:
        The (n, n) matrix A.
    """
    eye = torch.eye(theta.shape[0], dtype=theta.dtype, device=theta.device)
    return theta + problem.ridge * eye


def _solve_closed_form(
    problem: _Problem, theta: Tensor, theta_star: Tensor | None, r: Tensor, kb: int
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    r"""The t = ∞ closed form (``CONVERGED``) and its ridge equivalent (``RIDGE``).

    Returns:
        The raw numerators of :meth:`_Problem.finish`.
    """
    lam = power_lambda_max(_ridged(problem, theta))
    _check_stable(lam, problem.learning_rate, problem.num_samples, "power-iteration estimate")
    return _infinite(theta, theta_star, r, problem.closed_form_ridge, kb)


def _solve_replay(
    problem: _Problem, theta: Tensor, theta_star: Tensor | None, r: Tensor, kb: int
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    r"""``REPLAY``: the finite horizon replayed exactly in the eigenbasis of :math:`A`.

    Returns:
        The raw numerators of :meth:`_Problem.finish`.
    """
    steps = int(problem.num_steps or 1)
    _check_replay_memory(problem.num_samples, kb, r.shape[1], steps, problem.memory_limit_bytes)
    evals, u = torch.linalg.eigh(_ridged(problem, theta))
    _check_stable(
        float(evals.max()), problem.learning_rate, problem.num_samples, "exact eigenvalue"
    )
    lr = problem.learning_rate
    return _finite_replay(theta, theta_star, r, problem.ridge, kb, lr, steps, (evals, u))


_Solver = Callable[
    [_Problem, Tensor, Tensor | None, Tensor, int], tuple[Tensor, Tensor | None, Tensor, Tensor]
]
#: Kernel-space solver of each method (``_Problem.solver``): the SUI methods' dispatch table.
_SOLVERS: dict[SUIMethod, _Solver] = {
    SUIMethod.CONVERGED: _solve_closed_form,
    SUIMethod.RIDGE: _solve_closed_form,
    SUIMethod.REPLAY: _solve_replay,
}
#: The methods the engines take (``AUTO`` is resolved by the plan before).
_ENGINE_METHODS = tuple(m.value for m in _SOLVERS)
#: The methods of the feature-space engine: the closed forms (one Woodbury solve).
_FEATURE_METHODS = (SUIMethod.CONVERGED, SUIMethod.RIDGE)


def _check_replay_memory(n_samples: int, kb: int, n_rhs: int, t: int, limit: Any) -> None:
    """The up-front memory guard of the finite-t replay (its memory grows with N Kb t).

    Raises:
        MemoryBudgetError: if :func:`replay_peak_bytes` exceeds ``limit``.
    """  # noqa: DOC502 (raised by check_memory)
    limit = _check_int(limit, "memory_limit_bytes", minimum=1, allow_none=True)
    check_memory(
        replay_peak_bytes(n_samples, kb, n_rhs, t),
        limit_bytes=limit,
        what=(
            f'replaying t = {t} gradient-descent steps exactly (method="replay") for N = '
            f"{n_samples} samples with {kb} kernel row(s) each (memory grows with N x K x t)"
        ),
        cheaper=(
            "a smaller horizon (fewer `num_steps`), `num_steps=None` (t = ∞, the converged "
            'solution) or `method="ridge"`'
        ),
    )


def _features_of(x: Any, name: str, rows: int | None, num_outputs: int) -> Tensor:
    """Validated (rows, K, d) float64 features ((N, d) is accepted for K = 1).

    Returns:
        The (rows, K, d) float64 features.

    Raises:
        ValueError: for another shape or NaN/inf entries.
    """
    x = _as_tensor(x, name, allow_int=False)
    if x.ndim == 2 and num_outputs == 1:
        x = x[:, None, :]
    _check_ndim(x, name, (3,), "(N, K, d)")
    if x.shape[1] != num_outputs or (rows is not None and x.shape[0] != rows):
        raise ValueError(
            f"`{name}` must have shape ({rows or 'M'}, {num_outputs}, d); got {tuple(x.shape)}."
        )
    _check_finite(x, name)
    return x.double()


def _feature_rows(phi3: Tensor, trace: bool, *, inplace: bool = False) -> Tensor:
    """(N, K, d) features as kernel rows.

    Args:
        phi3: (N, K, d) features.
        trace: rows of the trace kernel.
        inplace: scale ``phi3`` itself (a copy the caller owns) instead of a new tensor.

    Returns:
        (N K, d) rows for the full kernel, or (N, K d) / sqrt(K) for the trace kernel.
    """
    if trace:
        rows = phi3.reshape(phi3.shape[0], -1)
        scale = 1.0 / math.sqrt(phi3.shape[1])
        return rows.mul_(scale) if inplace else rows * scale
    return phi3.reshape(-1, phi3.shape[2])


def _rows_gram(phi3: Tensor, trace: bool, chunk: int = 4096) -> Tensor:
    """The float64 Gram matrix of the kernel rows, accumulated over chunks of samples.

    Returns:
        (d', d') with d' the rows' width (no float64 copy of all the features is formed).
    """
    gram = None
    for a in range(0, phi3.shape[0], chunk):
        rows = _feature_rows(phi3[a : a + chunk].double(), trace)
        gram = rows.T @ rows if gram is None else gram.addmm_(rows.T, rows)
    return gram


def unique_information_from_features(
    features: Tensor,
    heldout_features: Tensor | None,
    init_outputs: Tensor,
    targets: Tensor,
    *,
    learning_rate: float,
    num_steps: int | None = None,
    weight_decay: float = 0.0,
    noise_scale: float = 1.0,
    method: SUIMethod | str = "replay",
    ridge_c: float = 0.5,
    ntk: NTKKind = "full",
) -> UniqueInformation:
    r"""Compute SI / F-SI from (projected) Jacobian features, in d-space (Woodbury), linear in N.

    Same semantics as :func:`unique_information_from_kernels` with :math:`\Theta = \Phi\Phi^\top`.
    With :math:`C = \Phi^\top \Phi + \lambda I_d` (a d x d Cholesky) and :math:`Z = C^{-1}\Phi^\top`:

    .. math::

        F = A^{-1} = \tfrac{1}{\lambda}(I - \Phi Z), \quad
        \lVert \Delta w_i \rVert^2 = \lVert Z_{B_i} v_i \rVert^2, \quad
        \Delta f(X^*) = \Phi^* Z_{B_i} v_i, \quad v_i = F_{B_i B_i}^{-1} (F r)_{B_i},

    so the cost is O(N K d^2 + d^3). Needs λ > 0: t = ∞ with ``weight_decay > 0``, or
    ``method="ridge"`` with a finite ``num_steps``. With ``ntk="trace"`` the features are
    concatenated over outputs and scaled by :math:`1/\sqrt{K}`, which realises
    :math:`(\Theta_\mathrm{trace}/K) \otimes I_K`.

    Args:
        features: (N, K, d) features (e.g. :func:`~lightning_info.functional.jacobian.
            jacobian_features`), or (N, d) for K = 1.
        heldout_features: (M, K, d) (or (M, d)) held-out features, or None.
        init_outputs: (N, K) or (N,) outputs at the linearization point.
        targets: (N, K) float or (N,) integer labels.
        learning_rate: lr > 0.
        num_steps: t >= 1, or None for t = ∞.
        weight_decay: wd >= 0.
        noise_scale: σ > 0.
        method: ``"replay"`` (t = ∞ only here) or ``"ridge"``.
        ridge_c: c of the ridge approximation.
        ntk: which NTK the features realise, ``"full"`` or ``"trace"``.

    Returns:
        :class:`UniqueInformation` (float64, nats, higher = more informative).

    Raises:
        ValueError: mismatched shapes, non-finite values, ``method="replay"`` with a finite
            ``num_steps`` (use the kernel path or ``"ridge"``), or a learning rate too large for
            GD to converge.
        NotPositiveDefiniteError: (a ``ValueError``) if λ = 0 (t = ∞ with ``weight_decay=0``).
        TypeError: non-numeric inputs.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> phi = torch.randn(6, 1, 3, generator=g, dtype=torch.float64)
        >>> out = unique_information_from_features(
        ...     phi, None, torch.zeros(6), torch.tensor([0, 1, 0, 1, 1, 0]),
        ...     learning_rate=0.1, weight_decay=0.1)
        >>> [round(x, 4) for x in out.weight_si.tolist()][:3]
        [0.3634, 0.0138, 0.0044]
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    problem = _Problem.build(
        init_outputs,
        targets,
        learning_rate=learning_rate,
        num_steps=num_steps,
        weight_decay=weight_decay,
        noise_scale=noise_scale,
        method=method,
        ridge_c=ridge_c,
    )
    ntk = _check_choice(ntk, "ntk", _NTKS)
    phi3 = _features_of(features, "features", problem.num_samples, problem.num_outputs)
    phi_star3 = None
    if heldout_features is not None:
        phi_star3 = _features_of(heldout_features, "heldout_features", None, problem.num_outputs)
        if phi_star3.shape[2] != phi3.shape[2]:
            raise ValueError(
                f"`heldout_features` must have d = {phi3.shape[2]} like `features`; "
                f"got {phi_star3.shape[2]}."
            )
    if problem.solver not in _FEATURE_METHODS:
        raise ValueError(
            f"`method='{problem.method}'` with a finite `num_steps` is not available in feature "
            "space; use `method='ridge'`, or the kernel path (`unique_information_from_kernels`)."
        )
    trace = ntk == "trace" and problem.num_outputs > 1
    r, kb = problem.residuals(trace)
    # the float64 features are scaled in place when they are this call's own copy
    own = not (isinstance(features, Tensor) and phi3.data_ptr() == features.data_ptr())
    phi = _feature_rows(phi3, trace, inplace=own)
    del phi3
    phi_star = None if phi_star3 is None else _feature_rows(phi_star3, trace)
    gram_max = float(torch.linalg.eigvalsh(phi.T @ phi).max())
    _check_stable(
        gram_max + problem.ridge, problem.learning_rate, problem.num_samples, "exact eigenvalue"
    )
    if problem.closed_form_ridge <= 0:
        raise NotPositiveDefiniteError(0.0)
    return problem.finish(*_features(phi, phi_star, r, problem.closed_form_ridge, kb))


@dataclass(frozen=True)
class SUIOptions:
    r"""Every option of the model-level SUI pipeline (:func:`score_model`), in one frozen record.

    The :func:`smooth_unique_information` function and the
    :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback both build one and call
    :func:`score_model`; :meth:`validated` checks every field once, naming the argument and its
    valid values. The defaults are the function's; the callback passes its own.

    Attributes:
        learning_rate: lr of the replayed run, > 0; None: the training recipe's.
        num_steps: an int >= 1, None / ``"converged"`` (t = ∞), or ``"auto"`` (from the training
            recipe, :meth:`~lightning_info.functional.training_recipe.TrainingRecipe.replay`).
        weight_decay: a number >= 0, ``"loo"`` (:func:`loo_weight_decay`), ``"auto"`` (``"loo"``
            for the converged run, else the recipe's) or ``"optimizer"`` / None (the recipe's).
        method: a :class:`~lightning_info.utilities.enums.SUIMethod` (``"auto"``, ``"replay"``,
            ``"ridge"``).
        noise_scale: σ > 0 of the smoothing noise.
        ridge_c: c of the ridge approximation, > 0.
        replay_max_cost: flop budget of the finite-horizon replay under ``method="auto"``.
        ntk: ``"full"``, ``"trace"`` or ``"auto"`` (full when N·K <= ``full_ntk_max`` or K = 1).
        full_ntk_max: largest N·K for which ``ntk="auto"`` uses the full NTK.
        space: ``"auto"``, ``"kernel"`` or ``"features"`` (see :func:`smooth_unique_information`).
        params: which parameters to linearize (None = all trainable).
        projection_dim: random-projection dimension of the Jacobians, or None.
        projection: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"`` (see
            :func:`~lightning_info.functional.jacobian.jacobian_features`).
        seed: seed of the projection.
        chunk_size: samples per Jacobian ``vmap`` call.
        output_batch_size: samples per forward pass of the outputs at the linearization point
            (None: ``chunk_size``).
        memory_budget_bytes: bound on stored Jacobians / projection blocks.
        output_fn: maps the model's raw output to the (B,) or (B, K) tensor to linearize.
        memory_limit_bytes: refusal threshold of the finite-t replay's up-front memory guard, or
            None for the default 8 GiB.
    """

    learning_rate: float | None = None
    num_steps: Horizon = None
    weight_decay: WeightDecay = 0.0
    method: SUIMethod | str = SUIMethod.REPLAY
    noise_scale: float = 1.0
    ridge_c: float = 0.5
    replay_max_cost: float = DEFAULT_MAX_REPLAY_COST
    ntk: str = "full"
    full_ntk_max: int = 2000
    space: str = "auto"
    params: ParamSelection = None
    projection_dim: int | None = None
    projection: ProjectionType = "gaussian"
    seed: int = 0
    chunk_size: int | None = None
    output_batch_size: int | None = None
    memory_budget_bytes: int = _DEFAULT_BUDGET
    output_fn: Callable[[Any], Tensor] | None = None
    memory_limit_bytes: int | None = None

    def validated(self) -> SUIOptions:
        """Check every option (the Jacobian ones are checked where they are used).

        Returns:
            The options with canonical values (``method`` a :class:`SUIMethod`, ``num_steps``
            ``"converged"`` as None, ``weight_decay`` None as ``"optimizer"``).

        Raises:
            ValueError: for an invalid value, naming the option and its valid values.
        """  # noqa: DOC502 (raised by the shared checks)
        lr = self.learning_rate
        dim = _check_int(self.projection_dim, "projection_dim", minimum=1, allow_none=True)
        return dataclasses.replace(
            self,
            learning_rate=None if lr is None else _check_positive(lr, "learning_rate"),
            num_steps=check_horizon(self.num_steps),
            weight_decay=check_weight_decay(self.weight_decay),
            method=SUIMethod(_check_choice(self.method, "method", SUI_METHOD_CHOICES)),
            noise_scale=_check_positive(self.noise_scale, "noise_scale"),
            ridge_c=_check_positive(self.ridge_c, "ridge_c"),
            replay_max_cost=_check_positive(self.replay_max_cost, "replay_max_cost"),
            ntk=_check_choice(self.ntk, "ntk", ("auto", *_NTKS)),
            full_ntk_max=int(_check_int(self.full_ntk_max, "full_ntk_max", minimum=1)),
            space=_check_choice(self.space, "space", _SPACES),
            projection_dim=dim,
            projection=_check_projection(self.projection, dim),
            seed=int(_check_int(self.seed, "seed")),
            chunk_size=_check_int(self.chunk_size, "chunk_size", minimum=1, allow_none=True),
            output_batch_size=_check_int(
                self.output_batch_size, "output_batch_size", minimum=1, allow_none=True
            ),
            memory_limit_bytes=_check_int(
                self.memory_limit_bytes, "memory_limit_bytes", minimum=1, allow_none=True
            ),
        )

    def resolve_ntk(self, num_samples: int, num_outputs: int) -> str:
        """``ntk="auto"``: the full kernel when N·K <= ``full_ntk_max`` or K = 1, else the trace.

        Returns:
            ``"full"`` or ``"trace"``.
        """
        if self.ntk != "auto":
            return str(self.ntk)
        small = num_samples * num_outputs <= self.full_ntk_max or num_outputs == 1
        return "full" if small else "trace"

    def weight_decay_rule(self, converged: bool) -> str:
        """How the weight decay of a run was chosen, for the reports.

        Args:
            converged: whether the replayed run is the converged one (after the plan).

        Returns:
            ``"loo"`` (leave-one-out), ``"optimizer"`` (the training run's) or ``"given"``.
        """
        if self.weight_decay not in (AUTO, LOO, OPTIMIZER):
            return "given"
        return "loo" if converged and self.weight_decay in (AUTO, LOO) else "optimizer"

    def horizon_rule(self) -> str:
        """How the horizon was chosen, for the reports.

        Returns:
            ``"auto"`` (from the training run), ``"converged"`` or ``"given"``.
        """
        if self.num_steps == AUTO:
            return "auto"
        return "converged" if self.num_steps is None else "given"

    def jacobian_options(self) -> dict[str, Any]:
        """The keyword arguments of ``empirical_ntk`` / ``jacobian_features``.

        Returns:
            ``params``, ``projection_dim``, ``projection``, ``seed``, ``chunk_size``,
            ``memory_budget_bytes`` and ``output_fn``.
        """
        return dict(
            params=self.params,
            projection_dim=self.projection_dim,
            projection=self.projection,
            seed=self.seed,
            chunk_size=self.chunk_size,
            memory_budget_bytes=self.memory_budget_bytes,
            output_fn=self.output_fn,
        )


@dataclass(frozen=True)
class ScoringRun:
    """The run :func:`score_model` replays, every sentinel resolved (before the plan's changes).

    Attributes:
        num_samples: N.
        learning_rate: lr asked for.
        num_steps: steps asked for, or None (converged).
        weight_decay: a number, or ``"loo"`` (chosen on the kernel).
        ntk: ``"full"`` or ``"trace"``.
        space: ``"kernel"`` or ``"features"``: where the algebra runs.
    """

    num_samples: int
    learning_rate: float
    num_steps: int | None
    weight_decay: float | str
    ntk: str
    space: str


#: ``solve(kernels or features of the training inputs, of the held-out inputs or None)``.
EngineCall = Callable[[Tensor, Tensor | None], "UniqueInformation"]


@dataclass(frozen=True)
class JacobianRequest:
    """What :func:`score_model` asks a :class:`Linearization` to build.

    Attributes:
        model: the network at the linearization point.
        inputs: (N, ...) training inputs, on the model's device.
        heldout_inputs: (M, ...) held-out inputs, or None.
        ntk: ``"full"`` or ``"trace"``.
        features: build projected Jacobian features (feature space) instead of the NTKs.
        jacobian_options: keyword arguments of ``empirical_ntk`` / ``jacobian_features``.
    """

    model: nn.Module
    inputs: Tensor
    heldout_inputs: Tensor | None
    ntk: str
    features: bool
    jacobian_options: dict[str, Any]

    def build_locally(self, **extra: Any) -> tuple[Tensor, Tensor | None]:
        """The training and held-out NTKs (or Jacobian features), in this process.

        Args:
            **extra: more Jacobian keyword arguments (e.g. a ``progress`` observer).

        Returns:
            ``(train, heldout or None)``: (N K, N K) / (N, N) and held-out/train kernels, or
            (N, K, d) and (M, K, d) features.
        """
        kw = {**self.jacobian_options, **extra}
        x, x_val = self.inputs, self.heldout_inputs
        if self.features:
            phi = jacobian_features(self.model, x, **kw)
            return phi, None if x_val is None else jacobian_features(self.model, x_val, **kw)
        theta = empirical_ntk(self.model, x, ntk=self.ntk, **kw)
        if x_val is None:
            return theta, None
        return theta, empirical_ntk(self.model, x_val, x, ntk=self.ntk, **kw)


class Linearization(Protocol):
    """Where the Jacobians come from and where the solve runs (local, or sharded under DDP)."""

    def stage(self) -> AbstractContextManager[None]:
        """A context for the steps every process runs alone (outputs, resolution)."""
        ...

    def solve(self, request: JacobianRequest, solve: EngineCall) -> UniqueInformation:
        """``solve`` on the NTKs or the Jacobian features the request asks for."""
        ...


class LocalLinearization:
    """The single-process :class:`Linearization` (:func:`smooth_unique_information`)."""

    def stage(self) -> AbstractContextManager[None]:
        """No collective: a plain context.

        Returns:
            A null context.
        """
        return nullcontext()

    def solve(self, request: JacobianRequest, solve: EngineCall) -> UniqueInformation:
        """``solve`` on the kernels or features built here.

        Returns:
            ``solve``'s result.
        """
        return solve(*request.build_locally())


def score_model(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    heldout_inputs: Tensor | None,
    options: SUIOptions,
    *,
    recipe: TrainingRecipe | None = None,
    linearization: Linearization | None = None,
    announce: Callable[[ScoringRun], None] | None = None,
) -> tuple[UniqueInformation, ScoringRun]:
    """The one model-level SUI pipeline: outputs, the resolved run, Jacobians, plan and solve.

    Called by :func:`smooth_unique_information` and by the
    :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback (with its training recipe
    and its DDP-sharded :class:`Linearization`). The inputs and targets are moved to the model's
    device; the model's parameters are the linearization point.

    Args:
        model: the network at the linearization point.
        inputs: (N, ...) training inputs.
        targets: (N, K) float targets or (N,) integer labels.
        heldout_inputs: (M, ...) held-out inputs for functional SI, or None.
        options: the options (validated here).
        recipe: the training run whose sentinels (``"auto"``, ``"optimizer"``) the options may
            name; None: an empty recipe (every value given explicitly).
        linearization: where Jacobians are built and the solve runs; None: this process.
        announce: called with the resolved run before the Jacobians are built.

    Returns:
        ``(scores with their plan, the resolved run)``; the plan's ``notes`` say what the plan
        changed (callers show them as warnings).

    Raises:
        ValueError: invalid options, no learning rate, or ``space="features"`` with a weight
            decay chosen by leave-one-out (it needs the kernel).
    """  # noqa: DOC502 (raised by the validation and the engines)
    options = options.validated()
    backend = linearization if linearization is not None else LocalLinearization()
    device = _device_of(model, inputs)
    x = inputs.to(device)
    x_val = None if heldout_inputs is None else heldout_inputs.to(device)
    with backend.stage():  # under DDP a failure here reaches every rank
        chunk = options.output_batch_size or options.chunk_size
        f0 = _initial_outputs(model, x, chunk, options.output_fn)
        run = _resolve_run(options, recipe if recipe is not None else TrainingRecipe(), f0)
    if announce is not None:
        announce(run)
    features = run.space == "features"
    engine = _planned_features if features else _planned_kernels
    y = targets.to(device)

    def solve(train: Tensor, heldout: Tensor | None) -> UniqueInformation:
        return engine(train, heldout, f0, y, run, options)

    request = JacobianRequest(model, x, x_val, run.ntk, features, options.jacobian_options())
    return backend.solve(request, solve), run


def _device_of(model: nn.Module, inputs: Tensor) -> torch.device:
    """The device of the model's first parameter (the inputs' device for a parameterless model).

    Returns:
        The device.
    """
    first = next(iter(model.parameters()), None)
    return inputs.device if first is None else first.device


def _resolve_run(options: SUIOptions, recipe: TrainingRecipe, f0: Tensor) -> ScoringRun:
    """Every sentinel of the options resolved: the recipe's rule, the NTK, the space.

    Returns:
        The :class:`ScoringRun`.
    """
    n, k = f0.shape
    lr, wd, steps = recipe.replay(
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        num_steps=options.num_steps,
    )
    space = _space(options, f0.numel(), steps, wd)
    return ScoringRun(n, lr, steps, wd, options.resolve_ntk(n, k), space)


def _space(options: SUIOptions, num_rows: int, steps: int | None, wd: float | str) -> str:
    """Where the algebra runs (``space="auto"``: see :func:`smooth_unique_information`).

    Returns:
        ``"features"`` or ``"kernel"``.

    Raises:
        ValueError: ``space="features"`` with a leave-one-out weight decay.
    """
    if options.space == "features":
        if wd == LOO:
            raise ValueError(
                "`weight_decay='loo'` chooses the weight decay on the N·K kernel; use "
                "`space='kernel'` or 'auto', or give a number."
            )
        return "features"
    dim = options.projection_dim
    use = (
        options.space == "auto"
        and dim is not None
        and num_rows > dim
        and (steps is None or options.method == SUIMethod.RIDGE)
        and wd != LOO
        and (float(wd) > 0 or steps is not None)
    )
    return "features" if use else "kernel"


def _planned_kernels(
    theta: Tensor,
    theta_val: Tensor | None,
    f0: Tensor,
    targets: Tensor,
    run: ScoringRun,
    options: SUIOptions,
) -> UniqueInformation:
    """:func:`unique_information_with_plan` on the NTKs.

    Returns:
        The scores with their plan.
    """
    return unique_information_with_plan(
        theta,
        theta_val,
        f0,
        targets,
        learning_rate=run.learning_rate,
        num_steps=run.num_steps,
        weight_decay=run.weight_decay,  # type: ignore[arg-type]
        method=options.method,
        max_replay_cost=options.replay_max_cost,
        noise_scale=options.noise_scale,
        ridge_c=options.ridge_c,
        memory_limit_bytes=options.memory_limit_bytes,
    )


def _planned_features(
    phi: Tensor,
    phi_val: Tensor | None,
    f0: Tensor,
    targets: Tensor,
    run: ScoringRun,
    options: SUIOptions,
) -> UniqueInformation:
    """λ_max of the features' kernel, the plan, :func:`unique_information_from_features`.

    Returns:
        The scores with their plan.
    """
    n, k = f0.shape
    trace = run.ntk == "trace" and k > 1

    def solve(plan: GradientDescentPlan) -> UniqueInformation:
        return unique_information_from_features(
            phi,
            phi_val,
            f0,
            targets,
            learning_rate=plan.learning_rate,
            num_steps=plan.num_steps,
            weight_decay=plan.weight_decay,
            method=plan.method,
            ntk=run.ntk,
            noise_scale=options.noise_scale,
            ridge_c=options.ridge_c,
        )

    # feature space has no exact replay: "auto" means its ridge equivalent here
    method = SUIMethod.RIDGE if options.method == SUIMethod.AUTO else options.method
    lambda_max = float(torch.linalg.eigvalsh(_rows_gram(phi, trace)).max())
    return _replay(
        lambda_max,
        solve,
        (n, k, trace),
        (run.learning_rate, run.num_steps, float(run.weight_decay), method),
        options.replay_max_cost,
    )


def smooth_unique_information(
    model: nn.Module,
    train_inputs: Tensor,
    train_targets: Tensor,
    heldout_inputs: Tensor | None = None,
    *,
    learning_rate: float,
    num_steps: int | None = None,
    weight_decay: float | Literal["auto", "loo"] = 0.0,
    noise_scale: float = 1.0,
    method: SUIMethod | str = "replay",
    ridge_c: float = 0.5,
    ntk: NTKKind | Literal["auto"] = "full",
    full_ntk_max: int = 2000,
    replay_max_cost: float = DEFAULT_MAX_REPLAY_COST,
    params: ParamSelection = None,
    projection_dim: int | None = None,
    projection: ProjectionType = "gaussian",
    space: SUISpace = "auto",
    chunk_size: int | None = None,
    seed: int = 0,
    memory_budget_bytes: int = _DEFAULT_BUDGET,
    output_fn: Callable[[Any], Tensor] | None = None,
    memory_limit_bytes: int | None = None,
) -> UniqueInformation:
    r"""Score every training sample's smooth unique information about the weights and function.

    Harutyunyan et al. (2021, arXiv:2101.06640): linearize ``model`` at its current parameters
    :math:`w_0`, train the linearized model with full-batch GD on the mean MSE loss
    (``learning_rate``, ``num_steps``, ``weight_decay`` toward :math:`w_0`), and compare with the
    run without each sample (principal-submatrix convention, see the module docstring):

    .. math::

        \mathrm{SI}_i = \frac{\lVert w_S - w_{S \setminus i} \rVert^2}{2\sigma^2}, \qquad
        \text{F-SI}_i = \frac{1}{2\sigma^2}\,\mathrm{mean}_{x \in X^*}
            \lVert f_S(x) - f_{S\setminus i}(x) \rVert^2 .

    This is the callback's pipeline (:func:`score_model`, the same code): the run is replayed as
    :func:`~lightning_info.functional.gd_plan.plan_gradient_descent` decides, exactly as the
    :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback does: a learning rate beyond the linearized stability limit is lowered to 0.9 of it with the
    steps raised to keep the optimization time, and the converged solution of a singular kernel
    without weight decay gets a tiny ridge; each such change is warned about and recorded in the
    result's ``plan``.

    The model is evaluated in eval mode; outputs must be (B,) or (B, K) raw outputs (MSE on
    logits: integer labels become one-hot for K > 1, 0/1 for K = 1). ``space`` says where the
    algebra runs: ``"features"``, the d-dimensional feature space
    (:func:`unique_information_from_features`, linear in N), or ``"kernel"``, the N·K sample
    space. ``"auto"`` uses the feature space when ``projection_dim`` is set, N K >
    ``projection_dim``, the method does not need the finite-t replay and the weight decay is a
    number (``"loo"`` needs the kernel); otherwise it builds
    the NTKs (:func:`~lightning_info.functional.jacobian.empirical_ntk`) and calls
    :func:`unique_information_from_kernels`.

    Args:
        model: network at the linearization point (initial or pretrained weights).
        train_inputs: (N, ...) training inputs.
        train_targets: (N, K) float targets or (N,) integer labels.
        heldout_inputs: (M, ...) inputs for F-SI, or None (then no F-SI).
        learning_rate: lr > 0 of the mean-loss GD.
        num_steps: GD steps t >= 1, or None for t = ∞ (converged).
        weight_decay: wd >= 0, L2 pull toward :math:`w_0`; ``"loo"``: chosen by leave-one-out
            cross-validation of the converged run (:func:`loo_weight_decay`, needs
            ``num_steps=None``); ``"auto"``: ``"loo"`` for ``num_steps=None``, else 0.
        noise_scale: σ > 0 of the smoothing noise.
        method: a :class:`~lightning_info.utilities.enums.SUIMethod`: ``"replay"``, ``"ridge"``
            (finite t only) or ``"auto"`` (replay when its estimated cost is at most
            ``replay_max_cost`` flops, else ridge).
        ridge_c: c of the ridge approximation.
        ntk: which NTK, ``"full"`` (N K x N K), ``"trace"`` (N x N shared by the K outputs) or
            ``"auto"`` (full when N·K <= ``full_ntk_max`` or K = 1, else trace).
        full_ntk_max: largest N·K for which ``ntk="auto"`` uses the full NTK.
        replay_max_cost: flop budget of the exact replay under ``method="auto"``.
        params: which parameters to linearize (None = all trainable; a prefix or list of names).
        projection_dim: random-projection dimension d of the Jacobians, or None (exact kernel).
        projection: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"`` (Kronecker-factored
            rows for ``nn.Conv2d`` / ``nn.Linear`` weights: far cheaper on convolutional
            networks, higher variance at the same d; see
            :func:`~lightning_info.functional.jacobian.jacobian_features`).
        space: ``"auto"``, ``"kernel"`` (N·K sample space) or ``"features"`` (d-dimensional
            feature space).
        chunk_size: samples per Jacobian vmap call.
        seed: seed of the projection.
        memory_budget_bytes: bound on stored Jacobians / projection blocks.
        output_fn: maps the model's raw output (a tuple, a dict, ...) to the (B,) or (B, K)
            tensor to linearize, e.g. ``lambda out: out["logits"]``; None: the model returns it.
        memory_limit_bytes: refusal threshold of the finite-t replay's up-front memory guard
            (see :func:`unique_information_from_kernels`; the horizon checked is the planned
            one, after a learning rate beyond the stability limit raised the steps), or None for
            the default 8 GiB.

    Returns:
        :class:`UniqueInformation` (float64, nats; higher = more informative), with the
        :class:`~lightning_info.functional.gd_plan.GradientDescentPlan` that was replayed.

    Raises:
        ValueError: unsupported model outputs, mismatched lengths, non-finite values, invalid
            options, or a kernel with negative eigenvalues beyond round-off.
        TypeError: non-tensor inputs.
        MemoryBudgetError: (a ``MemoryError``) before the replay allocates, when its estimated
            peak exceeds ``memory_limit_bytes``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x = torch.randn(8, 2)
        >>> out = smooth_unique_information(model, x, (x[:, 0] > 0).long(), x[:4] + 0.1,
        ...                                 learning_rate=0.5, weight_decay=0.01)
        >>> out.weight_si.shape, out.functional_si.shape
        (torch.Size([8]), torch.Size([8]))
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    learning_rate = _check_positive(learning_rate, "learning_rate")
    if weight_decay is None or weight_decay == OPTIMIZER or num_steps == AUTO:
        raise ValueError(
            "smooth_unique_information has no training run to read: `weight_decay` must be a "
            "number >= 0, 'auto' or 'loo', and `num_steps` an int >= 1 or None; got "
            f"weight_decay={weight_decay!r}, num_steps={num_steps!r}."
        )
    tgt = _check_model_inputs(train_inputs, train_targets, heldout_inputs)
    options = SUIOptions(
        learning_rate=learning_rate,
        num_steps=num_steps,
        weight_decay=weight_decay,
        method=method,
        noise_scale=noise_scale,
        ridge_c=ridge_c,
        replay_max_cost=replay_max_cost,
        ntk=ntk,
        full_ntk_max=full_ntk_max,
        space=space,
        params=params,
        projection_dim=projection_dim,
        projection=projection,
        seed=seed,
        chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes,
        output_fn=output_fn,
        memory_limit_bytes=memory_limit_bytes,
    )
    info, _ = score_model(model, train_inputs, tgt, heldout_inputs, options)
    for _, note in info.plan.notes if info.plan is not None else ():
        warnings.warn(f"smooth_unique_information: {note}", UserWarning, stacklevel=2)
    return info


def _initial_outputs(
    model: nn.Module, x: Tensor, chunk_size: int | None, output_fn: Callable[[Any], Tensor] | None
) -> Tensor:
    """The model's outputs :math:`f_0` on the training inputs, checked (shape, finite).

    Returns:
        (N, K) outputs.
    """
    f0 = model_outputs(model, x, chunk_size=chunk_size, output_fn=output_fn)
    _check_outputs(f0, x.shape[0])
    _check_finite(f0, "model outputs")
    return f0


def _check_model_inputs(train_inputs: Any, train_targets: Any, heldout_inputs: Any) -> Tensor:
    """Type, length and finiteness checks of the model-level inputs.

    Returns:
        The targets as a tensor.

    Raises:
        TypeError: non-tensor inputs.
        ValueError: mismatched lengths or non-finite inputs.
    """
    if not isinstance(train_inputs, Tensor):
        raise TypeError(
            f"`train_inputs` must be a torch.Tensor; got {type(train_inputs).__name__}."
        )
    if heldout_inputs is not None and not isinstance(heldout_inputs, Tensor):
        raise TypeError(
            f"`heldout_inputs` must be a torch.Tensor; got {type(heldout_inputs).__name__}."
        )
    tgt = _as_tensor(train_targets, "train_targets")
    if tgt.shape[0] != train_inputs.shape[0]:
        raise ValueError(
            f"`train_inputs` and `train_targets` must have the same number of samples; "
            f"got {train_inputs.shape[0]} and {tgt.shape[0]}."
        )
    if train_inputs.is_floating_point():
        _check_finite(train_inputs, "train_inputs")
    if heldout_inputs is not None and heldout_inputs.is_floating_point():
        _check_finite(heldout_inputs, "heldout_inputs")
    return tgt


def _replay(
    lambda_max: float,
    solve: Callable[[GradientDescentPlan], UniqueInformation],
    shape: tuple[int, int, bool],
    run: tuple[float, int | None, float, SUIMethod | str],
    max_replay_cost: float = DEFAULT_MAX_REPLAY_COST,
) -> UniqueInformation:
    """Plan the replay for a kernel with ``lambda_max`` = λ_max(Θ), solve, attach the plan.

    Args:
        lambda_max: λ_max of the kernel the engine uses.
        solve: the engine call, given the plan.
        shape: ``(N, K, trace)``.
        run: ``(learning_rate, num_steps, weight_decay, method)`` asked for.
        max_replay_cost: flop budget of the exact replay under ``method="auto"``.

    Returns:
        ``solve``'s :class:`UniqueInformation` with the plan it was given (after a jitter retry).
    """
    n, k, trace = shape
    lr, steps, wd, method = run
    plan = plan_gradient_descent(
        lambda_max + n * wd,
        n,
        learning_rate=lr,
        num_steps=steps,
        weight_decay=wd,
        method=method,
        max_replay_cost=max_replay_cost,
        rows_per_sample=1 if trace else k,
        right_hand_sides=k if trace else 1,
    )
    info, plan = solve_planned(solve, plan, n)
    return dataclasses.replace(info, plan=plan)


#: Candidate ridges of :func:`loo_weight_decay`: kappa times the mean eigenvalue of the kernel.
LOO_GRID: tuple[float, ...] = tuple(float(10.0 ** (e / 4)) for e in range(-24, 5))


def loo_weight_decay(
    ntk: Tensor, init_outputs: Tensor, targets: Tensor, *, grid: tuple[float, ...] = LOO_GRID
) -> float:
    r"""Choose the weight decay of the converged linearized run by leave-one-out cross-validation.

    For each candidate :math:`\lambda = \kappa\,\bar\mu` (:math:`\bar\mu` the mean eigenvalue of
    the kernel the engine uses, :math:`\kappa` in ``grid``; default 29 values from 1e-6 to 10,
    four per decade), the converged solution :math:`A = \Theta + \lambda I` predicts every
    sample from all the others with the exact leave-one-out residual
    :math:`v_i = F_{B_i B_i}^{-1}(F r)_{B_i}` (:math:`F = A^{-1}`, ``docs/sui.md`` §5); the
    :math:`\lambda` with the smallest mean :math:`\lVert v_i\rVert^2` wins. One eigendecomposition
    serves every candidate. Scale-free: rescaling the kernel rescales the chosen
    :math:`\lambda` with it. Noisy labels make it choose more smoothing
    (``benchmarks/RESULTS.md`` section 10).

    Args:
        ntk: (N K, N K) full or (N, N) trace kernel.
        init_outputs: (N, K) or (N,) outputs at the linearization point.
        targets: (N, K) float targets or (N,) integer labels.
        grid: candidate :math:`\kappa` values, > 0.

    Returns:
        The weight decay :math:`\lambda^* / N` of the mean-loss convention.

    Raises:
        ValueError: on invalid inputs (as :func:`unique_information_from_kernels`) or an empty or
            non-positive ``grid``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> jac = torch.randn(30, 5, generator=g, dtype=torch.float64)
        >>> y = (jac[:, 0] > 0).long()
        >>> loo_weight_decay(jac @ jac.T, torch.zeros(30), y) > 0
        True
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    if not grid or min(grid) <= 0:
        raise ValueError(f"`grid` must hold positive values; got {grid!r}.")
    problem = _Problem.build(
        init_outputs, targets, learning_rate=1.0, num_steps=None, weight_decay=0.0,
        noise_scale=1.0, method="replay", ridge_c=0.5,
    )  # fmt: skip
    theta, _, trace = _kernels(ntk, None, problem)
    r, kb = problem.residuals(trace)
    mu, u = torch.linalg.eigh(theta)
    mean_mu = float(mu.clamp_min(0).mean())
    u_blocks = u.view(problem.num_samples, kb, -1)
    r_hat = u.T @ r
    errors = []
    for kappa in grid:
        inv = 1.0 / (mu.clamp_min(0) + kappa * mean_mu)
        alpha = (u @ (inv[:, None] * r_hat)).view(problem.num_samples, kb, -1)
        f_bb = torch.einsum("ikj,ilj->ikl", u_blocks * inv, u_blocks)  # F_BB for every sample
        v = torch.linalg.solve(f_bb, alpha)
        errors.append(float(v.square().sum((1, 2)).mean()))
    best = grid[min(range(len(grid)), key=errors.__getitem__)]
    return best * mean_mu / problem.num_samples


def unique_information_with_plan(
    ntk: Tensor,
    heldout_ntk: Tensor | None,
    init_outputs: Tensor,
    targets: Tensor,
    *,
    learning_rate: float,
    num_steps: int | None = None,
    weight_decay: float | Literal["loo"] = 0.0,
    method: SUIMethod | str = SUIMethod.AUTO,
    max_replay_cost: float = DEFAULT_MAX_REPLAY_COST,
    noise_scale: float = 1.0,
    ridge_c: float = 0.5,
    memory_limit_bytes: int | None = None,
) -> UniqueInformation:
    """Replay a training run on precomputed NTKs as :func:`~lightning_info.functional.gd_plan.plan_gradient_descent` decides.

    :func:`unique_information_from_kernels` replays exactly the run it is given and rejects an
    unstable learning rate; this function first plans the run (a learning rate beyond the
    linearized stability limit lowered to 0.9 of it with the steps raised to keep the
    optimization time; ``method="auto"``: the finite horizon replayed exactly within
    ``max_replay_cost`` flops, else the ridge equivalent; a tiny ridge for a singular kernel at t = ∞), then solves.
    The kernel-space step of :func:`score_model` (:func:`smooth_unique_information` and the
    :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback).

    Args:
        ntk: (N K, N K) full or (N, N) trace kernel.
        heldout_ntk: held-out/train kernel, or None.
        init_outputs: (N, K) or (N,) outputs at the linearization point.
        targets: (N, K) float targets or (N,) integer labels.
        learning_rate: lr of the run, > 0.
        num_steps: its steps, or None for the converged solution.
        weight_decay: its weight decay, >= 0, or ``"loo"``: the weight decay of the converged
            solution chosen by leave-one-out cross-validation (:func:`loo_weight_decay`; needs
            ``num_steps=None``); the plan records the value.
        method: ``"auto"``, ``"replay"`` or ``"ridge"``.
        max_replay_cost: flop budget of the finite-horizon replay under ``"auto"``.
        noise_scale: σ > 0.
        ridge_c: c of the ridge approximation.
        memory_limit_bytes: refusal threshold of the finite-t replay's up-front memory guard
            (applied to the planned horizon), or None for the default 8 GiB.

    Returns:
        :class:`UniqueInformation` with the plan that was replayed (its ``notes`` say what was
        changed; callers show them as warnings).

    Raises:
        ValueError: as :func:`unique_information_from_kernels`, except for an unstable learning
            rate or a singular kernel at t = ∞ without weight decay, which are planned away.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> jac = torch.randn(6, 3, generator=g, dtype=torch.float64)
        >>> out = unique_information_with_plan(jac @ jac.T, None, torch.zeros(6),
        ...     torch.tensor([0, 1, 0, 1, 1, 0]), learning_rate=100.0, num_steps=10)
        >>> out.plan.rescaled, out.plan.num_steps > 10
        (True, True)
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    f0 = _as_tensor(init_outputs, "init_outputs", allow_int=False)
    ntk = _as_tensor(ntk, "ntk", allow_int=False)  # detached: no result keeps the input's graph
    n, k = f0.shape[0], (1 if f0.ndim == 1 else f0.shape[1])
    if weight_decay == LOO:
        if num_steps is not None:
            raise ValueError(
                "`weight_decay='loo'` chooses the weight decay of the converged solution; pass "
                f"`num_steps=None` (got {num_steps}) or a number."
            )
        weight_decay = loo_weight_decay(ntk, init_outputs, targets)
    trace = k > 1 and tuple(ntk.shape) == (n, n)
    used = ntk / k if trace else ntk  # the trace kernel is used as Θ/K ⊗ I

    def solve(plan: GradientDescentPlan) -> UniqueInformation:
        return unique_information_from_kernels(
            ntk,
            heldout_ntk,
            init_outputs,
            targets,
            learning_rate=plan.learning_rate,
            num_steps=plan.num_steps,
            weight_decay=plan.weight_decay,
            method=plan.method,
            noise_scale=noise_scale,
            ridge_c=ridge_c,
            memory_limit_bytes=memory_limit_bytes,
        )

    run = (learning_rate, num_steps, weight_decay, method)
    return _replay(kernel_lambda_max(used, n, 0.0), solve, (n, k, trace), run, max_replay_cost)
