r"""Smooth unique information (SUI) of every training sample, in closed form.

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
O(wd/N) and rank-irrelevant (docs/sui.md §3: max relative error 2.5e-3, Spearman 0.99998 at
wd = 5e-3, N = 100). With wd = 0 both conventions coincide.

Scores, with :math:`\delta_i = \mathrm{pad}_i(a^{(-i)}_t) - a_t` (:math:`\Delta = ` new − old,
"new" = trained without sample i) and noise scale σ:

.. math::

    \lVert \Delta w_i \rVert^2 = \delta_i^\top \Theta \delta_i, \quad
    \mathrm{SI}_i = \frac{\lVert \Delta w_i \rVert^2}{2\sigma^2}, \quad
    \text{F-SI}_i = \frac{1}{2\sigma^2 M} \sum_{m=1}^{M}
        \lVert \Theta(x^*_m, S)\, \delta_i \rVert^2 .
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lightning_info.functional.jacobian import (
    ParamSelection,
    ProjectionType,
    _check_outputs,
    empirical_ntk,
    jacobian_features,
    model_outputs,
)
from lightning_info.utilities.checks import (
    _as_tensor,
    _check_choice,
    _check_finite,
    _check_int,
    _check_ndim,
    _check_positive,
)

__all__ = [
    "UniqueInformation",
    "smooth_unique_information",
    "unique_information_from_features",
    "unique_information_from_kernels",
]

SUIMethod = Literal["exact", "ridge"]
SUIKernel = Literal["full", "trace"]
SUISolver = Literal["auto", "kernel", "features"]

_METHODS = ("exact", "ridge")
_KERNELS = ("full", "trace")
_SOLVERS = ("auto", "kernel", "features")
_DEFAULT_BUDGET = 2**30


@dataclass(frozen=True)
class UniqueInformation:
    """Per-sample smooth unique information, every field in input order.

    Attributes:
        weight_si: (N,) weight SI :math:`\\lVert\\Delta w\\rVert^2 / (2\\sigma^2)`, nats; higher =
            more informative about the weights.
        functional_si: (N,) functional SI :math:`\\mathrm{mean}_x \\lVert\\Delta f(x)\\rVert^2 /
            (2\\sigma^2)` over the held-out inputs, nats; higher = more informative about the
            function. ``None`` when no held-out inputs/kernel were given.
        weight_change_sq: (N,) raw :math:`\\lVert\\Delta w\\rVert^2` (the authors' ``weights-plain``).
        function_change_sq: (N,) raw :math:`\\mathrm{mean}_x \\sum_k \\Delta f_k(x)^2` (the
            authors' ``predictions``), or ``None`` without held-out inputs.
        self_prediction_change: (N, K) :math:`f_{S\\setminus i}(x_i) - f_S(x_i)`, the leave-one-out
            change of the sample's own prediction (raw outputs).
    """

    weight_si: Tensor
    functional_si: Tensor | None
    weight_change_sq: Tensor
    function_change_sq: Tensor | None
    self_prediction_change: Tensor


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def _prepare_targets(targets: Tensor, num_samples: int, num_outputs: int) -> Tensor:
    """Return (N, K) float64 targets from float targets or integer class labels."""
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
    ntk = _as_tensor(ntk, name, allow_int=False)
    _check_ndim(ntk, name, (2,), hint)
    if tuple(ntk.shape) != (rows, cols):
        raise ValueError(
            f"`{name}` must have shape {(rows, cols)} ({hint}); got {tuple(ntk.shape)}."
        )
    _check_finite(ntk, name)
    return ntk.double()


def _hyper(
    num_samples: int,
    learning_rate: float,
    num_steps: int | None,
    weight_decay: float,
    noise_scale: float,
    method: str,
    ridge_c: float,
) -> tuple[float, int | None, float, float, str, float]:
    lr = _check_positive(learning_rate, "learning_rate")
    t = _check_int(num_steps, "num_steps", minimum=1, allow_none=True)
    wd = _check_positive(weight_decay, "weight_decay", allow_zero=True)
    sigma = _check_positive(noise_scale, "noise_scale")
    method = _check_choice(method, "method", _METHODS)
    c = _check_positive(ridge_c, "ridge_c")
    if num_samples < 2:
        raise ValueError(f"leave-one-out needs at least 2 training samples; got N = {num_samples}.")
    return lr, t, wd, sigma, method, c


def _check_stable(lam_max: float, lr: float, n: int, what: str) -> None:
    """Raise unless GD with η = lr/N is stable: η λ_max(A) < 2."""
    eta = lr / n
    if eta * lam_max >= 2.0:
        raise ValueError(
            f"`learning_rate` = {lr:g} is too large for gradient descent on the linearized model "
            f"to converge: η·λ_max(A) = (lr/N)·λ_max = {eta * lam_max:.4g} >= 2 ({what}). "
            f"The max stable learning_rate is 2N/λ_max = {2.0 * n / lam_max:.6g}."
        )


def _power_lambda_max(a: Tensor, iters: int = 60) -> float:
    """Deterministic power-iteration estimate (a lower bound) of λ_max of a symmetric PSD matrix."""
    v = torch.ones(a.shape[0], dtype=a.dtype, device=a.device)
    v = v + torch.linspace(0, 1, a.shape[0], dtype=a.dtype, device=a.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = a @ v
        lam = float(v @ w)
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return lam


def _not_pd_error(weight_decay: float) -> ValueError:
    if weight_decay == 0:
        return ValueError(
            "`ntk` is not positive definite (singular or numerically rank-deficient), so with "
            "`num_steps=None` (t = ∞) and `weight_decay=0` the converged leave-one-out solutions are "
            "not unique. Use `weight_decay > 0` or a finite `num_steps`."
        )
    return ValueError(
        "`ntk` + N·weight_decay·I is not positive definite: the kernel has negative eigenvalues "
        "beyond round-off. Compute it in float64 from the Jacobians, or increase `weight_decay`."
    )


# ----------------------------------------------------------------------------------------------
# kernel algebra. Shapes: n = N*Kb rows (Kb = K for the full kernel, 1 for the trace kernel),
# r is (n, R) with R = 1 (full) or K (trace: the K outputs share the kernel).
# ----------------------------------------------------------------------------------------------
def _diag_blocks(mat: Tensor, n_samples: int, kb: int) -> Tensor:
    """(N*Kb, N*Kb) -> (N, Kb, Kb) diagonal blocks."""
    return mat.view(n_samples, kb, n_samples, kb).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _infinite(
    theta: Tensor, theta_star: Tensor | None, r: Tensor, lam: float, kb: int, wd: float
) -> tuple[Tensor, Tensor | None, Tensor]:
    """t = ∞ block-inverse closed forms (docs/sui.md §5), vectorized over samples."""
    n = theta.shape[0]
    n_samples = n // kb
    a = theta + lam * torch.eye(n, dtype=theta.dtype, device=theta.device)
    chol, info = torch.linalg.cholesky_ex(a)
    diag = chol.diagonal()
    if int(info) != 0 or float((diag.min() / diag.max()) ** 2) < 1e-13:
        raise _not_pd_error(wd)
    f = torch.cholesky_inverse(chol)  # F = A^{-1}
    alpha = f @ r  # (n, R)
    alpha_b = alpha.view(n_samples, kb, -1)
    v = torch.linalg.solve(_diag_blocks(f, n_samples, kb), alpha_b)  # v_i = F_BB^{-1} α_B
    w_sq = (alpha_b * v).sum((1, 2))
    if lam > 0:  # ||Δw||² = α_Bᵀv − λ vᵀ (F²)_BB v
        fcols = f.view(n, n_samples, kb)
        f2_bb = torch.einsum("rik,ril->ikl", fcols, fcols)
        w_sq = w_sq - lam * torch.einsum("ikr,ikl,ilr->i", v, f2_bb, v)
    self_change = v - lam * alpha_b  # Δf(x_i) = v_i − λ α_B
    f_sq = None
    if theta_star is not None:  # Δf(X*) = G[:, B] v_i with G = Θ* F
        m = theta_star.shape[0] // kb
        g = (theta_star @ f).view(-1, n_samples, kb)
        h_bb = torch.einsum("mik,mil->ikl", g, g)
        f_sq = torch.einsum("ikr,ikl,ilr->i", v, h_bb, v) / m
    return w_sq.clamp_min(0), f_sq, self_change


def _horizon(lam: Tensor, eta: float, steps: Tensor) -> Tensor:
    """g_s(λ) = (1 − (1 − ηλ)^s)/λ (= η Σ_{m<s} (1−ηλ)^m), stable; λ (n,), steps (T,) -> (n, T)."""
    lam_c = lam[:, None]
    s = steps[None, :].to(lam.dtype)
    x = eta * lam_c
    mu = 1.0 - x
    pos = mu > 0
    g_pos = -torch.expm1(s * torch.log1p(-torch.where(pos, x, torch.zeros_like(x))))
    g_neg = 1.0 - mu**s
    num = torch.where(pos, g_pos, g_neg)
    small = lam_c.abs() < 1e-300
    return torch.where(small, eta * s, num / torch.where(small, torch.ones_like(lam_c), lam_c))


def _series_mul(a: Tensor, b: Tensor, length: int) -> Tensor:
    """First ``length`` terms of the causal convolution of matrix series (c, La, p, q) * (c, Lb, q, r)."""
    size = a.shape[1] + b.shape[1] - 1
    nfft = 1 << max(0, (size - 1).bit_length())
    fa, fb = torch.fft.rfft(a, n=nfft, dim=1), torch.fft.rfft(b, n=nfft, dim=1)
    if a.shape[-1] == 1:  # 1 x 1 blocks: elementwise
        prod = fa * fb
    else:  # complex block products as real batched matmuls (faster than complex bmm on CPU)
        ar, ai, br, bi = fa.real, fa.imag, fb.real, fb.imag
        prod = torch.complex(ar @ br - ai @ bi, ar @ bi + ai @ br)
    return torch.fft.irfft(prod, n=nfft, dim=1)[:, :length]


def _series_inverse(h: Tensor) -> Tensor:
    """Power-series inverse G of a matrix series H with H_0 = I, modulo z^T: (c, T, K, K).

    Newton iteration G <- G (2I - H G), doubling the number of correct terms each step.
    """
    c_n, t, kb, _ = h.shape
    eye = torch.eye(kb, dtype=h.dtype, device=h.device)
    g = eye.expand(c_n, 1, kb, kb).clone()
    k = 1
    while k < t:
        k2 = min(2 * k, t)
        e = -_series_mul(h[:, :k2], g, k2)
        e[:, 0] += 2 * eye
        g = _series_mul(g, e, k2)
        k = k2
    return g


def _finite_exact(
    theta: Tensor,
    theta_star: Tensor | None,
    r: Tensor,
    lam: float,
    kb: int,
    lr: float,
    t: int,
    progress: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    r"""Exact finite-t leave-one-out for all samples (one eigendecomposition + a Volterra solve).

    The run without sample i is the full-space recursion with block B_i pinned to zero,
    :math:`a_{s+1} = a_s - \eta'(A a_s + r) + \eta' E_B c_s`, :math:`c_s = (A a_s + r)_B`. Writing
    it through the unconstrained run :math:`\bar a_s` (step η') gives the K-dimensional lower
    triangular Toeplitz system :math:`0 = \bar a_{s+1,B} + \eta' \sum_{q \le s} h_{s-q} c_q` with
    :math:`h_m = [(I - \eta' A)^m]_{BB}` (from the eigendecomposition of A), solved for all
    samples at once with the power-series inverse of :math:`\sum_m h_m z^m` (Newton iteration,
    FFT products; h_0 = I); then :math:`a^{(-i)}_t = \bar a_t + \eta' \sum_s
    (I-\eta'A)^{t-1-s} E_B c_s`. Cost O(n^3 + t N n Kb^2 + N t log t Kb^3).
    """
    n = theta.shape[0]
    n_samples = n // kb
    n_rhs = r.shape[1]
    eta, eta1 = lr / n_samples, lr / (n_samples - 1)
    a_mat = theta + lam * torch.eye(n, dtype=theta.dtype, device=theta.device)
    evals, u = torch.linalg.eigh(a_mat)
    _check_stable(float(evals.max()), lr, n_samples, "exact eigenvalue")
    r_hat = u.T @ r  # (n, R)
    steps = torch.arange(1, t + 1, device=theta.device)
    g1 = _horizon(evals, eta1, steps)  # (n, t): g_s for s = 1..t, step η'
    a_full = -_horizon(evals, eta, steps[-1:])[:, 0:1] * r_hat  # â_t of the full run (η)
    a_bar = -g1[:, -1:] * r_hat  # â_t of the unconstrained run with η'
    mu1 = 1.0 - eta1 * evals
    powers = mu1[:, None] ** torch.arange(t, device=theta.device, dtype=theta.dtype)[None, :]
    rev_powers = powers.flip(1)  # (n, t): column s = μ^{t-1-s}
    u_b = u.view(n_samples, kb, n)
    g_star = theta_star @ u if theta_star is not None else None
    shifted = evals - lam  # eigenvalues of Θ in the same basis

    w_sq = torch.empty(n_samples, dtype=theta.dtype, device=theta.device)
    f_sq = torch.empty_like(w_sq) if theta_star is not None else None
    self_change = torch.empty(n_samples, kb, n_rhs, dtype=theta.dtype, device=theta.device)
    # float64 elements per sample: h, series inverse and FFT buffers (~12 t Kb²), b and c, y, δ̂
    per_sample = 12 * kb * kb * t + 6 * kb * n_rhs * t + kb * n_rhs * n + n * n_rhs + kb * kb * n
    chunk = max(1, min(n_samples, int(4e7 // max(1, per_sample))))
    bar = tqdm(total=n_samples, disable=not progress, desc="SUI leave-one-out (exact, finite t)")
    for i0 in range(0, n_samples, chunk):
        ub = u_b[i0 : i0 + chunk]  # (c, Kb, n)
        c_n = ub.shape[0]
        # h_m = U_B diag(μ^m) U_Bᵀ for m = 0..t-1 (h_0 = I): (c, t, Kb, Kb)
        outer = (ub[:, :, None, :] * ub[:, None, :, :]).reshape(c_n * kb * kb, n)
        h = (outer @ powers).view(c_n, kb, kb, t).permute(0, 3, 1, 2)
        # b_s = (ā_s)_B for s = 1..t, i.e. -U_B diag(g_s) r̂: (c, t, Kb, R)
        weighted = (g1[:, :, None] * r_hat[:, None, :]).reshape(n, t * n_rhs)
        bvals = -(ub.reshape(c_n * kb, n) @ weighted).view(c_n, kb, t, n_rhs).transpose(1, 2)
        # Σ_{q<=s} h_{s-q} c_q = -b_{s+1}/η': lower-triangular block-Toeplitz system, solved
        # with the power-series inverse of h (Newton iteration, FFT products): O(t log t)
        coef = _series_mul(_series_inverse(h), -bvals / eta1, t)
        # a^{(-i)}_t in the eigenbasis: ā_t + η' Σ_s μ^{t-1-s} U_Bᵀ c_s
        y = (coef.permute(0, 2, 3, 1).reshape(c_n * kb * n_rhs, t) @ rev_powers.T).view(
            c_n, kb, n_rhs, n
        )
        q = (ub[:, :, None, :] * y).sum(1).transpose(1, 2)  # (c, n, R)
        delta = (a_bar - a_full)[None] + eta1 * q  # (c, n, R) δ̂ = Uᵀ δ
        w_sq[i0 : i0 + c_n] = (shifted[None, :, None] * delta**2).sum((1, 2))
        self_change[i0 : i0 + c_n] = torch.einsum(
            "ikj,ijr->ikr", ub, shifted[None, :, None] * delta
        )
        if g_star is not None and f_sq is not None:
            m = g_star.shape[0] // kb
            f_sq[i0 : i0 + c_n] = torch.einsum("mj,ijr->imr", g_star, delta).pow(2).sum((1, 2)) / m
        bar.update(c_n)
    bar.close()
    return w_sq.clamp_min(0), f_sq, self_change


#: Bound on the per-chunk (samples, d, R) temporaries of the feature-space closed forms.
_FEATURE_CHUNK_BYTES = 256 * 2**20


def _features(
    phi: Tensor, phi_star: Tensor | None, r: Tensor, lam: float, kb: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    r"""t = ∞ closed forms in feature space (Woodbury), A = ΦΦᵀ + λI, cost linear in N.

    With :math:`C = \Phi^\top\Phi + \lambda I_d` and :math:`Z = C^{-1}\Phi^\top`:
    :math:`F r = (r - \Phi Z r)/\lambda`, :math:`F_{BB} = (I - \Phi_B Z_B)/\lambda`,
    :math:`\Phi^\top \delta_i = Z_B v_i` so :math:`\lVert\Delta w\rVert^2 = \lVert Z_B v_i\rVert^2`
    and :math:`\Delta f(X^*) = \Phi^* Z_B v_i`.
    """
    n, d = phi.shape
    n_samples = n // kb
    c_mat = phi.T @ phi + lam * torch.eye(d, dtype=phi.dtype, device=phi.device)
    chol, info = torch.linalg.cholesky_ex(c_mat)
    if int(info) != 0:
        raise _not_pd_error(1.0)
    z = torch.cholesky_solve(phi.T, chol)  # (d, n)
    alpha = (r - phi @ (z @ r)) / lam
    phi_b = phi.view(n_samples, kb, d)
    z_b = z.view(d, n_samples, kb).permute(1, 0, 2)  # (N, d, Kb)
    eye = torch.eye(kb, dtype=phi.dtype, device=phi.device)
    alpha_b = alpha.view(n_samples, kb, -1)
    # ||Φ* Δw||² = ||R* Δw||² with Φ* = Q R*: a factor with min(d, rows of Φ*) rows
    star = None
    if phi_star is not None:
        star = phi_star if phi_star.shape[0] <= d else torch.linalg.qr(phi_star, mode="r")[1]
    # samples in chunks so that the (chunk, d, R) projected Δw stays below _FEATURE_CHUNK_BYTES
    width = d * max(kb, alpha_b.shape[2])
    step = max(1, _FEATURE_CHUNK_BYTES // (phi.element_size() * width))
    w_parts, f_parts, v_parts = [], [], []
    for a in range(0, n_samples, step):
        zc = z_b[a : a + step]
        v = torch.linalg.solve((eye - phi_b[a : a + step] @ zc) / lam, alpha_b[a : a + step])
        dw = zc @ v  # (chunk, d, R): projected Δw
        w_parts.append(dw.pow(2).sum((1, 2)))
        if star is not None:
            f_parts.append(torch.matmul(star, dw).pow(2).sum((1, 2)))
        v_parts.append(v)
    w_sq = torch.cat(w_parts)
    f_sq = None if star is None else torch.cat(f_parts) / (phi_star.shape[0] // kb)
    return w_sq, f_sq, torch.cat(v_parts) - lam * alpha_b


def _finish(
    w_sq: Tensor, f_sq: Tensor | None, self_change: Tensor, sigma: float, num_outputs: int
) -> UniqueInformation:
    n_samples = w_sq.shape[0]
    denom = 2.0 * sigma**2
    return UniqueInformation(
        weight_si=w_sq / denom,
        functional_si=None if f_sq is None else f_sq / denom,
        weight_change_sq=w_sq,
        function_change_sq=f_sq,
        self_prediction_change=self_change.reshape(n_samples, num_outputs),
    )


def _init_outputs(init_outputs: Tensor) -> Tensor:
    f0 = _as_tensor(init_outputs, "init_outputs", allow_int=False)
    _check_ndim(f0, "init_outputs", (1, 2), "(N,) or (N, K)")
    _check_finite(f0, "init_outputs")
    return (f0[:, None] if f0.ndim == 1 else f0).double()


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
    method: SUIMethod = "exact",
    ridge_c: float = 0.5,
    progress: bool = False,
) -> UniqueInformation:
    r"""Compute per-sample weight SI and functional SI from precomputed NTKs (no model).

    Harutyunyan et al. (2021, arXiv:2101.06640), Eq. for SI/F-SI of the linearized network; see
    the module docstring for the training semantics and the leave-one-out convention.

    .. math::

        \mathrm{SI}_i = \frac{\delta_i^\top \Theta \delta_i}{2\sigma^2}, \qquad
        \text{F-SI}_i = \frac{\lVert \Theta(X^*, S)\,\delta_i \rVert^2}{2\sigma^2 M}.

    Methods:

    * ``num_steps=None`` (t = ∞): block-inverse closed forms (one float64 Cholesky of A, batched
      K x K solves over samples; docs/sui.md §5). Exact.
    * ``method="exact"``, finite t: one eigendecomposition of A, then every leave-one-out run is
      recovered exactly from a K-dimensional lower-triangular Toeplitz (Volterra) system in the
      "pinning" forces :math:`c_s` that keep block :math:`B_i` at zero, solved for all samples at
      once by a power-series (FFT, Newton) inverse: O((NK)^3 + t N^2 K^3 + N t log t K^3), no
      per-sample matrix power or eigendecomposition. Agrees with per-sample retraining to about
      1e-11 relative in float64 (checked up to t = 50000).
    * ``method="ridge"``, finite t: the t = ∞ formulas with :math:`\lambda_\mathrm{eff} = N\,
      \mathrm{wd} + c/(\eta t)` (``c = ridge_c``), the ridge equivalent of early stopping
      (docs/sui.md §6.2). An approximation: Spearman 0.97-0.999 with the exact scores on small toy
      problems (Pearson >= 0.99); magnitudes differ.

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
        method: ``"exact"`` or ``"ridge"`` (only matters for finite ``num_steps``).
        ridge_c: constant c of the ridge approximation, > 0 (docs/sui.md §6.2: 0.5-1).
        progress: show a tqdm bar for the finite-t exact solve.

    Returns:
        :class:`UniqueInformation` with (N,) float64 scores in nats (higher = more informative);
        ``functional_si``/``function_change_sq`` are None when ``heldout_ntk`` is None.

    Raises:
        ValueError: mismatched shapes/lengths, non-finite values, invalid options, a kernel that is
            not positive definite at t = ∞ with ``weight_decay=0`` (use ``weight_decay > 0`` or a
            finite ``num_steps``), or ``learning_rate`` too large for GD to converge
            (η·λ_max(A) >= 2; the message gives the max stable value).
        TypeError: non-numeric inputs.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> jac = torch.randn(6, 3, generator=g, dtype=torch.float64)
        >>> out = unique_information_from_kernels(
        ...     jac @ jac.T, None, torch.zeros(6), torch.tensor([0, 1, 0, 1, 1, 0]),
        ...     learning_rate=0.1, weight_decay=0.1)
        >>> [round(x, 4) for x in out.weight_si.tolist()][:3]
        [0.3634, 0.0138, 0.0044]
    """
    f0 = _init_outputs(init_outputs)
    n_samples, num_outputs = f0.shape
    lr, t, wd, sigma, method, c = _hyper(
        n_samples, learning_rate, num_steps, weight_decay, noise_scale, method, ridge_c
    )
    y = _prepare_targets(targets, n_samples, num_outputs)
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
        r = f0 - y  # (N, K): K right-hand sides sharing the kernel
    else:
        r = (f0 - y).reshape(-1, 1)
    lam = n_samples * wd
    n = theta.shape[0]
    if t is None or method == "ridge":
        a_mat = theta + lam * torch.eye(n, dtype=theta.dtype, device=theta.device)
        _check_stable(_power_lambda_max(a_mat), lr, n_samples, "power-iteration estimate")
        lam_eff = lam if t is None else lam + c / ((lr / n_samples) * t)
        out = _infinite(theta, theta_star, r, lam_eff, kb, wd if t is None else 1.0)
    else:
        out = _finite_exact(theta, theta_star, r, lam, kb, lr, t, progress)
    return _finish(*out, sigma, num_outputs)


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
    method: SUIMethod = "exact",
    ridge_c: float = 0.5,
    kernel: SUIKernel = "full",
) -> UniqueInformation:
    r"""Compute SI / F-SI from (projected) Jacobian features, in d-space (Woodbury), linear in N.

    Same semantics as :func:`unique_information_from_kernels` with :math:`\Theta = \Phi\Phi^\top`.
    With :math:`C = \Phi^\top \Phi + \lambda I_d` (a d x d Cholesky) and :math:`Z = C^{-1}\Phi^\top`:

    .. math::

        F = A^{-1} = \tfrac{1}{\lambda}(I - \Phi Z), \quad
        \lVert \Delta w_i \rVert^2 = \lVert Z_{B_i} v_i \rVert^2, \quad
        \Delta f(X^*) = \Phi^* Z_{B_i} v_i, \quad v_i = F_{B_i B_i}^{-1} (F r)_{B_i},

    so the cost is O(N K d^2 + d^3). Needs λ > 0: t = ∞ with ``weight_decay > 0``, or
    ``method="ridge"`` with a finite ``num_steps``. With ``kernel="trace"`` the features are
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
        method: ``"exact"`` (t = ∞ only here) or ``"ridge"``.
        ridge_c: c of the ridge approximation.
        kernel: ``"full"`` or ``"trace"``.

    Returns:
        :class:`UniqueInformation` (float64, nats, higher = more informative).

    Raises:
        ValueError: mismatched shapes, non-finite values, λ = 0 (t = ∞ with ``weight_decay=0``),
            ``method="exact"`` with a finite ``num_steps`` (use the kernel path or ``"ridge"``),
            or a learning rate too large for GD to converge.
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
    """
    f0 = _init_outputs(init_outputs)
    n_samples, num_outputs = f0.shape
    lr, t, wd, sigma, method, c = _hyper(
        n_samples, learning_rate, num_steps, weight_decay, noise_scale, method, ridge_c
    )
    kernel = _check_choice(kernel, "kernel", _KERNELS)
    y = _prepare_targets(targets, n_samples, num_outputs)

    def _feat(x: Tensor, name: str, rows: int | None) -> Tensor:
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

    phi3 = _feat(features, "features", n_samples)
    phi_star3 = (
        None if heldout_features is None else _feat(heldout_features, "heldout_features", None)
    )
    if phi_star3 is not None and phi_star3.shape[2] != phi3.shape[2]:
        raise ValueError(
            f"`heldout_features` must have d = {phi3.shape[2]} like `features`; "
            f"got {phi_star3.shape[2]}."
        )
    if t is not None and method == "exact":
        raise ValueError(
            "`method='exact'` with a finite `num_steps` is not available in feature space; use "
            "`method='ridge'`, or the kernel path (`unique_information_from_kernels`)."
        )
    lam = n_samples * wd
    if kernel == "trace" and num_outputs > 1:
        scale = 1.0 / math.sqrt(num_outputs)
        phi = phi3.reshape(n_samples, -1) * scale
        phi_star = None if phi_star3 is None else phi_star3.reshape(phi_star3.shape[0], -1) * scale
        kb, r = 1, f0 - y
    else:
        phi = phi3.reshape(n_samples * num_outputs, -1)
        phi_star = None if phi_star3 is None else phi_star3.reshape(-1, phi3.shape[2])
        kb, r = num_outputs, (f0 - y).reshape(-1, 1)
    gram_max = float(torch.linalg.eigvalsh(phi.T @ phi).max())
    _check_stable(gram_max + lam, lr, n_samples, "exact eigenvalue")
    lam_eff = lam if t is None else lam + c / ((lr / n_samples) * t)
    if lam_eff <= 0:
        raise _not_pd_error(0.0)
    return _finish(*_features(phi, phi_star, r, lam_eff, kb), sigma, num_outputs)


def smooth_unique_information(
    model: nn.Module,
    train_inputs: Tensor,
    train_targets: Tensor,
    heldout_inputs: Tensor | None = None,
    *,
    learning_rate: float,
    num_steps: int | None = None,
    weight_decay: float = 0.0,
    noise_scale: float = 1.0,
    method: SUIMethod = "exact",
    ridge_c: float = 0.5,
    kernel: SUIKernel = "full",
    params: ParamSelection = None,
    projection_dim: int | None = None,
    projection: ProjectionType = "gaussian",
    solver: SUISolver = "auto",
    chunk_size: int | None = None,
    seed: int = 0,
    memory_budget_bytes: int = _DEFAULT_BUDGET,
    progress: bool = False,
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

    The model is evaluated in eval mode; outputs must be (B,) or (B, K) raw outputs (MSE on
    logits: integer labels become one-hot for K > 1, 0/1 for K = 1). ``solver="auto"`` uses the
    feature-space path (:func:`unique_information_from_features`, linear in N) when
    ``projection_dim`` is set, N K > ``projection_dim`` and the method does not need the exact
    finite-t solve; otherwise it builds the NTKs (:func:`~lightning_info.functional.jacobian.
    empirical_ntk`) and calls :func:`unique_information_from_kernels`.

    Args:
        model: network at the linearization point (initial or pretrained weights).
        train_inputs: (N, ...) training inputs.
        train_targets: (N, K) float targets or (N,) integer labels.
        heldout_inputs: (M, ...) inputs for F-SI, or None (then no F-SI).
        learning_rate: lr > 0 of the mean-loss GD.
        num_steps: GD steps t >= 1, or None for t = ∞ (converged).
        weight_decay: wd >= 0, L2 pull toward :math:`w_0`.
        noise_scale: σ > 0 of the smoothing noise.
        method: ``"exact"`` or ``"ridge"`` (finite t only).
        ridge_c: c of the ridge approximation.
        kernel: ``"full"`` (N K x N K) or ``"trace"`` (N x N shared by the K outputs).
        params: which parameters to linearize (None = all trainable; a prefix or list of names).
        projection_dim: random-projection dimension d of the Jacobians, or None (exact kernel).
        projection: ``"gaussian"`` or ``"rademacher"``.
        solver: ``"auto"``, ``"kernel"`` or ``"features"``.
        chunk_size: samples per Jacobian vmap call.
        seed: seed of the projection.
        memory_budget_bytes: bound on stored Jacobians / projection blocks.
        progress: show a progress bar for the finite-t exact solve.

    Returns:
        :class:`UniqueInformation` (float64, nats; higher = more informative).

    Raises:
        ValueError: unsupported model outputs, mismatched lengths, non-finite values, invalid
            options, a non-positive-definite kernel at t = ∞ with ``weight_decay=0``, or a
            learning rate too large for GD to converge.
        TypeError: non-tensor inputs.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        >>> x = torch.randn(8, 2)
        >>> out = smooth_unique_information(model, x, (x[:, 0] > 0).long(), x[:4] + 0.1,
        ...                                 learning_rate=0.5, weight_decay=0.01)
        >>> out.weight_si.shape, out.functional_si.shape
        (torch.Size([8]), torch.Size([8]))
    """
    if not isinstance(train_inputs, Tensor):
        raise TypeError(
            f"`train_inputs` must be a torch.Tensor; got {type(train_inputs).__name__}."
        )
    if heldout_inputs is not None and not isinstance(heldout_inputs, Tensor):
        raise TypeError(
            f"`heldout_inputs` must be a torch.Tensor; got {type(heldout_inputs).__name__}."
        )
    kernel = _check_choice(kernel, "kernel", _KERNELS)
    solver = _check_choice(solver, "solver", _SOLVERS)
    method = _check_choice(method, "method", _METHODS)
    n_samples = train_inputs.shape[0]
    tgt = _as_tensor(train_targets, "train_targets")
    if tgt.shape[0] != n_samples:
        raise ValueError(
            f"`train_inputs` and `train_targets` must have the same number of samples; "
            f"got {n_samples} and {tgt.shape[0]}."
        )
    if train_inputs.is_floating_point():
        _check_finite(train_inputs, "train_inputs")
    if heldout_inputs is not None and heldout_inputs.is_floating_point():
        _check_finite(heldout_inputs, "heldout_inputs")
    f0 = model_outputs(model, train_inputs, chunk_size=chunk_size)
    _check_outputs(f0, n_samples)
    _check_finite(f0, "model outputs")
    num_outputs = f0.shape[1]
    common = dict(
        learning_rate=learning_rate,
        num_steps=num_steps,
        weight_decay=weight_decay,
        noise_scale=noise_scale,
        method=method,
        ridge_c=ridge_c,
    )
    use_features = solver == "features" or (
        solver == "auto"
        and projection_dim is not None
        and n_samples * num_outputs > int(projection_dim)
        and (num_steps is None or method == "ridge")
        and (weight_decay > 0 or num_steps is not None)
    )
    feat_kw = dict(
        params=params,
        projection_dim=projection_dim,
        projection=projection,
        seed=seed,
        chunk_size=chunk_size,
        memory_budget_bytes=memory_budget_bytes,
    )
    if use_features:
        phi = jacobian_features(model, train_inputs, **feat_kw)
        phi_star = None
        if heldout_inputs is not None:
            phi_star = jacobian_features(model, heldout_inputs, **feat_kw)
        return unique_information_from_features(phi, phi_star, f0, tgt, kernel=kernel, **common)
    ntk_kw = dict(feat_kw, kernel=kernel)
    theta = empirical_ntk(model, train_inputs, **ntk_kw)
    theta_star = None
    if heldout_inputs is not None:
        theta_star = empirical_ntk(model, heldout_inputs, train_inputs, **ntk_kw)
    return unique_information_from_kernels(theta, theta_star, f0, tgt, progress=progress, **common)
