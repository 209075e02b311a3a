r"""Closed forms of the converged (t = ∞) leave-one-out, in sample space and in feature space.

Harutyunyan et al., ICLR 2021 (arXiv:2101.06640), §3-4, derived in ``docs/sui.md`` §5 and §8.3.
Shapes: ``n = N Kb`` rows (Kb = K for the full kernel, 1 for the trace kernel); ``r`` is (n, R)
with R = 1 (full) or K (trace: the K outputs share the kernel). With :math:`F = A^{-1}`,
:math:`\alpha = F r` and sample block :math:`B`:
:math:`v_i = F_{BB}^{-1}\alpha_B`, :math:`\lVert\Delta w_i\rVert^2 = \alpha_B^\top v_i -
\lambda\, v_i^\top (F^2)_{BB} v_i`, :math:`\Delta f(X^*) = \Theta_* F_{:,B} v_i`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_info.utilities.exceptions import NotPositiveDefiniteError

__all__: list[str] = []


def _diag_blocks(mat: Tensor, n_samples: int, kb: int) -> Tensor:
    """(N*Kb, N*Kb) -> (N, Kb, Kb) diagonal blocks.

    Returns:
        The (N, Kb, Kb) blocks (a view).
    """
    return mat.view(n_samples, kb, n_samples, kb).diagonal(dim1=0, dim2=2).permute(2, 0, 1)


def _infinite(
    theta: Tensor, theta_star: Tensor | None, r: Tensor, lam: float, kb: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    r"""The t = ∞ block-inverse closed forms (docs/sui.md §5), vectorized over samples.

    Args:
        theta: (n, n) kernel :math:`\Theta` (n = N Kb).
        theta_star: (M Kb, n) held-out/train kernel, or None.
        r: (n, R) residuals.
        lam: ridge :math:`\lambda` of :math:`A = \Theta + \lambda I`.
        kb: rows per sample block.

    Returns:
        ``(w_sq, f_sq, self_change, fitted)``: (N,) :math:`\lVert\Delta w\rVert^2`, (N,) mean held-out
        :math:`\lVert\Delta f\rVert^2` (or None), (N, Kb, R) own-prediction changes and the
        (n, R) residuals :math:`f_S(x) - y` of the trained run (:math:`\lambda\alpha`).

    Raises:
        NotPositiveDefiniteError: if :math:`A` has no (well-conditioned) Cholesky factor.
    """
    n = theta.shape[0]
    n_samples = n // kb
    a = theta + lam * torch.eye(n, dtype=theta.dtype, device=theta.device)
    chol, info = torch.linalg.cholesky_ex(a)
    diag = chol.diagonal()
    if int(info) != 0 or float((diag.min() / diag.max()) ** 2) < 1e-13:
        raise NotPositiveDefiniteError(lam)
    f = torch.cholesky_inverse(chol)  # F = A^{-1}
    alpha = f @ r  # (n, R)
    alpha_b = alpha.view(n_samples, kb, -1)
    v = torch.linalg.solve(_diag_blocks(f, n_samples, kb), alpha_b)  # v_i = F_BB^{-1} α_B
    w_sq = (alpha_b * v).sum((1, 2))
    if lam > 0:  # ||Δw||² = α_Bᵀv − λ vᵀ (F²)_BB v
        fcols = f.view(n, n_samples, kb)
        f2_bb = torch.einsum("rik,ril->ikl", fcols, fcols)
        w_sq = w_sq - lam * torch.einsum("ikr,ikl,ilr->i", v, f2_bb, v)
    self_change = v - lam * alpha_b  # Δf(x_i) = v_i − λ α_B; f_S(x_i) − y_i = λ α_B
    f_sq = None
    if theta_star is not None:  # Δf(X*) = G[:, B] v_i with G = Θ* F
        m = theta_star.shape[0] // kb
        g = (theta_star @ f).view(-1, n_samples, kb)
        h_bb = torch.einsum("mik,mil->ikl", g, g)
        f_sq = torch.einsum("ikr,ikl,ilr->i", v, h_bb, v) / m
    return w_sq.clamp_min(0), f_sq, self_change, lam * alpha


#: Bound on the per-chunk (samples, d, R) temporaries of the feature-space closed forms.
_FEATURE_CHUNK_BYTES = 256 * 2**20


def _features(
    phi: Tensor, phi_star: Tensor | None, r: Tensor, lam: float, kb: int
) -> tuple[Tensor, Tensor | None, Tensor]:
    r"""The t = ∞ closed forms in feature space (Woodbury), A = ΦΦᵀ + λI, cost linear in N.

    With :math:`C = \Phi^\top\Phi + \lambda I_d` and :math:`Z = C^{-1}\Phi^\top`:
    :math:`F r = (r - \Phi Z r)/\lambda`, :math:`F_{BB} = (I - \Phi_B Z_B)/\lambda`,
    :math:`\Phi^\top \delta_i = Z_B v_i` so :math:`\lVert\Delta w\rVert^2 = \lVert Z_B v_i\rVert^2`
    and :math:`\Delta f(X^*) = \Phi^* Z_B v_i`. :math:`Z` is formed one chunk of samples at a
    time, so the memory beyond :math:`\Phi` is the chunk's, not another n x d matrix.

    Args:
        phi: (n, d) features (n = N Kb).
        phi_star: (M Kb, d) held-out features, or None.
        r: (n, R) residuals.
        lam: ridge :math:`\lambda > 0`.
        kb: rows per sample block.

    Returns:
        ``(w_sq, f_sq, self_change, fitted)`` as in :func:`_infinite`.

    Raises:
        NotPositiveDefiniteError: if :math:`\Phi^\top\Phi + \lambda I` has no Cholesky factor.
    """
    n, d = phi.shape
    n_samples = n // kb
    c_mat = phi.T @ phi + lam * torch.eye(d, dtype=phi.dtype, device=phi.device)
    chol, info = torch.linalg.cholesky_ex(c_mat)
    if int(info) != 0:
        raise NotPositiveDefiniteError(lam)
    # Z r = C⁻¹ (Φᵀ r): Z itself (d x n, as large as Φ) is formed chunk by chunk below
    alpha = (r - phi @ torch.cholesky_solve(phi.T @ r, chol)) / lam
    phi_b = phi.view(n_samples, kb, d)
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
        pc = phi_b[a : a + step]  # (chunk, Kb, d)
        zc = torch.cholesky_solve(pc.reshape(-1, d).T, chol).view(d, -1, kb).permute(1, 0, 2)
        v = torch.linalg.solve((eye - pc @ zc) / lam, alpha_b[a : a + step])
        dw = zc @ v  # (chunk, d, R): projected Δw
        w_parts.append(dw.pow(2).sum((1, 2)))
        if star is not None:
            f_parts.append(torch.matmul(star, dw).pow(2).sum((1, 2)))
        v_parts.append(v)
    w_sq = torch.cat(w_parts)
    f_sq = None if star is None else torch.cat(f_parts) / (phi_star.shape[0] // kb)
    return w_sq, f_sq, torch.cat(v_parts) - lam * alpha_b, lam * alpha
