r"""The finite horizon replayed exactly (SUI ``method="replay"``): leave-one-out of linearized GD.

Every sample's leave-one-out run is recovered at once, without retraining.

Harutyunyan et al., ICLR 2021 (arXiv:2101.06640), §3-4; the derivation is in ``docs/sui.md``
§6.1. Notation: :math:`A = \Theta + \lambda I` (``n = N K_b`` rows), step :math:`\eta = lr/N` for
the full run and :math:`\eta' = lr/(N-1)` for the runs without one sample, residual
:math:`r = f_0 - Y` with ``R`` right-hand sides, sample blocks :math:`B_i` of ``K_b`` rows.

The run without sample :math:`i` is the full-space recursion with block :math:`B_i` pinned to
zero by forces :math:`c_s`:

.. math::

    a_{s+1} = a_s - \eta'(A a_s + r) + \eta' E_{B} c_s, \qquad
    0 = \bar a_{s+1,B} + \eta' \sum_{q \le s} h_{s-q}\, c_q, \qquad
    h_m = [(I - \eta' A)^m]_{BB},

where :math:`\bar a` is the unconstrained run with step :math:`\eta'`. This lower-triangular
block-Toeplitz (Volterra) system is solved for every sample at once with the power-series inverse
of :math:`\sum_m h_m z^m` (Newton iteration, FFT products), and

.. math::

    a^{(-i)}_t = \bar a_t + \eta' \sum_{s<t} (I - \eta' A)^{t-1-s} E_B c_s .

Everything runs in the eigenbasis of :math:`A` (one ``eigh``): cost
:math:`O(n^3 + t N n K_b^2 + N t \log t\, K_b^3)`, no per-sample matrix power.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__: list[str] = []

#: Float64 elements of per-sample temporaries allowed at once (~320 MB).
_CHUNK_ELEMENTS = 4e7


def _per_sample_elements(kb: int, n_rhs: int, n: int, t: int) -> int:
    """Float64 elements of one sample's temporaries in :meth:`_Eigenbasis.delta`.

    h, its series inverse and FFT buffers (~12 t Kb^2), ā_B and the forces, the memory term, δ̂.

    Returns:
        The element count.
    """
    return 12 * kb * kb * t + 6 * kb * n_rhs * t + kb * n_rhs * n + n * n_rhs + kb * kb * n


def replay_peak_bytes(n_samples: int, kb: int, n_rhs: int, t: int) -> int:
    r"""Estimated peak memory of :func:`_finite_replay` (``method="replay"``) for t steps.

    What grows with the steps t: the per-eigenvalue series of :meth:`_Eigenbasis.build`
    (:math:`\mu^m` and :math:`g'_s`, n x t each, and the temporaries of :func:`_horizon`, about
    five more), the n x t R right-hand sides of :meth:`_Eigenbasis.delta`, and the per-sample
    temporaries of one chunk of samples (at least one sample), dominated by the FFT buffers of
    the power-series inverse: about 6.5 Kb^2 x the FFT length (2t rounded up to a power of two)
    per sample. On top: the n x n kernel, A, its eigenvectors. n = N Kb kernel rows, R
    right-hand sides. Checked against the PyTorch profiler's peak in
    ``tests/functional/test_sui_memory_guard.py`` (the estimate is 1.0-2x the measured peak).

    Args:
        n_samples: N.
        kb: kernel rows per sample.
        n_rhs: R.
        t: replayed steps.

    Returns:
        The estimate in bytes (float64).
    """
    n = n_samples * kb
    chunk = max(
        1, min(n_samples, int(_CHUNK_ELEMENTS // max(1, _per_sample_elements(kb, n_rhs, n, t))))
    )
    nfft = 1 << max(0, 2 * t - 2).bit_length()
    per_sample = (
        (13 * kb * kb * nfft) // 2 + 6 * kb * n_rhs * t + (kb * n_rhs + n_rhs + kb * kb) * n
    )
    series = (7 + 2 * n_rhs) * n * t
    return 8 * (series + chunk * per_sample + 4 * n * n)


def _horizon(lam: Tensor, eta: float, steps: Tensor) -> Tensor:
    r"""Stable :math:`g_s(\lambda) = (1 - (1 - \eta\lambda)^s)/\lambda = \eta\sum_{m<s}(1-\eta\lambda)^m`.

    Args:
        lam: (n,) eigenvalues :math:`\lambda`.
        eta: step size :math:`\eta`.
        steps: (T,) step counts :math:`s`.

    Returns:
        (n, T) values :math:`g_s(\lambda)`.
    """
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
    """First ``length`` terms of the causal convolution of matrix series (c, La, p, q) * (c, Lb, q, r).

    Args:
        a: (c, La, p, q) series.
        b: (c, Lb, q, r) series.
        length: number of terms kept.

    Returns:
        (c, length, p, r) product series.
    """
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
    """Power-series inverse G of a matrix series H with H_0 = I, modulo z^T.

    Newton iteration G <- G (2I - H G), doubling the number of correct terms each step.

    Args:
        h: (c, T, K, K) series with identity leading term.

    Returns:
        (c, T, K, K) inverse series.
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


@dataclass(frozen=True)
class _Eigenbasis:
    r"""What every sample's leave-one-out run needs, in the eigenbasis :math:`A = U \Lambda U^\top`.

    Attributes:
        u_blocks: (N, Kb, n) rows of :math:`U` per sample block :math:`B_i`.
        mu_powers: (n, t) :math:`\mu^m`, :math:`\mu = 1 - \eta'\lambda`, m = 0..t-1.
        g_prime: (n, t) :math:`g_s(\lambda)` with step :math:`\eta'`, s = 1..t.
        r_hat: (n, R) :math:`U^\top r`.
        delta_bar: (n, R) :math:`\hat{\bar a}_t - \hat a_t`, unconstrained minus full run.
        theta_eig: (n,) eigenvalues of :math:`\Theta` (:math:`\lambda - \lambda_\mathrm{ridge}`).
        g_star: (M Kb, n) :math:`\Theta_* U`, or None without held-out data.
        eta_prime: :math:`\eta'`.
        fitted: (n, R) residuals :math:`f_t(X) - Y = r + \Theta a_t` of the full run.
    """

    u_blocks: Tensor
    mu_powers: Tensor
    g_prime: Tensor
    r_hat: Tensor
    delta_bar: Tensor
    theta_eig: Tensor
    g_star: Tensor | None
    eta_prime: float
    fitted: Tensor

    @staticmethod
    def build(
        evals: Tensor,
        u: Tensor,
        theta_star: Tensor | None,
        r: Tensor,
        ridge: float,
        kb: int,
        lr: float,
        t: int,
    ) -> _Eigenbasis:
        """Precompute the per-eigenvalue series of the full and the leave-one-out runs.

        Returns:
            The :class:`_Eigenbasis`.
        """
        n = evals.shape[0]
        n_samples = n // kb
        eta, eta_prime = lr / n_samples, lr / (n_samples - 1)
        r_hat = u.T @ r
        steps = torch.arange(1, t + 1, device=evals.device)
        g_prime = _horizon(evals, eta_prime, steps)  # (n, t)
        a_full = -_horizon(evals, eta, steps[-1:])[:, 0:1] * r_hat  # â_t of the full run (η)
        a_bar = -g_prime[:, -1:] * r_hat  # â_t of the unconstrained run with η'
        mu = 1.0 - eta_prime * evals
        mu_powers = mu[:, None] ** torch.arange(t, device=evals.device, dtype=evals.dtype)[None, :]
        return _Eigenbasis(
            u_blocks=u.view(n_samples, kb, n),
            mu_powers=mu_powers,
            g_prime=g_prime,
            r_hat=r_hat,
            delta_bar=a_bar - a_full,
            theta_eig=evals - ridge,
            g_star=None if theta_star is None else theta_star @ u,
            eta_prime=eta_prime,
            fitted=r + u @ ((evals - ridge)[:, None] * a_full),
        )

    def delta(self, first: int, last: int) -> tuple[Tensor, Tensor]:
        r"""Leave-one-out coefficient changes of samples ``first:last`` in the eigenbasis.

        Returns:
            ``(delta_hat, u_b)``: (c, n, R) :math:`U^\top \delta_i` and the (c, Kb, n) blocks.
        """
        u_b = self.u_blocks[first:last]
        c_n, kb, n = u_b.shape
        t = self.mu_powers.shape[1]
        n_rhs = self.r_hat.shape[1]
        # h_m = U_B diag(μ^m) U_Bᵀ for m = 0..t-1 (h_0 = I): (c, t, Kb, Kb)
        outer = (u_b[:, :, None, :] * u_b[:, None, :, :]).reshape(c_n * kb * kb, n)
        h = (outer @ self.mu_powers).view(c_n, kb, kb, t).permute(0, 3, 1, 2)
        # ā_{s,B} for s = 1..t = -U_B diag(g'_s) r̂: (c, t, Kb, R)
        weighted = (self.g_prime[:, :, None] * self.r_hat[:, None, :]).reshape(n, t * n_rhs)
        a_bar_b = -(u_b.reshape(c_n * kb, n) @ weighted).view(c_n, kb, t, n_rhs).transpose(1, 2)
        # Σ_{q<=s} h_{s-q} c_q = -ā_{s+1,B} / η': the pinning forces c_s, O(t log t)
        forces = _series_mul(_series_inverse(h), -a_bar_b / self.eta_prime, t)
        # Σ_s μ^{t-1-s} c_s, then back through U_B: the pinned part of a^{(-i)}_t
        memory = forces.permute(0, 2, 3, 1).reshape(c_n * kb * n_rhs, t) @ self.mu_powers.flip(1).T
        pinned = (u_b[:, :, None, :] * memory.view(c_n, kb, n_rhs, n)).sum(1).transpose(1, 2)
        return self.delta_bar[None] + self.eta_prime * pinned, u_b


def _finite_replay(
    theta: Tensor,
    theta_star: Tensor | None,
    r: Tensor,
    ridge: float,
    kb: int,
    lr: float,
    t: int,
    evals_and_vectors: tuple[Tensor, Tensor],
) -> tuple[Tensor, Tensor | None, Tensor]:
    r"""Finite-t leave-one-out scores of every sample, replayed exactly (see the module docstring).

    Args:
        theta: (n, n) kernel :math:`\Theta`.
        theta_star: (M Kb, n) held-out/train kernel, or None.
        r: (n, R) residuals :math:`f_0 - Y`.
        ridge: :math:`\lambda = N\,\mathrm{wd}`.
        kb: rows per sample block.
        lr: learning rate of the mean loss.
        t: number of steps.
        evals_and_vectors: ``eigh`` of :math:`A = \Theta + \lambda I`.

    Returns:
        ``(w_sq, f_sq, self_change, fitted)``: (N,) :math:`\lVert\Delta w\rVert^2`, (N,) mean
        held-out :math:`\lVert\Delta f\rVert^2` (or None), (N, Kb, R) own-prediction changes,
        (n, R) residuals of the trained run.
    """
    evals, u = evals_and_vectors
    n = theta.shape[0]
    n_samples = n // kb
    n_rhs = r.shape[1]
    basis = _Eigenbasis.build(evals, u, theta_star, r, ridge, kb, lr, t)
    w_sq = torch.empty(n_samples, dtype=theta.dtype, device=theta.device)
    f_sq = torch.empty_like(w_sq) if theta_star is not None else None
    self_change = torch.empty(n_samples, kb, n_rhs, dtype=theta.dtype, device=theta.device)
    per_sample = _per_sample_elements(kb, n_rhs, n, t)
    chunk = max(1, min(n_samples, int(_CHUNK_ELEMENTS // max(1, per_sample))))
    for i0 in range(0, n_samples, chunk):
        i1 = min(n_samples, i0 + chunk)
        delta_hat, u_b = basis.delta(i0, i1)
        w_sq[i0:i1] = (basis.theta_eig[None, :, None] * delta_hat**2).sum((1, 2))  # δᵀΘδ
        weighted = basis.theta_eig[None, :, None] * delta_hat  # Θ̂ δ̂
        self_change[i0:i1] = torch.einsum("ikj,ijr->ikr", u_b, weighted)  # (Θδ)_B
        if basis.g_star is not None and f_sq is not None:
            m = basis.g_star.shape[0] // kb
            f_sq[i0:i1] = (
                torch.einsum("mj,ijr->imr", basis.g_star, delta_hat).pow(2).sum((1, 2)) / m
            )
    return w_sq.clamp_min(0), f_sq, self_change, basis.fitted
