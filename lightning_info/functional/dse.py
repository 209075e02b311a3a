r"""Diffusion Spectral Entropy (DSE) and Diffusion Spectral Mutual Information (DSMI).

Implements Liao, Liu, Christensen, Tong, Huguet, Wolf, Nickel, Adelstein, Krishnaswamy,
*Assessing Neural Network Representations During Training Using Noise-Resilient Diffusion Spectral
Entropy*, IEEE CISS 2024 (arXiv 2312.04823), Sec. II (DSE, the entropy of the normalised diffusion
spectrum) and Sec. III (DSMI, :math:`I(Z;B) = S_D(Z) - S_D(Z \mid B)`), with the semantics of the
authors' reference functions (Gaussian kernel with fixed :math:`\sigma`, symmetric normalisation, all
eigenvalues, :math:`|\lambda|^t`, bits) but computed in O(N^2) memory passes plus one eigensolve,
with a local random generator and input validation.

Layout (torchmetrics style): ``_dse_update`` validates, ``_dse_compute`` / ``_dsmi_compute`` are
the pure cores on validated tensors, and the public functions chain the two. The metrics layer
(:mod:`lightning_info.metrics.dse`) uses exactly these private names and no others:
``_check_dse_options`` / ``_check_dsmi_options`` (option validation), ``_dse_update`` (batch
validation), ``_reference_labels`` (a DSMI reference into group ids), ``_dsmi_compute`` and
``_information_profile`` (the cores; the profile returns DSE with its spectrum, and every DSMI of
a set of groupings, as a :class:`_Profile`).

Eigensolvers. Each :class:`~lightning_info.utilities.enums.EigenSolver` member has one entry in
``_DISPATCH``, which picks the :class:`_Backend` that runs on N rows; the cores only ask that
backend for the DSE and whether it is ``dense`` (forms the N x N affinity, so DSMI's subsets and
the profile share it, under the up-front memory guard). Adding a solver is one module (its DSE
function), one enum member and one ``_DISPATCH`` entry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_info.functional.diffusion import (
    _check_sigma,
    _gaussian_affinity,
    _offdiag_median,
    _resolve_dtype,
    _resolve_width,
)
from lightning_info.utilities.checks import (
    _as_tensor,
    _check_choice,
    _check_finite,
    _check_int,
    _check_ndim,
)
from lightning_info.utilities.enums import EigenSolver
from lightning_info.utilities.memory import check_memory

__all__ = [
    "cluster_reference",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
]

#: Default working precision of kernel and eigensolve. Chosen by measurement: plain float32
#: eigensolves miss the reference by up to 2.2e-4 bits on near-rank-1 kernels (uniform [0,1]^10
#: at N=2000), above the 1e-4-bit budget, so the default is float64 (see ``tests/functional``).
_DEFAULT_DTYPE = torch.float64
#: ``solver="auto"`` uses the exact eigensolve up to this many samples and Lanczos above.
_AUTO_EXACT_MAX_N = 4096
#: Below this N, ``solver="lanczos"`` computes the exact spectrum instead: it costs well under a
#: second there. (Fuzzing first found the stochastic estimate far off on nearly rank-deficient
#: kernels, N = 10, D = 1, sigma = 10: 3901.7 bits vs exact 0.061; the cause was the second control
#: variate amplifying float32 round-off, guarded in ``lanczos.py`` since, which gives 0.0606 there.)
_LANCZOS_MIN_N = 1024
#: ``discrete=None`` treats a float reference as class labels if all its values are whole
#: numbers and it has at most this many distinct values.
_MAX_INFERRED_CLASSES = 100
_LN2 = math.log(2.0)
_SOLVERS = tuple(s.value for s in EigenSolver)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _dse_update(embeddings: Any, name: str = "embeddings") -> Tensor:
    """Validate one batch of embeddings and return it as a floating tensor (no copy if possible).

    Checks: array of numbers, 2-D (N, D), all finite. Integer input becomes float64.
    The sample count is not checked here (a batch may hold a single row).

    Returns:
        The (N, D) floating tensor.
    """
    x = _as_tensor(embeddings, name)
    _check_ndim(x, name, (2,), "2-D (N, D)")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    _check_finite(x, name)
    return x


def _check_num_samples(x: Tensor, name: str = "embeddings") -> None:
    if x.shape[0] < 2:
        raise ValueError(f"`{name}` must have at least 2 samples (rows); got {x.shape[0]}.")


def _check_t(t: Any) -> float:
    """Return the diffusion time as float after checking it is a finite number >= 1.

    Returns:
        ``float(t)``.

    Raises:
        TypeError: if ``t`` is not a number (bools are rejected).
        ValueError: if it is not finite or < 1.
    """
    if isinstance(t, bool) or (not isinstance(t, (int, float)) and not hasattr(t, "__float__")):
        raise TypeError(f"`t` must be a number >= 1; got {type(t).__name__} {t!r}.")
    value = float(t)
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"`t` (diffusion time) must be a finite number >= 1; got {t!r}.")
    return value


def _check_dse_options(
    sigma: Any,
    t: Any,
    dtype: Any,
    solver: Any,
    num_lanczos_probes: Any,
    num_lanczos_steps: Any,
    seed: Any,
) -> tuple[float, float, torch.dtype, str, int, int, int]:
    sigma = _check_sigma(sigma)
    t = _check_t(t)
    work_dtype = _resolve_dtype(dtype, _DEFAULT_DTYPE)
    solver = _check_choice(solver, "solver", _SOLVERS)
    num_lanczos_probes = _check_int(num_lanczos_probes, "num_lanczos_probes", minimum=1)
    num_lanczos_steps = _check_int(num_lanczos_steps, "num_lanczos_steps", minimum=1)
    seed = _check_int(seed, "seed")
    return sigma, t, work_dtype, solver, num_lanczos_probes, num_lanczos_steps, seed


def _check_memory_limit(memory_limit_bytes: Any) -> int | None:
    """The ``memory_limit_bytes`` option: None (the default budget) or an int >= 1.

    Returns:
        ``memory_limit_bytes``.
    """
    return _check_int(memory_limit_bytes, "memory_limit_bytes", minimum=1, allow_none=True)


def _check_dsmi_options(discrete: Any, num_clusters: Any, num_repeats: Any) -> tuple[Any, int, int]:
    """Validate DSMI's own options (the kernel options are :func:`_check_dse_options`').

    Returns:
        ``(discrete, num_clusters, num_repeats)``.
    """
    return (
        _check_discrete(discrete),
        _check_int(num_clusters, "num_clusters", minimum=2),
        _check_int(num_repeats, "num_repeats", minimum=1),
    )


def _subsample_indices(n: int, max_samples: int | None, seed: int) -> Tensor | None:
    """Indices of a seeded uniform subsample of size ``max_samples``.

    Returns:
        (max_samples,) int64 indices, or None when N <= ``max_samples`` (no subsampling).
    """
    if max_samples is None or n <= max_samples:
        return None
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:max_samples]


# --------------------------------------------------------------------------------------------
# pure cores
# --------------------------------------------------------------------------------------------
def _spectral_entropy_bits(eigvals: Tensor, t: float) -> Tensor:
    r"""Entropy in bits of :math:`p_i = |\lambda_i|^t / \sum_j |\lambda_j|^t` (0 log 0 := 0).

    Returns:
        0-dim float64 tensor.
    """
    a = eigvals.to(torch.float64).abs().pow(t)
    p = a / a.sum()
    return torch.special.entr(p).sum() / _LN2


def _exact_eigvals(x: Tensor, sigma: float | str, dtype: torch.dtype) -> Tensor:
    r"""All eigenvalues of the diffusion kernel of ``x`` (order not guaranteed).

    The Perron pair of :math:`K` is known in closed form (:math:`K v = v` with
    :math:`v = \sqrt{d} / \|\sqrt{d}\|`), so it is deflated before the eigensolve:
    :math:`K' = K - v v^\top` has the spectrum of :math:`K` with that 1 replaced by 0. The kernel
    and the deflation are formed in float64 and only the eigensolve runs in ``dtype``; the
    absolute eigenvalue error then scales with :math:`\lambda_2` instead of 1, which keeps float32
    accurate on nearly rank-one kernels. The computed eigenvalue closest to 0 is replaced by the
    exact 1 (see :func:`_affinity_eigvals`).

    Returns:
        (N,) float64 eigenvalues.
    """
    return _affinity_eigvals(_gaussian_affinity(x.to(_build_dtype(x)), sigma)[None], dtype)[0]


def _build_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.device.type != "mps" else torch.float32


def _affinity_eigvals(g: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Eigenvalues of the diffusion kernels of a batch of affinity matrices (B, n, n) -> (B, n).

    ``g`` is overwritten: symmetric normalization :math:`K = D^{-1/2} G D^{-1/2}` (by the outer
    product of :math:`d^{-1/2}`, so K is exactly symmetric), exact in-place deflation of the
    Perron pair, one batched ``eigvalsh`` in ``dtype``, the eigenvalue closest to 0 replaced by
    the exact 1. Used for single kernels (:func:`_exact_eigvals`) and DSMI's subsets alike.

    Returns:
        (B, n) float64 eigenvalues.
    """
    d = g.sum(dim=-1)
    s = d.rsqrt()
    g.mul_(s[:, :, None] * s[:, None, :])
    v = d.sqrt()
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    g.baddbmm_(v[:, :, None], v[:, None, :], alpha=-1.0)  # K' = K - v v^T
    eigvals = torch.linalg.eigvalsh(g.to(dtype)).to(torch.float64)
    drop = eigvals.abs().argmin(dim=-1, keepdim=True)
    eigvals = eigvals.scatter(-1, drop, 1.0)  # the deflated 1, computed as ~0, set back exactly
    return eigvals


def _dse_exact(x: Tensor, *, sigma: float | str, t: float, dtype: torch.dtype, **_: Any) -> Tensor:
    """DSE in bits from all eigenvalues (``torch.linalg.eigvalsh``) of the diffusion kernel.

    Returns:
        0-dim float64 tensor.
    """
    return _spectral_entropy_bits(_exact_eigvals(x, sigma, dtype), t)


def _dse_by_lanczos(
    x: Tensor,
    *,
    sigma: float | str,
    t: float,
    dtype: torch.dtype,
    num_lanczos_probes: int,
    num_lanczos_steps: int,
    seed: int,
    **_: Any,
) -> Tensor:
    """DSE in bits by stochastic Lanczos quadrature (:mod:`lightning_info.functional.lanczos`).

    Returns:
        0-dim tensor in ``dtype``.
    """
    from lightning_info.functional.lanczos import _dse_lanczos

    return _dse_lanczos(
        x,
        sigma=_resolve_width(x, sigma),
        t=t,
        num_lanczos_probes=num_lanczos_probes,
        num_lanczos_steps=num_lanczos_steps,
        seed=seed,
        dtype=dtype,
    )


@dataclass(frozen=True)
class _Backend:
    """A concrete way of computing DSE from validated rows.

    Attributes:
        dse: ``dse(x, *, sigma, t, dtype, num_lanczos_probes, num_lanczos_steps, seed)`` -> 0-dim
            tensor of bits (extra keywords are ignored).
        dense: whether it forms the N x N affinity and all eigenvalues: DSMI's group and subset
            kernels are then sub-blocks of one affinity, and the memory guard
            (:func:`_check_exact_memory`) applies.
    """

    dse: Callable[..., Tensor]
    dense: bool


_EXACT = _Backend(_dse_exact, dense=True)
_LANCZOS = _Backend(_dse_by_lanczos, dense=False)

#: The eigensolver dispatch table: each ``EigenSolver`` member -> the backend it runs on n rows.
#: ``"lanczos"`` computes the exact spectrum below 1024 rows (see ``_LANCZOS_MIN_N``); ``"auto"``
#: is exact up to 4096 rows.
_DISPATCH: dict[EigenSolver, Callable[[int], _Backend]] = {
    EigenSolver.EXACT: lambda n: _EXACT,
    EigenSolver.LANCZOS: lambda n: _LANCZOS if n >= _LANCZOS_MIN_N else _EXACT,
    EigenSolver.AUTO: lambda n: _LANCZOS if n > _AUTO_EXACT_MAX_N else _EXACT,
}


def _backend(solver: str | EigenSolver, n: int) -> _Backend:
    """The backend that a ``solver`` choice runs on ``n`` rows (validated here).

    Returns:
        The :class:`_Backend` of ``_DISPATCH``.
    """
    return _DISPATCH[EigenSolver(_check_choice(solver, "solver", _SOLVERS))](n)


def _exact_peak_bytes(
    n: int, d: int, build_itemsize: int, num_subsets: int = 0, largest: int = 0
) -> int:
    """Estimated peak memory of the dense (exact) path on ``n`` rows of ``d`` features.

    The distance pass holds three N x N arrays at once (the squared distances, their symmetrized
    sum and its half; the eigensolve of the affinity needs at most the same: the matrix, a
    working-precision copy and LAPACK's copy), plus three copies of the rows (cast, scaled,
    centred) and a few length-N vectors. DSMI's subsets add, next to the shared affinity,
    ``num_subsets`` gathered ``largest`` x ``largest`` blocks and eigensolver copies of them.
    Checked against the PyTorch profiler's peak in ``tests/test_memory_safety.py`` (3.0 N^2 x 8
    bytes for DSE, 11.0 for DSMI with five subsets of N - 10 rows).

    Returns:
        The estimate in bytes.
    """
    rows = (3 * n * d + 64 * n) * build_itemsize
    subsets = n * n * build_itemsize + 2 * num_subsets * largest * largest * 8
    return rows + max(3 * n * n * build_itemsize, subsets if num_subsets else 0)


def _check_exact_memory(
    x: Tensor | tuple[int, int],
    limit: int | None,
    what: str,
    num_subsets: int = 0,
    largest: int = 0,
) -> None:
    """Refuse the dense path before it allocates when its estimated peak exceeds ``limit``.

    Raises:
        MemoryBudgetError: naming the estimate and ``solver="lanczos"``.
    """  # noqa: DOC502 (raised by check_memory)
    n, d = x if isinstance(x, tuple) else tuple(x.shape)
    itemsize = 8 if isinstance(x, tuple) else _build_dtype(x).itemsize
    estimate = _exact_peak_bytes(n, d, itemsize, num_subsets, largest)
    check_memory(
        estimate,
        limit_bytes=limit,
        what=f"exact {what} on N = {n} samples (N x N kernel and all its eigenvalues)",
        cheaper='solver="lanczos" (or a smaller `max_samples`)',
    )


def _dse_compute(
    x: Tensor,
    *,
    sigma: float | str = 10.0,
    t: float = 1,
    dtype: torch.dtype | str | None = None,
    solver: str | EigenSolver = "exact",
    num_lanczos_probes: int = 16,
    num_lanczos_steps: int = 32,
    seed: int = 0,
    memory_limit_bytes: int | None = None,
) -> Tensor:
    """DSE in bits of an already validated floating (N, D) tensor, N >= 2.

    Returns:
        0-dim float64 tensor (the Lanczos solver returns the working dtype).

    Raises:
        MemoryBudgetError: if the dense path's estimated peak exceeds ``memory_limit_bytes``.
    """  # noqa: DOC502 (raised by _check_exact_memory)
    work_dtype = _resolve_dtype(dtype, _DEFAULT_DTYPE)
    n = x.shape[0]
    backend = _backend(solver, n)
    if n < 2:
        return x.new_zeros((), dtype=torch.float64)
    if backend.dense:
        _check_exact_memory(x, memory_limit_bytes, "DSE")
    return backend.dse(
        x,
        sigma=sigma,
        t=t,
        dtype=work_dtype,
        num_lanczos_probes=num_lanczos_probes,
        num_lanczos_steps=num_lanczos_steps,
        seed=seed,
    )


def _dsmi_compute(
    x: Tensor,
    labels: Tensor,
    *,
    sigma: float | str = 10.0,
    t: float = 1,
    num_repeats: int = 5,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    solver: str | EigenSolver = "exact",
    num_lanczos_probes: int = 16,
    num_lanczos_steps: int = 32,
    affinity: Tensor | None = None,
    max_samples: int | None = None,
    memory_limit_bytes: int | None = None,
) -> Tensor:
    r"""DSMI in bits of a validated (N, D) float tensor and (N,) group ids (0-dim float64).

    For each group c with :math:`n_c` members: :math:`S_D(Z \mid B=c)` on the members and
    :math:`\mathbb{E}[S_D(Z^*_c)]` as the mean DSE of ``num_repeats`` uniform random subsets of size
    :math:`n_c` drawn (without replacement) from all N rows by one local generator seeded with
    ``seed``. Groups of one sample contribute 0; a group holding every sample contributes 0 exactly
    (its random subsets are the whole set).

    ``affinity``: the (N, N) Gaussian affinity of ``x`` at ``sigma``, when the caller already
    has it (see :func:`_information_profile`); it is only read. Without it, it is computed here
    (exact solver) or not formed at all (Lanczos). ``max_samples``: a seeded uniform subsample of
    the rows (and their labels) above it, as in the public function.

    Returns:
        0-dim float64 tensor, bits.

    Raises:
        ValueError: for fewer than 2 samples.
        MemoryBudgetError: if the dense path's estimated peak exceeds ``memory_limit_bytes``.
    """  # noqa: DOC502 (raised by the checks)
    x, labels = _subsample(x, labels, max_samples=max_samples, seed=seed)
    n = x.shape[0]
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    generator = torch.Generator().manual_seed(seed)
    inverse = inverse.to(x.device)
    options = dict(
        sigma=sigma,
        t=t,
        dtype=dtype,
        solver=solver,
        num_lanczos_probes=num_lanczos_probes,
        num_lanczos_steps=num_lanczos_steps,
        memory_limit_bytes=memory_limit_bytes,
    )
    # When N rows are solved exactly, so is every subset: the affinity of a subset is the
    # sub-block of the affinity of all rows, so the pairwise distances are computed once and the
    # num_repeats equal-size random subsets of a group share one batched eigensolve.
    shared = _backend(solver, n).dense
    work_dtype = _resolve_dtype(dtype, _DEFAULT_DTYPE)
    if shared:
        _check_exact_memory(x, memory_limit_bytes, "DSMI", num_repeats, _largest_group(counts, n))
    if shared and affinity is None:
        affinity = _gaussian_affinity(x.to(_build_dtype(x)), sigma)
    if not shared:  # a rule's width comes from all N rows, then holds for every subset
        options["sigma"] = _resolve_width(x, sigma)

    def entropies(subsets: list[Tensor], seeds: list[int]) -> Tensor:
        if affinity is not None:
            idx = torch.stack(subsets)
            g = affinity[idx[:, :, None], idx[:, None, :]]
            eigvals = _affinity_eigvals(g, work_dtype)
            return torch.stack([_spectral_entropy_bits(ev, t) for ev in eigvals])
        return torch.stack(
            [_dse_compute(x[i], seed=sd, **options) for i, sd in zip(subsets, seeds)]
        )

    mi = torch.zeros((), dtype=torch.float64, device=x.device)
    for group, n_c in enumerate(counts.tolist()):
        if n_c < 2 or n_c == n:
            continue
        sub_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        members = (inverse == group).nonzero().flatten()
        h_cond = entropies([members], [sub_seed])[0]
        subsets, seeds = _random_subsets(n, n_c, num_repeats, generator, x.device)
        h_star = entropies(subsets, seeds).sum()
        mi = mi + (n_c / n) * (h_star / num_repeats - h_cond)
    return mi


def _largest_group(counts: Tensor, n: int) -> int:
    """Size of the largest group whose conditional DSE is computed (2 <= n_c < N), else 0.

    Returns:
        The size.
    """
    sizes = [c for c in counts.tolist() if 2 <= c < n]
    return max(sizes, default=0)


def _subsample(
    x: Tensor, *others: Tensor, max_samples: int | None, seed: int
) -> tuple[Tensor, ...]:
    """A seeded uniform subsample of ``max_samples`` rows of ``x`` and ``others`` together.

    Returns:
        ``(x, *others)``, unchanged when N <= ``max_samples`` (or None).

    Raises:
        ValueError: if fewer than 2 rows remain.
    """  # noqa: DOC502 (raised by _check_num_samples)
    idx = _subsample_indices(x.shape[0], max_samples, seed)
    if idx is not None:
        x, others = x[idx.to(x.device)], tuple(o[idx.to(o.device)] for o in others)
    _check_num_samples(x)
    return (x, *others)


def _check_profile_memory(
    shape: tuple[int, int] | torch.Size,
    groups: Any,
    *,
    solver: str | EigenSolver,
    num_repeats: int,
    limit: int | None,
) -> None:
    """The memory guard of :func:`_information_profile` on (N, D) rows and (N,) group ids.

    Also called by the monitor when it draws its probe (D unknown there: 0), so that a probe too
    large for the exact path is refused at train start, not at the first evaluation.

    Raises:
        MemoryBudgetError: if the dense path's estimated peak exceeds ``limit``.
    """  # noqa: DOC502 (raised by _check_exact_memory)
    n = int(shape[0])
    if not _backend(solver, n).dense:
        return
    largest = max(
        (_largest_group(torch.unique(g, return_counts=True)[1], n) for g in groups), default=0
    )
    _check_exact_memory(
        (n, int(shape[1])), limit, "DSE/DSMI", num_repeats if largest else 0, largest
    )


def _random_subsets(
    n: int, size: int, num_repeats: int, generator: torch.Generator, device: torch.device
) -> tuple[list[Tensor], list[int]]:
    r"""The subsets :math:`Z^*_c` of one group: uniform, without replacement, from all N rows.

    Returns:
        ``(subsets, seeds)``: ``num_repeats`` (size,) index tensors on ``device`` and a seed
        for each (its Lanczos probes), drawn alternately from ``generator``.
    """
    subsets, seeds = [], []
    for _ in range(num_repeats):
        subsets.append(torch.randperm(n, generator=generator)[:size].to(device))
        seeds.append(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    return subsets, seeds


@dataclass
class _Profile:
    """DSE, DSMIs and by-products of one set of embeddings (see :func:`_information_profile`).

    Attributes:
        dse: 0-dim float64, bits.
        dsmi: ``{name: 0-dim float64}``, bits, one per grouping.
        eigvals: (N,) eigenvalues of the diffusion operator (exact solver), else None.
        median_affinity: median off-diagonal entry of the Gaussian affinity (exact solver and a
            fixed ``sigma``), else None: with a fixed ``sigma`` the median distance is
            ``sigma * sqrt(-2 log(median_affinity))``, the feature scale in units of ``sigma``.
    """

    dse: Tensor
    dsmi: dict[str, Tensor]
    eigvals: Tensor | None
    median_affinity: float | None


def _information_profile(
    x: Tensor,
    groups: Mapping[str, Tensor],
    *,
    sigma: float | str = 10.0,
    t: float = 1,
    num_repeats: int = 5,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    solver: str | EigenSolver = "exact",
    num_lanczos_probes: int = 16,
    num_lanczos_steps: int = 32,
    max_samples: int | None = None,
    memory_limit_bytes: int | None = None,
) -> _Profile:
    """DSE and the DSMI with each grouping of one validated (N, D) tensor, sharing the work.

    With a dense backend (the exact solver) the Gaussian affinity is computed once (one
    O(N^2 D) distance pass) and serves DSE and every DSMI, whose group and subset kernels are its
    sub-blocks; the values are those of separate :func:`_dse_compute` / :func:`_dsmi_compute`
    calls with the same options. With Lanczos each quantity is computed on its own.
    ``max_samples``: a seeded uniform subsample of the rows (and their groups) above it.

    Returns:
        A :class:`_Profile`.

    Raises:
        ValueError: for fewer than 2 samples.
        MemoryBudgetError: if the dense path's estimated peak exceeds ``memory_limit_bytes``.
    """  # noqa: DOC502 (raised by the checks)
    names = list(groups)
    x, *columns = _subsample(x, *groups.values(), max_samples=max_samples, seed=seed)
    groups = dict(zip(names, columns))
    options = dict(
        sigma=sigma,
        t=t,
        dtype=dtype,
        solver=solver,
        num_lanczos_probes=num_lanczos_probes,
        num_lanczos_steps=num_lanczos_steps,
        memory_limit_bytes=memory_limit_bytes,
    )
    n = x.shape[0]
    if not _backend(solver, n).dense:
        dse = _dse_compute(x, seed=seed, **options)
        mi = {
            k: _dsmi_compute(x, g, num_repeats=num_repeats, seed=seed, **options)
            for k, g in groups.items()
        }
        return _Profile(dse, mi, None, None)
    _check_profile_memory(
        x.shape, columns, solver=solver, num_repeats=num_repeats, limit=memory_limit_bytes
    )
    affinity = _gaussian_affinity(x.to(_build_dtype(x)), sigma)
    # the feature scale in units of a fixed sigma (a width rule sets it by construction)
    median_affinity = None if isinstance(sigma, str) else _offdiag_median(affinity)
    eigvals = _affinity_eigvals(affinity.clone()[None], _resolve_dtype(dtype, _DEFAULT_DTYPE))[0]
    mi = {
        k: _dsmi_compute(x, g, num_repeats=num_repeats, seed=seed, affinity=affinity, **options)
        for k, g in groups.items()
    }
    return _Profile(_spectral_entropy_bits(eigvals, t), mi, eigvals, median_affinity)


# --------------------------------------------------------------------------------------------
# reference (B) handling
# --------------------------------------------------------------------------------------------
def _infer_discrete(y: Tensor) -> bool:
    """The ``discrete=None`` rule for a 1-D reference (see the DSMI docstring).

    Returns:
        True for integer/bool dtypes, or whole-number floats with at most 100 distinct values.
    """
    if not y.is_floating_point():
        return True
    if not bool((y == y.round()).all()):
        return False
    return int(torch.unique(y).numel()) <= _MAX_INFERRED_CLASSES


def _bin_scalar(y: Tensor, num_bins: int) -> Tensor:
    """Min-max scale to [0, 1] and cut into ``num_bins`` equal-width bins -> ids 0..num_bins-1.

    Same as the reference's ``np.digitize(scaled, np.linspace(0, 1, num_bins + 1)[:-1]) - 1``
    (left-closed bins; the maximum falls into the last bin).

    Returns:
        (N,) int64 bin ids (all 0, with a warning, for a constant reference).
    """
    y = y.to(torch.float64)
    lo, hi = y.min(), y.max()
    if not bool(hi > lo):
        warnings.warn(
            "`reference` is constant: all samples fall into one bin, so the mutual information "
            "is 0. Pass class labels or a non-constant reference if this is unexpected.",
            UserWarning,
            stacklevel=3,
        )
        return torch.zeros(y.shape, dtype=torch.long, device=y.device)
    scaled = (y - lo) / (hi - lo)
    edges = torch.arange(num_bins, dtype=torch.float64, device=y.device) * (1.0 / num_bins)
    return torch.bucketize(scaled, edges, right=True) - 1


def cluster_reference(
    reference: Any,
    *,
    num_clusters: int = 10,
    seed: int = 0,
    num_neighbors: int = 10,
    method: str = "spectral",
) -> Tensor:
    r"""Cluster reference vectors (e.g. flattened inputs) into groups for DSMI.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. III: a vector-valued :math:`B` (such as the input
    images for :math:`I(Z;X)`) is discretised by spectral clustering before the conditional DSEs
    are taken. As the reference, ``method="spectral"`` runs
    ``sklearn.cluster.SpectralClustering(n_clusters=num_clusters, affinity="nearest_neighbors",
    n_neighbors=num_neighbors, assign_labels="cluster_qr", random_state=seed)`` on float64 CPU
    copies of the vectors; ``num_neighbors`` is capped at N - 1 for small N. Compute it once and
    pass the result as ``clusters=`` to :func:`diffusion_spectral_mutual_information` at every
    epoch.

    ``method="kmeans"`` runs ``sklearn.cluster.KMeans(n_clusters=num_clusters, n_init=1,
    random_state=seed)`` on float32 CPU copies: cheap enough to group a layer's own features at
    every evaluation, which gives the label-free DSMI(Z; k-means(Z)) of the monitor's ``dsmi_z``
    (``docs/dse.md``).

    .. math::

        c_i = \mathrm{SpectralClustering}_k(\{b_j\}_{j=1}^N)_i \in \{0, \dots, k-1\}.

    Args:
        reference: (N,) or (N, D') tensor or numpy array of finite numbers, N >= 2.
        num_clusters: number of groups k, 2 <= k < N. Default 10 (the reference's).
        seed: ``random_state`` of the clustering (no global RNG is touched).
        num_neighbors: neighbours of the kNN affinity graph, >= 1 (capped at N - 1). Default 10.
        method: ``"spectral"`` (default, the reference's) or ``"kmeans"``.

    Returns:
        (N,) ``torch.long`` tensor of group ids in ``[0, num_clusters)`` on the reference's device.

    Raises:
        TypeError: if ``reference`` is not array-like numbers or an integer option is not an int.
        ValueError: if ``reference`` is not 1-D/2-D, has fewer than 2 rows or non-finite values,
            or ``num_clusters`` is outside ``[2, N - 1]``, or ``method`` is unknown.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> b = torch.cat([torch.randn(20, 3, generator=g), torch.randn(20, 3, generator=g) + 20])
        >>> c = cluster_reference(b, num_clusters=2)
        >>> (c[:20] == c[0]).all().item(), (c[20:] == c[20]).all().item(), (c[0] != c[20]).item()
        (True, True, True)
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    y = _as_tensor(reference, "reference")
    _check_ndim(y, "reference", (1, 2), "1-D (N,) or 2-D (N, D')")
    _check_finite(y, "reference")
    n = y.shape[0]
    if n < 2:
        raise ValueError(f"`reference` must have at least 2 samples (rows); got {n}.")
    num_clusters = _check_int(num_clusters, "num_clusters", minimum=2)
    method = _check_choice(method, "method", ("spectral", "kmeans"))
    if num_clusters >= n:
        what = "spectral clustering" if method == "spectral" else "k-means"
        raise ValueError(
            f"`num_clusters` must be < the number of samples ({n}) for {what}; got {num_clusters}."
        )
    seed = _check_int(seed, "seed")
    num_neighbors = _check_int(num_neighbors, "num_neighbors", minimum=1)
    if method == "kmeans":
        labels = _kmeans_labels(
            y.detach().to("cpu", torch.float32).reshape(n, -1), num_clusters, seed
        )
    else:
        labels = _spectral_labels(
            y.detach().to("cpu", torch.float64).reshape(n, -1), num_clusters, seed, num_neighbors
        )
    return torch.as_tensor(labels, dtype=torch.long, device=y.device)


def _spectral_labels(data: Tensor, num_clusters: int, seed: int, num_neighbors: int) -> Any:
    """Spectral clustering of (N, D) rows on a kNN graph (the DSE reference's grouping).

    Returns:
        (N,) numpy labels.
    """
    from sklearn.cluster import SpectralClustering

    model = SpectralClustering(
        n_clusters=num_clusters,
        affinity="nearest_neighbors",
        n_neighbors=min(num_neighbors, data.shape[0] - 1),
        assign_labels="cluster_qr",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # "Graph is not fully connected" is expected for well separated groups; the embedding
        # is still valid for clustering.
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        return model.fit(data.numpy()).labels_


def _kmeans_labels(data: Tensor, num_clusters: int, seed: int) -> Any:
    """k-means (one seeded initialization) of (N, D) rows.

    Returns:
        (N,) numpy labels.
    """
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=num_clusters, n_init=1, random_state=seed).fit(data.numpy()).labels_


def _check_discrete(discrete: Any) -> bool | None:
    """The ``discrete`` option: None (infer), True or False.

    Returns:
        ``discrete``.

    Raises:
        TypeError: for any other value.
    """
    if discrete is not None and not isinstance(discrete, bool):
        raise TypeError(f"`discrete` must be None, True or False; got {discrete!r}.")
    return discrete


def _validate_clusters(clusters: Any, n: int) -> Tensor:
    labels = _as_tensor(clusters, "clusters")
    _check_ndim(labels, "clusters", (1,), "1-D (N,) integer group ids")
    if labels.is_floating_point():
        raise TypeError(f"`clusters` must hold integer group ids; got dtype {labels.dtype}.")
    if labels.shape[0] != n:
        raise ValueError(
            "`embeddings` and `clusters` must have the same number of samples; "
            f"got {n} and {labels.shape[0]}."
        )
    return labels.to(torch.long)


def _reference_labels(
    reference: Any,
    n: int,
    *,
    discrete: bool | None,
    num_clusters: int,
    seed: int,
    clusters: Any = None,
) -> Tensor:
    """Turn the DSMI/CSMI ``reference`` (or given ``clusters``) into (N,) long group ids.

    Returns:
        (N,) int64 group ids.

    Raises:
        ValueError: (and TypeError, from the checks) as documented in
            :func:`diffusion_spectral_mutual_information`.
    """
    _check_discrete(discrete)
    num_clusters = _check_int(num_clusters, "num_clusters", minimum=2)
    if clusters is not None:
        return _validate_clusters(clusters, n)
    if reference is None:
        raise ValueError("`reference` is required unless `clusters` is given; got None.")
    y = _as_tensor(reference, "reference")
    _check_ndim(y, "reference", (1, 2), "1-D (N,) or 2-D (N, D')")
    if y.shape[0] != n:
        raise ValueError(
            "`embeddings` and `reference` must have the same number of samples; "
            f"got {n} and {y.shape[0]}."
        )
    _check_finite(y, "reference")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if discrete:
            raise ValueError(
                f"`discrete=True` needs a 1-D reference of class labels; got shape {tuple(y.shape)}."
            )
        return cluster_reference(y, num_clusters=num_clusters, seed=seed)
    if discrete is None:
        discrete = _infer_discrete(y)
    if discrete:
        return torch.unique(y, return_inverse=True)[1].to(torch.long)
    return _bin_scalar(y, num_clusters)


# --------------------------------------------------------------------------------------------
# public functions
# --------------------------------------------------------------------------------------------
def diffusion_spectral_entropy(
    embeddings: Any,
    *,
    sigma: float | str = 10.0,
    t: float = 1,
    max_samples: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | str | None = None,
    solver: str | EigenSolver = "exact",
    num_lanczos_probes: int = 16,
    num_lanczos_steps: int = 32,
    memory_limit_bytes: int | None = None,
) -> Tensor:
    r"""Compute the diffusion spectral entropy (DSE) of a set of embeddings, in bits.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II, Eq. (DSE): with the symmetric diffusion
    kernel :math:`K = D^{-1/2} G D^{-1/2}` of the Gaussian affinity
    :math:`G_{ij} = \exp(-\|z_i - z_j\|^2 / 2\sigma^2)` (see :func:`diffusion_kernel`) and its
    eigenvalues :math:`\lambda_1, \dots, \lambda_N`,

    .. math::

        p_i = \frac{|\lambda_i|^t}{\sum_j |\lambda_j|^t}, \qquad
        S_D(Z, t) = -\sum_{i=1}^N p_i \log_2 p_i \quad (0 \log 0 := 0).

    Same semantics as the authors' reference (absolute eigenvalues, bits, fixed
    :math:`\sigma`), with these documented differences: the reference adds ``eps = 2.2e-16`` to
    every :math:`p_i`, which changes the value by at most :math:`N \cdot eps \cdot \log_2(1/eps)`
    (about 1e-11 bits at N = 1000), and we do not; the reference subsamples above 10000 rows by
    default with Python's global ``random``, while here ``max_samples`` defaults to no
    subsampling and uses a local ``torch.Generator`` (same distribution, different draws).
    The known top eigenpair is deflated before the eigensolve (exact in exact arithmetic;
    see the precision note below).

    DSE is not scale-invariant (the fixed :math:`\sigma` is in the units of the embeddings) and
    grows with N (ceiling :math:`\log_2 N`): compare values at a fixed sample count and scale.
    :math:`0 \le S_D \le \log_2 N`; it is 0 for identical points, :math:`\log_2 k` for k tight,
    well separated clusters, and strictly decreasing in ``t``.

    Precision: ``dtype=None`` means float64. It was chosen by measurement: a plain float32
    eigensolve misses the float64 value by up to 2.2e-4 bits on nearly rank-one kernels
    (uniform [0,1]^10 at N = 2000), above the 1e-4-bit budget. With the deflation, float32 stays
    below 1e-4 bits on the test families (worst measured: a noisy 3-D swiss roll, 1.0e-5, 2.7e-5
    and 4.2e-5 bits at N = 1000, 2000, 4000, so it grows with N) and is about 1.5x faster on
    CPU, so ``dtype=torch.float32`` is a reasonable speed option when ~1e-4 bits do not matter.

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2 (flatten higher-rank
            features first). Runs on the tensor's device.
        sigma: Gaussian kernel bandwidth, > 0, in the units of the embeddings. Default 10 (the
            paper's and reference's fixed value). Or a rule that derives it from the data:
            ``"median"`` (the median pairwise distance) or ``"knn"`` (a width per point, the
            distance to its 10th neighbour; exact solver only); see
            :class:`~lightning_info.utilities.enums.Bandwidth`. With a rule, DSE does not change
            when all embeddings are rescaled by the same factor (a fixed ``sigma`` makes it
            follow the feature scale).
        t: diffusion time, a number >= 1. Default 1.
        max_samples: if given and N > max_samples, DSE is computed on a uniform random subset
            of ``max_samples`` rows drawn with a local generator seeded by ``seed``. Default None
            (use every row).
        seed: seed of the local generator (subsampling, Lanczos probes). No global RNG is used.
        dtype: precision of the eigensolve, ``torch.float64`` (default, None) or
            ``torch.float32``. The kernel is built in float64 either way (float32 on MPS).
        solver: ``"exact"`` (default: all eigenvalues via ``torch.linalg.eigvalsh``),
            ``"lanczos"`` (stochastic Lanczos quadrature, approximate; below N = 1024, where it
            is unreliable on nearly rank-deficient kernels and exact costs under a second, the
            exact spectrum is used) or ``"auto"`` (exact for N <= 4096, Lanczos above). Also accepts :class:`~lightning_info.utilities.enums.EigenSolver`.
        num_lanczos_probes: Lanczos only: number of random probe vectors, >= 1.
        num_lanczos_steps: Lanczos only: Lanczos iterations per probe, >= 1.
        memory_limit_bytes: refusal threshold of the up-front memory guard of the exact path
            (estimated peak 3 N^2 x 8 bytes: 60 GB at N = 50,000), or None for
            :data:`~lightning_info.utilities.memory.DEFAULT_MEMORY_LIMIT_BYTES` (8 GiB).

    Returns:
        0-dim float64 tensor on the input's device: the entropy in bits, in ``[0, log2 N]``.
        Higher = the diffusion spectrum is spread over more directions (richer geometry).

    Raises:
        TypeError: if ``embeddings`` is not array-like numbers, or an option has the wrong type.
        ValueError: if ``embeddings`` is not 2-D, has fewer than 2 rows or NaN/inf values;
            ``sigma <= 0`` (or so extreme that ``sigma**2`` under/overflows), an unknown rule, or
            ``"knn"`` with the Lanczos solver; ``t < 1``; ``max_samples < 2``;
            ``num_lanczos_probes``/``num_lanczos_steps`` < 1; an unknown ``solver``; a ``dtype``
            other than float32/float64.
        MemoryBudgetError: (a ``MemoryError``) before allocating, when the exact path's estimated
            peak exceeds ``memory_limit_bytes``; the message names ``solver="lanczos"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> centers = 100.0 * torch.eye(4, 8)  # 4 far-apart points
        >>> z = centers.repeat_interleave(25, dim=0) + 0.01 * torch.randn(100, 8, generator=g)
        >>> round(diffusion_spectral_entropy(z).item(), 3)  # log2(4): four tight clusters
        2.0
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    x = _dse_update(embeddings)
    _check_num_samples(x)
    sigma, t, work_dtype, solver, num_lanczos_probes, num_lanczos_steps, seed = _check_dse_options(
        sigma, t, dtype, solver, num_lanczos_probes, num_lanczos_steps, seed
    )
    max_samples = _check_int(max_samples, "max_samples", minimum=2, allow_none=True)
    idx = _subsample_indices(x.shape[0], max_samples, seed)
    if idx is not None:
        x = x[idx.to(x.device)]
    return _dse_compute(
        x,
        sigma=sigma,
        t=t,
        dtype=work_dtype,
        solver=solver,
        num_lanczos_probes=num_lanczos_probes,
        num_lanczos_steps=num_lanczos_steps,
        seed=seed,
        memory_limit_bytes=_check_memory_limit(memory_limit_bytes),
    )


def diffusion_spectral_mutual_information(
    embeddings: Any,
    reference: Any,
    *,
    sigma: float | str = 10.0,
    t: float = 1,
    discrete: bool | None = None,
    num_clusters: int = 10,
    num_repeats: int = 5,
    seed: int = 0,
    clusters: Any = None,
    max_samples: int | None = None,
    dtype: torch.dtype | str | None = None,
    solver: str | EigenSolver = "exact",
    num_lanczos_probes: int = 16,
    num_lanczos_steps: int = 32,
    memory_limit_bytes: int | None = None,
) -> Tensor:
    r"""Compute the diffusion spectral mutual information (DSMI) between embeddings and a reference.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. III: :math:`I_D(Z;B) = S_D(Z) - S_D(Z \mid B)`
    with :math:`S_D(Z \mid B) = \sum_c p(c)\, S_D(Z \mid B = c)`, where, as in the authors'
    reference, :math:`S_D(Z)` is estimated at each group's own size :math:`n_c` (DSE grows with
    sample size) by averaging over ``num_repeats`` random subsets :math:`Z^*_c` of all N rows:

    .. math::

        I_D(Z;B) = \sum_c \frac{n_c}{N}\Big(\mathbb{E}\big[S_D(Z^*_c)\big] - S_D(Z \mid B=c)\Big).

    ``reference`` (:math:`B`) is turned into groups as follows (``clusters`` overrides it):

    * 2-D (N, D') with D' > 1 (e.g. flattened inputs): :func:`cluster_reference` into
      ``num_clusters`` groups (spectral clustering, as the reference). Cache it with ``clusters=``.
    * 1-D (N,) or (N, 1), discrete: each distinct value is a class.
    * 1-D, continuous: min-max scaled to [0, 1] and cut into ``num_clusters`` equal-width bins
      (as the reference; outlier-sensitive). A constant reference warns and gives 0.
    * ``discrete=None`` (default) infers *discrete* if the dtype is integer or bool, **or** if
      the values are floats that are all whole numbers with at most 100 distinct values (so
      float labels ``0., 1., ...`` are classes; the reference would bin them). Pass
      ``discrete=True/False`` to decide explicitly.

    Differences from the reference: one local ``torch.Generator`` (seeded by ``seed``) draws
    independent subsets for every group (the reference re-seeds Python's global ``random`` per
    class, so same-size classes share subsets); values agree in distribution, not bit for bit.
    No ``eps`` is added (see :func:`diffusion_spectral_entropy`), groups are never silently
    subsampled, and NaN / non-matching inputs raise instead of returning 0. DSMI can be slightly
    negative (random labels give about 0).

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2.
        reference: (N,) labels or scalars, or (N, D') vectors, finite; may be None if
            ``clusters`` is given.
        sigma: Gaussian kernel bandwidth, > 0 (default 10), or ``"median"`` / ``"knn"`` as in
            :func:`diffusion_spectral_entropy`; a rule's width is derived once from all N rows
            and used for every group and random subset.
        t: diffusion time, >= 1. Default 1.
        discrete: whether a 1-D reference holds class labels (None: infer, see above).
        num_clusters: number of bins (scalar reference) or spectral clusters (vector reference),
            >= 2. Default 10.
        num_repeats: random subsets per group for :math:`\mathbb{E}[S_D(Z^*_c)]`, >= 1. Default 5.
        seed: seed of the local generator (subsets, subsampling) and of the clustering.
        clusters: optional precomputed (N,) integer group ids (e.g. from
            :func:`cluster_reference`); when given, ``reference`` is not used.
        max_samples: if given and N > max_samples, use a seeded uniform random subset of rows
            (embeddings and groups together; groups are computed on all N first).
        dtype: eigensolve precision, ``torch.float64`` (default) or ``torch.float32``.
        solver: ``"exact"`` (default), ``"lanczos"`` or ``"auto"``, as in
            :func:`diffusion_spectral_entropy` (applied to every group-size DSE).
        num_lanczos_probes: Lanczos only, >= 1.
        num_lanczos_steps: Lanczos only, >= 1.
        memory_limit_bytes: refusal threshold of the up-front memory guard of the exact path (the
            N x N affinity plus ``num_repeats`` subset kernels of the largest group), or None for
            :data:`~lightning_info.utilities.memory.DEFAULT_MEMORY_LIMIT_BYTES` (8 GiB).

    Returns:
        0-dim float64 tensor on the embeddings' device: mutual information in bits, at most
        about ``log2 N``; higher = the embedding geometry tells the groups apart better.

    Raises:
        TypeError: on non-numeric inputs, float ``clusters``, or options of the wrong type.
        ValueError: if ``embeddings`` is not 2-D or has fewer than 2 rows; NaN/inf in
            ``embeddings`` or ``reference``; ``reference``/``clusters`` of the wrong rank or a
            different length; ``discrete=True`` with a vector reference; ``reference`` None
            without ``clusters``; ``sigma <= 0`` (or so extreme that ``sigma**2`` under/overflows); ``t < 1``; ``num_clusters < 2`` (or > N when
            clustering); ``num_repeats < 1``; ``max_samples < 2``; unknown ``solver``; bad ``dtype``.
        MemoryBudgetError: (a ``MemoryError``) before allocating, when the exact path's estimated
            peak exceeds ``memory_limit_bytes``; the message names ``solver="lanczos"``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(4).repeat_interleave(25)
        >>> z = 100.0 * torch.eye(4, 8)[y] + 0.01 * torch.randn(100, 8, generator=g)
        >>> round(diffusion_spectral_mutual_information(z, y).item(), 2)  # log2(4) - 0
        2.0
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    x = _dse_update(embeddings)
    _check_num_samples(x)
    sigma, t, work_dtype, solver, num_lanczos_probes, num_lanczos_steps, seed = _check_dse_options(
        sigma, t, dtype, solver, num_lanczos_probes, num_lanczos_steps, seed
    )
    num_repeats = _check_int(num_repeats, "num_repeats", minimum=1)
    max_samples = _check_int(max_samples, "max_samples", minimum=2, allow_none=True)
    labels = _reference_labels(
        reference,
        x.shape[0],
        discrete=discrete,
        num_clusters=num_clusters,
        seed=seed,
        clusters=clusters,
    )
    return _dsmi_compute(
        x,
        labels,
        sigma=sigma,
        t=t,
        num_repeats=num_repeats,
        seed=seed,
        dtype=work_dtype,
        solver=solver,
        num_lanczos_probes=num_lanczos_probes,
        num_lanczos_steps=num_lanczos_steps,
        max_samples=max_samples,
        memory_limit_bytes=_check_memory_limit(memory_limit_bytes),
    )
