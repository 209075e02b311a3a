r"""Stochastic Lanczos quadrature (SLQ) and the large-N diffusion spectral entropy solver.

Implements the trace estimator of Ubaru, Chen & Saad, *Fast estimation of tr(f(A)) via stochastic
Lanczos quadrature*, SIAM J. Matrix Anal. Appl. 38(4):1075-1099, 2017 (Eq. 3.6 / Alg. 1), and uses it
for the diffusion spectral entropy (DSE) of Liao, Liu et al., arXiv 2312.04823 (CISS 2024), whose
reference implementation needs all N eigenvalues (O(N^3)).

For DSE (bits) with :math:`p_i = |\lambda_i|^t / Z`, :math:`Z = \operatorname{tr} |K|^t`,

.. math::

    \mathrm{DSE} = -\sum_i p_i \log_2 p_i
    = \log_2 Z - \frac{1}{Z}\operatorname{tr} f(K), \qquad f(\mu) = t\,|\mu|^t \log_2 |\mu|,

with :math:`0 \log 0 := 0`. :math:`\operatorname{tr} f(K)` (and :math:`Z` for :math:`t \ne 1`) is
estimated by SLQ from matrix products with :math:`K = D^{-1/2} G D^{-1/2}` only; for :math:`t = 1`,
:math:`Z = \operatorname{tr} K = \sum_i G_{ii}/d_i = \sum_i 1/d_i` is exact. The known top eigenpair
(eigenvalue 1, eigenvector :math:`\propto \sqrt{d}`) is deflated exactly. Plain SLQ is too noisy
for steep spectra (errors of 0.1-0.4 bit at N = 2000 with 16 probes, dominated by the Hutchinson
variance of the few large eigenvalues, not by the quadrature), so the DSE solver adds a Hutch++
split (Meyer, Musco, Musco & Woodruff, SOSA 2021) on a 32-dimensional dominant subspace and two
control variates with exact traces (:math:`\operatorname{tr}K`, :math:`\operatorname{tr}K^2`); see
``_dse_lanczos`` and ``benchmarks/RESULTS.md`` §6 (``benchmarks/dse_lanczos.py``) for the
measured accuracy and cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_info.functional.diffusion import (
    _mul_scaled_,
    _refine_small_sq_dists_,
    _refine_tolerance,
    _scaled_centred_rows,
)
from lightning_info.utilities.checks import _check_int

__all__ = ["stochastic_lanczos_quadrature"]

#: Default memory budget (bytes) for the cached part of the Gaussian kernel in `_dse_lanczos`:
#: 2 GiB holds a dense float32 kernel up to N = 23,170; larger N keeps as many rows as fit and
#: recomputes the rest in row blocks at every product.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
#: Target size (bytes) of one recomputed kernel row block.
_BLOCK_BYTES = 32 * 1024**2


def _rademacher(
    dim: int,
    num: int,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | None,
) -> Tensor:
    """(dim, num) matrix of independent ±1 entries, drawn on the generator's device.

    Returns:
        The matrix in ``dtype`` on ``device`` (a CPU generator seeded with 0 when None).
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if generator is None:
        generator = torch.Generator(device=gen_device).manual_seed(0)
    bits = torch.randint(0, 2, (dim, num), generator=generator, device=gen_device)
    return (2 * bits - 1).to(dtype=dtype, device=device)


def _lanczos_quadrature(
    matvec: Callable[[Tensor], Tensor],
    probes: Tensor,
    num_steps: int,
    *,
    deflate: Tensor | None = None,
    block: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Run one Lanczos process per probe column and return Gauss quadrature nodes and weights.

    For every probe :math:`z_l` (column of ``probes``) this returns nodes :math:`\theta_{lk}` and
    weights :math:`\tau_{lk}` with :math:`\sum_k \tau_{lk} f(\theta_{lk}) \approx z_l^\top f(A) z_l`
    (exact for polynomials of degree < 2 ``num_steps``). The probes are run together as a block
    (one ``matvec`` on an (N, m) matrix per step, ``block=True``) or one at a time. Full
    reorthogonalization (one classical Gram-Schmidt pass per step) keeps the Lanczos basis
    orthonormal, so no spurious ("ghost") Ritz values appear. Generic (any symmetric A); the DSE
    solver :func:`_dse_lanczos` is one caller.

    Args:
        matvec: ``V -> A @ V`` for (N, b) blocks ``V`` of ``probes.dtype``.
        probes: (N, m) starting vectors (not normalized).
        num_steps: Lanczos steps k (clipped to the dimension of the Krylov space).
        deflate: optional unit vector (N,) that is an eigenvector of A; the process runs in its
            orthogonal complement (probes and every product are projected).
        block: process all probes in one batched product per step (``True``) or in turn.

    Returns:
        ``(nodes, weights)``, both (m, k). Padding after an early breakdown (an invariant subspace
        was found) has weight 0 and a node equal to the probe's Rayleigh quotient.
    """
    if not block:
        return _lanczos_quadrature_per_probe(matvec, probes, num_steps, deflate)
    dim = probes.shape[0]
    if deflate is not None:
        deflate = deflate.to(dtype=probes.dtype).reshape(1, dim)
        probes = probes - (deflate.T @ (deflate @ probes))  # P z, P = I - u u^T
    k = max(1, min(num_steps, dim - (deflate is not None)))
    norms = torch.linalg.vector_norm(probes, dim=0)  # ||z_l||
    alpha, beta = _lanczos_recurrence(matvec, probes, norms, k, deflate)
    return _gauss_rule(alpha, beta, norms)


def _lanczos_quadrature_per_probe(
    matvec: Callable[[Tensor], Tensor], probes: Tensor, num_steps: int, deflate: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``_lanczos_quadrature(block=False)``: one probe at a time, padded to a common length.

    Returns:
        ``(nodes, weights)``, both (m, k), as :func:`_lanczos_quadrature`.
    """
    outs = [
        _lanczos_quadrature(matvec, probes[:, i : i + 1], num_steps, deflate=deflate)
        for i in range(probes.shape[1])
    ]
    k = max(n.shape[1] for n, _ in outs)
    nodes = torch.cat(
        [torch.nn.functional.pad(n, (0, k - n.shape[1]), value=float(n[0, 0])) for n, _ in outs]
    )
    weights = torch.cat([torch.nn.functional.pad(w, (0, k - w.shape[1])) for _, w in outs])
    return nodes, weights


def _lanczos_recurrence(
    matvec: Callable[[Tensor], Tensor],
    probes: Tensor,
    norms: Tensor,
    k: int,
    deflate: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """K steps of block Lanczos with full reorthogonalization, one process per probe column.

    ``probes`` (N, m) are already projected off ``deflate`` (a (1, N) row or None), ``norms``
    their column norms.

    Returns:
        ``(alpha, beta)``, both (m, k): the tridiagonals' diagonals and off-diagonals
        (``beta[:, j]`` couples steps j and j+1; 0 after a breakdown).
    """
    dim, m = probes.shape
    dtype = probes.dtype
    basis = probes.new_zeros(m, k, dim)  # Q_l^T, one row per Lanczos vector
    alpha = probes.new_zeros(m, k)
    beta = probes.new_zeros(m, k)
    tol = dim * torch.finfo(dtype).eps
    q = (probes / norms.clamp_min(torch.finfo(dtype).tiny)).T.contiguous()  # (m, N)
    q_prev = torch.zeros_like(q)
    b_prev = probes.new_zeros(m)
    scale = probes.new_zeros(m)
    done = norms == 0  # a zero probe (e.g. z ∝ u) contributes nothing
    for j in range(k):
        basis[:, j] = q
        w = matvec(q.T).T  # (m, N) rows of A q_l
        if deflate is not None:
            w = w - (w @ deflate.T) * deflate
        w = w - b_prev[:, None] * q_prev
        a = (q * w).sum(dim=1)
        w = w - a[:, None] * q
        # Full reorthogonalization against all previous Lanczos vectors (one classical
        # Gram-Schmidt pass on top of the three-term recurrence).
        coef = torch.bmm(basis[:, : j + 1], w.unsqueeze(-1))
        w = w - torch.bmm(basis[:, : j + 1].transpose(1, 2), coef).squeeze(-1)
        alpha[:, j] = torch.where(done, torch.zeros_like(a), a)
        if j == k - 1:
            break
        b = torch.linalg.vector_norm(w, dim=1)
        scale = torch.maximum(scale, torch.maximum(a.abs(), b))
        done = done | (b <= tol * scale)  # breakdown: Krylov space exhausted for this probe
        b = torch.where(done, torch.zeros_like(b), b)
        beta[:, j] = b
        q_prev = q
        q = torch.where(
            done[:, None], torch.zeros_like(w), w / b.clamp_min(torch.finfo(dtype).tiny)[:, None]
        )
        b_prev = b
    return alpha, beta


def _gauss_rule(alpha: Tensor, beta: Tensor, norms: Tensor) -> tuple[Tensor, Tensor]:
    r"""Gauss quadrature of each Lanczos tridiagonal :math:`T_l = Y_l \Theta_l Y_l^\top`.

    Nodes are the Ritz values :math:`\theta_{lk}`, weights
    :math:`\lVert z_l\rVert^2 (e_1^\top y_{lk})^2`; steps after a breakdown are padding.

    Returns:
        ``(nodes, weights)``, both (m, k), as :func:`_lanczos_quadrature`.
    """
    m, k = alpha.shape
    # Steps taken per probe: a step is valid if all couplings before it are nonzero.
    valid = torch.ones(m, k, dtype=torch.bool, device=alpha.device)
    if k > 1:
        valid[:, 1:] = torch.cumprod(beta[:, :-1] != 0, dim=1).bool()
    # Decouple invalid (padded) steps with distinct, far-away diagonal entries so that eigh never
    # mixes them with real Ritz values; their eigenvectors then have no mass on valid rows.
    far = 2 * alpha.abs().amax() + 2 * beta.abs().amax() + 1
    pad = far * (1 + torch.arange(k, dtype=alpha.dtype, device=alpha.device))
    diag = torch.where(valid, alpha, pad.expand(m, k))
    tridiag = (
        torch.diag_embed(diag)
        + torch.diag_embed(beta[:, :-1], 1)
        + torch.diag_embed(beta[:, :-1], -1)
    )
    theta, vecs = torch.linalg.eigh(tridiag)  # Ritz values (nodes) and vectors
    real = (vecs.square() * valid[:, :, None]).sum(dim=1) > 0.5  # eigvec lives on valid rows
    weights = norms[:, None].square() * vecs[:, 0, :].square() * real
    weights = torch.where(norms[:, None] == 0, torch.zeros_like(weights), weights)
    nodes = torch.where(real, theta, alpha[:, :1].expand(m, k))
    return nodes, weights


def stochastic_lanczos_quadrature(
    matvec: Callable[[Tensor], Tensor],
    dim: int,
    fn: Callable[[Tensor], Tensor],
    *,
    num_steps: int = 32,
    num_probes: int = 16,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    block: bool = True,
) -> Tensor:
    r"""Estimate the trace of a matrix function, :math:`\operatorname{tr} f(A)`, from products with A.

    Stochastic Lanczos quadrature (Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38(4), 2017,
    Eq. 3.6): Hutchinson's estimator with Rademacher probes :math:`z_l \in \{\pm 1\}^N`, where each
    quadratic form :math:`z_l^\top f(A) z_l` is the Gauss quadrature rule of the k-step Lanczos
    tridiagonal :math:`T_l = Y_l \Theta_l Y_l^\top` started at :math:`z_l / \lVert z_l \rVert`:

    .. math::

        \operatorname{tr} f(A) \approx \frac{1}{m} \sum_{l=1}^{m} \lVert z_l \rVert^2
        \sum_{k=1}^{K} \big(e_1^\top y_{lk}\big)^2 f(\theta_{lk}),
        \qquad \lVert z_l \rVert^2 = N.

    The Lanczos basis is fully reorthogonalized at every step, which costs O(m N K^2) extra work
    but removes the ghost Ritz values of plain Lanczos; the probes run together as one (N, m) block
    per product (``block=True``) so a dense ``A`` is read once per step for all probes. The quadrature
    is exact for polynomials of degree < 2K, so the bias falls quickly with K for smooth f; the
    Hutchinson variance is :math:`2 \lVert f(A) \rVert_F^2 - 2\sum_i f(A)_{ii}^2` per probe and falls
    as 1/m. Never uses the global RNG. Generic: the DSE solver (``solver="lanczos"`` of
    :func:`~lightning_info.functional.diffusion_spectral_entropy`) takes its own step and probe
    counts as ``num_lanczos_steps`` / ``num_lanczos_probes``.

    Args:
        matvec: function mapping an (N, b) tensor V to ``A @ V`` (same shape); A must be symmetric.
        dim: N, the size of A (>= 1).
        fn: elementwise function applied to the Ritz values (nodes), e.g. ``torch.log`` for
            ``tr log A`` (log-determinant) of an SPD matrix. It is evaluated only at Ritz values,
            which lie in A's numerical range.
        num_steps: Lanczos steps K per probe (>= 1, clipped to N); cost grows linearly, accuracy fast.
        num_probes: number of Rademacher probes m (>= 1); the standard error falls as 1/sqrt(m).
        generator: source of the probes; ``None`` uses a fresh CPU generator seeded with 0.
        dtype: dtype of the Lanczos vectors (float64 by default); ``matvec`` receives this dtype.
        device: device of the Lanczos vectors; default the generator's device (CPU if none).
        block: run all probes as one batched product per step (default) or one probe at a time.

    Returns:
        0-dim tensor (``dtype``): the estimate of :math:`\operatorname{tr} f(A)`, in the units of f.

    Raises:
        TypeError: if ``matvec`` or ``fn`` is not callable or an integer option is not an int.
        ValueError: if ``dim``, ``num_steps`` or ``num_probes`` is < 1.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> Q, _ = torch.linalg.qr(torch.randn(100, 100, generator=g, dtype=torch.float64))
        >>> eigenvalues = torch.linspace(0.5, 2.0, 100, dtype=torch.float64)
        >>> A = Q @ torch.diag(eigenvalues) @ Q.T  # SPD with a known spectrum
        >>> logdet = stochastic_lanczos_quadrature(lambda V: A @ V, 100, torch.log, num_steps=10,
        ...     num_probes=64, generator=torch.Generator().manual_seed(0))
        >>> round(logdet.item(), 2), round(eigenvalues.log().sum().item(), 2)
        (14.41, 15.37)
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    if not callable(matvec):
        raise TypeError(f"`matvec` must be callable; got {type(matvec).__name__}.")
    if not callable(fn):
        raise TypeError(f"`fn` must be callable; got {type(fn).__name__}.")
    dim = _check_int(dim, "dim", minimum=1)
    num_steps = _check_int(num_steps, "num_steps", minimum=1)
    num_probes = _check_int(num_probes, "num_probes", minimum=1)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    probes = _rademacher(dim, num_probes, generator, dtype, torch.device(device))
    nodes, weights = _lanczos_quadrature(matvec, probes, num_steps, block=block)
    values = torch.where(weights > 0, weights * fn(nodes), torch.zeros_like(weights))
    return values.sum(dim=1).mean()


class _GaussianKernel:
    r"""Products with the Gaussian kernel :math:`G_{ij} = \exp(-\lVert x_i - x_j\rVert^2 / 2\sigma^2)`.

    The first ``n_cached`` rows (as many as ``memory_budget_bytes`` allows, all of them when the
    dense kernel fits) are computed once and stored in ``kernel_dtype``; the remaining rows
    are recomputed in row blocks at every product, using symmetry (only the upper triangle of the
    uncached-by-uncached part is formed, and the cached rows supply the cached columns), so that
    memory stays O(N * block_rows) beyond the budget. Distances use centred inputs
    :math:`\lVert x_i\rVert^2 + \lVert x_j\rVert^2 - 2 x_i^\top x_j`, clamped at 0, with an exact
    zero diagonal (:math:`G_{ii} = 1`).
    """

    def __init__(
        self,
        x: Tensor,
        *,
        sigma: float,
        kernel_dtype: torch.dtype,
        block_rows: int | None,
        memory_budget_bytes: int | None,
    ) -> None:
        n = x.shape[0]
        itemsize = torch.finfo(kernel_dtype).bits // 8
        budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
        if block_rows is None:
            block_rows = max(1, _BLOCK_BYTES // (n * itemsize))
        self.n = n
        self.block_rows = max(1, min(int(block_rows), n))
        self.n_cached = min(n, max(0, int(budget) // (n * itemsize)))
        xc = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
        # centring: fewer cancellations in ||x||²-2x·y; power-of-two scaling: no over/underflow
        xc, exponent = _scaled_centred_rows(xc)
        xc = xc.to(kernel_dtype)
        self.x = xc
        self.sq = xc.square().sum(dim=1)
        # G = exp(-gamma[0] * 2**gamma[1] * d2) for the scaled rows' squared distances d2
        self.gamma = (0.5 / sigma**2, 2 * exponent)
        # Recompute near-duplicate distances from differences only where the expansion's
        # round-off would change G by more than 1e-3 (sigma near the data's resolution): there
        # duplicates must get G = 1, not exp(-gamma * round-off) ~ 0.
        tol = _refine_tolerance(self.sq)
        log_err = (
            math.log2(self.gamma[0]) + self.gamma[1] + math.log2(tol) if tol > 0 else -math.inf
        )
        self.refine_tol = tol if log_err > math.log2(1e-3) else None
        self.dtype = kernel_dtype
        self.cache = torch.empty(self.n_cached, n, dtype=kernel_dtype, device=x.device)
        for a in range(0, self.n_cached, self.block_rows):
            b = min(a + self.block_rows, self.n_cached)
            self.cache[a:b] = _kernel_block(
                self.x, self.sq, a, b, 0, n, self.gamma, refine_tol=self.refine_tol
            )
        # Exact row sums d = G 1, accumulated in float64.
        ones = torch.ones(n, 1, dtype=torch.float64, device=x.device)
        self.degree = self.matmat(ones).squeeze(1)

    def matmat(self, v: Tensor, *, square: bool = False) -> Tensor:
        """``G @ v`` (or ``(G∘G) @ v`` if ``square``) for v of shape (N, b), in the kernel dtype.

        Returns:
            (N, b) tensor in v's dtype (accumulated in float64).
        """
        n, c = self.n, self.n_cached
        vk = v.to(self.dtype)
        out = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
        if c > 0 and not square:
            out[:c] += self.cache @ vk
            if c < n:
                out[c:] += self.cache[:, c:].T @ vk[:c]
        elif c > 0:  # squared entries, chunked so that no second N x N array is formed
            for a in range(0, c, self.block_rows):
                b = min(a + self.block_rows, c)
                rows = self.cache[a:b].square()
                out[a:b] += rows @ vk
                if c < n:
                    out[c:] += rows[:, c:].T @ vk[a:b]
        for a in range(c, n, self.block_rows):
            b = min(a + self.block_rows, n)
            block = _kernel_block(  # G[a:b, a:]
                self.x, self.sq, a, b, a, n, self.gamma, refine_tol=self.refine_tol
            )
            if square:
                block = block.square_()
            out[a:b] += block @ vk[a:]
            if b < n:
                out[b:] += block[:, b - a :].T @ vk[a:b]
        return out.to(v.dtype)


def _kernel_block(
    x: Tensor,
    sq: Tensor,
    row_start: int,
    row_stop: int,
    col_start: int,
    col_stop: int,
    gamma: tuple[float, int],
    *,
    refine_tol: float | None = None,
) -> Tensor:
    """Gaussian kernel block G[row_start:row_stop, col_start:col_stop], exact ones on the diagonal.

    ``gamma = (c, k)``: the exponent is ``-c * 2**k * d2`` (applied by ``_mul_scaled_``, so a
    factor beyond the kernel dtype's range, e.g. sigma = 1e-30 in float32, gives 0 off the
    duplicates and never ``0 * inf = NaN``). With ``refine_tol``, squared distances at or below it
    are recomputed from the differences (``_refine_small_sq_dists_``).

    Returns:
        (row_stop - row_start, col_stop - col_start) tensor in ``x``'s dtype.
    """
    xr, xcol = x[row_start:row_stop], x[col_start:col_stop]
    block = torch.addmm(sq[col_start:col_stop].unsqueeze(0), xr, xcol.T, alpha=-2.0)
    block.add_(sq[row_start:row_stop].unsqueeze(1))
    if refine_tol is not None:
        _refine_small_sq_dists_(block, xr, xcol, refine_tol)
    block.clamp_(min=0.0)
    _mul_scaled_(block, gamma[0], gamma[1]).neg_().exp_()
    # Flush subnormal entries (< 1.2e-38 in float32) to 0: they change no sum that matters but
    # make every later matmul several times slower on x86 (measured 5-10x for flat spectra).
    block.masked_fill_(block < torch.finfo(block.dtype).tiny, 0.0)
    lo, hi = max(row_start, col_start), min(row_stop, col_stop)
    if lo < hi:  # the block contains part of the diagonal: distance exactly 0
        idx = torch.arange(lo, hi, device=x.device)
        block[idx - row_start, idx - col_start] = 1.0
    return block


#: Estimators of ``_dse_lanczos``: ``"cv2"`` (control variates, the default) and ``"exact_z"``
#: (plain probe means; the benchmark's and tests' baseline).
_ESTIMATORS = ("cv2", "exact_z")


class _DiffusionOperator:
    r"""Products with :math:`K = D^{-1/2} G D^{-1/2}` and its exact traces, K never formed.

    Attributes:
        kernel: the Gaussian kernel G.
        degree: (N,) :math:`d = G 1` in the Lanczos dtype.
        top: (N,) the known top eigenvector :math:`\sqrt{d}/\lVert\sqrt{d}\rVert` (eigenvalue 1).
        trace: :math:`\operatorname{tr} K = \sum_i G_{ii}/d_i = \sum_i 1/d_i`, exact.
    """

    def __init__(self, kernel: _GaussianKernel, dtype: torch.dtype) -> None:
        self.kernel = kernel
        self.degree = kernel.degree.to(dtype)
        self._d_inv_sqrt = self.degree.rsqrt()[:, None]
        top = self.degree.sqrt()
        self.top = top / torch.linalg.vector_norm(top)  # K top = top, eigenvalue 1
        self.trace = (1.0 / self.degree).sum()

    def matvec(self, v: Tensor) -> Tensor:
        """``K v = D^-1/2 G D^-1/2 v`` for v of shape (N, b).

        Returns:
            (N, b) tensor in v's dtype.
        """
        return self._d_inv_sqrt * self.kernel.matmat(self._d_inv_sqrt * v)

    def without_top(self, v: Tensor) -> Tensor:
        """Project the columns of v off the top eigenvector.

        Returns:
            ``(I - u u^T) v`` with ``u = top``.
        """
        u = self.top[:, None]
        return v - u @ (u.T @ v)

    def trace_sq(self) -> Tensor:
        r"""Exact :math:`\operatorname{tr} K^2 = \sum_{ij} G_{ij}^2/(d_i d_j)` (one kernel pass).

        Returns:
            0-dim tensor in the Lanczos dtype.
        """
        w = (1.0 / self.degree)[:, None]
        return (w * self.kernel.matmat(w, square=True)).sum()


def _dominant_basis(
    op: _DiffusionOperator, rank: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    r"""Hutch++'s Q: an orthonormal basis of :math:`K\Omega`, off the top eigenvector.

    One subspace iteration from ``rank`` Gaussian columns :math:`\Omega` drawn from
    ``generator`` (independent of the probes, so the probes' trace stays unbiased).

    Returns:
        (N, rank) tensor with orthonormal columns, orthogonal to ``op.top``.
    """
    omega = torch.randn(op.degree.shape[0], rank, generator=generator, dtype=op.degree.dtype)
    basis = torch.linalg.qr(op.without_top(omega.to(device))).Q
    basis = op.without_top(op.matvec(basis))
    return torch.linalg.qr(basis).Q


@dataclass(frozen=True)
class _QuadratureForms:
    r"""Gauss-quadrature quadratic forms :math:`v^\top g(K) v`, one per Lanczos start vector v.

    The start vectors are the r columns of Q, then the m projected probes :math:`Pz`.

    Attributes:
        f: :math:`v^\top f(K) v`, :math:`f(\mu) = t|\mu|^t\log_2|\mu|` (0 log 0 := 0).
        z: :math:`v^\top |K|^t v` (the terms of Z).
        h1: :math:`v^\top K v` (exact: a degree-1 quadrature).
        h2: :math:`v^\top K^2 v` (exact: degree 2).
    """

    f: Tensor
    z: Tensor
    h1: Tensor
    h2: Tensor

    @staticmethod
    def of(nodes: Tensor, weights: Tensor, t: float) -> _QuadratureForms:
        """The forms of the Gauss rules ``(nodes, weights)`` (each (r + m, k)).

        Returns:
            The :class:`_QuadratureForms`, each field (r + m,).
        """
        mu = nodes.abs()
        log_mu = torch.where(mu > 0, torch.log2(mu), torch.zeros_like(mu))  # 0 log 0 := 0
        power = mu.pow(t)
        return _QuadratureForms(
            f=(weights * t * power * log_mu).sum(dim=1),
            z=(weights * power).sum(dim=1),
            h1=(weights * nodes).sum(dim=1),
            h2=(weights * nodes.square()).sum(dim=1),
        )


def _control_variates(
    op: _DiffusionOperator, forms: _QuadratureForms, rank: int
) -> tuple[Tensor, Tensor]:
    r"""The probes' control variates :math:`h_1(\mu) = \mu`, :math:`h_2(\mu) = \mu^2`.

    Their traces over the probes' space, :math:`\operatorname{tr}(P K^p P) = \operatorname{tr}K^p
    - 1 - \sum_i q_i^\top K^p q_i`, are exact (the deflated top pair contributes :math:`1^p`).

    Returns:
        ``(h, h_trace)``: (m, 2) probe samples of :math:`(h_1, h_2)` and their (2,) exact means.
    """
    h1_trace = op.trace - 1.0 - forms.h1[:rank].sum()
    h2_trace = op.trace_sq() - 1.0 - forms.h2[:rank].sum()
    return torch.stack([forms.h1[rank:], forms.h2[rank:]], dim=1), torch.stack([h1_trace, h2_trace])


def _split_trace(forms: Tensor, rank: int, variates: tuple[Tensor, Tensor] | None) -> Tensor:
    r"""Hutch++ trace of g(K): the r exact forms :math:`q_i^\top g(K) q_i` plus the probes' part.

    The probes estimate :math:`\operatorname{tr}(P g(K) P)` (:func:`_probe_mean`).

    Returns:
        0-dim tensor.
    """
    return forms[:rank].sum() + _probe_mean(forms[rank:], variates)


def _probe_mean(probe: Tensor, variates: tuple[Tensor, Tensor] | None) -> Tensor:
    r"""The probes' estimate of :math:`\operatorname{tr}(P g(K) P)`: plain or with control variates.

    With ``variates``: the regression estimate with :math:`h_1` and :math:`h_2` (``"cv2"``),
    replaced by the one with :math:`h_1` only when the two differ by more than 3 standard errors
    of the latter (see :func:`_dse_lanczos`, step 4); the plain mean below 3 probes, the
    :math:`h_1` one below 4.

    Returns:
        0-dim tensor.
    """
    if variates is None or probe.numel() < 3:
        return probe.mean()
    h, h_trace = variates
    est1, se1 = _control_variate_estimate(probe, h[:, :1], h_trace[:1])
    if probe.numel() < 4:
        return est1
    est2, _ = _control_variate_estimate(probe, h, h_trace)
    # Guard (found on rank-1/2 data in R^50, N = 2000, sigma = 10: -27 bits vs exact 0.41):
    # when the remainder P K^2 P is below the kernel dtype's resolution, its exact trace
    # is round-off and the fitted h2 coefficient (~log(mu)/mu for tiny mu) amplifies it.
    # Both estimates target the same trace, so a cv2 estimate more than 3 standard errors
    # of the h1-only estimate away from it is rejected.
    if bool((est2 - est1).abs() > 3.0 * se1 + 1e-12 * est1.abs()):
        return est1
    return est2


def _control_variate_estimate(probe: Tensor, cov: Tensor, rest: Tensor) -> tuple[Tensor, Tensor]:
    """Regression control-variate estimate of the probes' mean and its standard error.

    ``probe`` (m,) are samples of g, ``cov`` (m, p) the covariates h with known means ``rest``
    (p,).

    Returns:
        ``(mean(g) - c^T (mean(h) - rest), se)`` with ``c`` the least-squares slope of g on h
        and ``se = std(residuals) / sqrt(m)`` (m - p - 1 degrees of freedom).
    """
    m = probe.numel()
    centred = cov - cov.mean(dim=0)
    target = probe - probe.mean()
    coef = torch.linalg.lstsq(centred, target[:, None]).solution[:, 0]
    est = probe.mean() - coef @ (cov.mean(dim=0) - rest)
    resid = target - centred @ coef
    dof = max(1, m - cov.shape[1] - 1)
    se = (resid.square().sum() / dof).sqrt() / m**0.5
    return est, se


def _dse_lanczos(
    x: Tensor,
    *,
    sigma: float,
    t: float = 1,
    num_lanczos_probes: int = 16,
    num_lanczos_steps: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    block_rows: int | None = None,
    memory_budget_bytes: int | None = None,
    kernel_dtype: torch.dtype = torch.float32,
    num_deflate: int = 32,
    estimator: str = "cv2",
) -> Tensor:
    r"""Diffusion spectral entropy (bits) of x (N, D) by stochastic Lanczos quadrature.

    Computes :math:`\log_2 Z - \operatorname{tr} f(K) / Z` with :math:`f(\mu) = t|\mu|^t\log_2|\mu|`
    (module docstring). Steps:

    1. Gaussian kernel G kept in ``kernel_dtype`` within ``memory_budget_bytes`` (the remaining
       rows are recomputed in blocks of ``block_rows`` rows at every product); ``d = G 1`` exact
       (float64 accumulation); :math:`\operatorname{tr} K = \sum_i 1/d_i` exact
       (:class:`_DiffusionOperator`).
    2. The top eigenpair :math:`(1, \sqrt{d}/\lVert\sqrt{d}\rVert)` is deflated exactly:
       f(1) = 0, :math:`1^t = 1`; every Lanczos product is projected off it.
    3. Hutch++ split (Meyer, Musco, Musco & Woodruff, SOSA 2021): ``Q`` = orthonormal basis of
       :math:`K\Omega` (``num_deflate`` Gaussian columns, one subspace iteration;
       :func:`_dominant_basis`), and
       :math:`\operatorname{tr} f(K) = \sum_i q_i^\top f(K) q_i + \operatorname{tr}(P f(K) P)`,
       :math:`P = I - QQ^\top`; every quadratic form is a ``num_lanczos_steps``-point Lanczos
       (Gauss) quadrature (Ubaru, Chen & Saad 2017; :class:`_QuadratureForms`) and the second trace
       uses ``num_lanczos_probes`` Rademacher probes :math:`Pz` (:func:`_split_trace`). The steep
       part of the spectrum, which dominates the Hutchinson variance, is thereby handled (almost)
       deterministically.
    4. ``estimator="cv2"`` (default): regression control variates :math:`h_1(\mu) = \mu`,
       :math:`h_2(\mu) = \mu^2`, whose probe traces
       :math:`\operatorname{tr}(P K^p P) = \operatorname{tr}K^p - 1 - \sum_i q_i^\top K^p q_i` are
       exact (:math:`\operatorname{tr}K^2 = \sum_{ij} G_{ij}^2/(d_i d_j)`, one extra kernel pass;
       :func:`_control_variates`):
       :math:`\hat T = \bar g - \hat c^\top(\bar h - \operatorname{tr}(P h(K) P))`, with
       :math:`\hat c` the least-squares slope of g on h over the probes (bias O(1/m);
       :func:`_probe_mean`). ``"exact_z"``: plain probe means. Z for t != 1 is estimated in the
       same runs (with the same variates); for t = 1 it is the exact :math:`\operatorname{tr} K`.
       Guard: the ``"cv2"`` estimate is replaced by the :math:`h_1`-only one when the two differ
       by more than 3 standard errors of the latter. This happens when the remainder
       :math:`P K^2 P` is below the kernel dtype's resolution (very low-rank data, large
       sigma): its "exact" trace is then round-off, which the fitted :math:`h_2` coefficient
       (about :math:`\log\mu/\mu` for tiny :math:`\mu`) amplified to errors of -27 bits
       (points on a line in R^50, N = 2000, sigma = 10) and 3901 bits (N = 10, D = 1).

    All randomness comes from ``torch.Generator().manual_seed(seed)`` on the CPU (identical on
    every rank and device); the vectors then live on x's device in ``dtype``. ``x`` must already be
    a validated, finite float (N, D) tensor.

    Returns:
        0-dim tensor (``dtype``), bits; higher = flatter diffusion spectrum.

    Raises:
        ValueError: for an ``estimator`` other than ``"cv2"`` and ``"exact_z"``.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"`estimator` must be one of {_ESTIMATORS}; got {estimator!r}.")
    n = x.shape[0]
    if n <= 1:
        return torch.zeros((), dtype=dtype, device=x.device)
    kernel = _GaussianKernel(
        x,
        sigma=sigma,
        kernel_dtype=kernel_dtype,
        block_rows=block_rows,
        memory_budget_bytes=memory_budget_bytes,
    )
    op = _DiffusionOperator(kernel, dtype)
    generator = torch.Generator().manual_seed(int(seed))
    probes = _rademacher(n, num_lanczos_probes, generator, dtype, x.device)
    rank = min(int(num_deflate), n - 2)
    starts = probes
    if rank > 0:
        basis = _dominant_basis(op, rank, generator, x.device)
        starts = torch.cat([basis, probes - basis @ (basis.T @ probes)], dim=1)
    nodes, weights = _lanczos_quadrature(op.matvec, starts, num_lanczos_steps, deflate=op.top)
    forms = _QuadratureForms.of(nodes, weights, t)
    variates = _control_variates(op, forms, rank) if estimator == "cv2" else None
    trace_f = _split_trace(forms.f, rank, variates)
    z = op.trace if t == 1 else _split_trace(forms.z, rank, variates) + 1.0
    return torch.log2(z) - trace_f / z
