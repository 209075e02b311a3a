r"""Gaussian affinities and the symmetric diffusion kernel used by DSE/DSMI.

Implements the kernel of Liao, Liu et al., *Assessing Neural Network Representations During
Training Using Noise-Resilient Diffusion Spectral Entropy*, CISS 2024 (arXiv 2312.04823), Sec. II:
a Gaussian kernel on Euclidean distances with a fixed bandwidth, normalised symmetrically so that it
has the spectrum of the random-walk diffusion operator :math:`P = D^{-1} G`.

All normalisations here are O(N^2) (row/column scaling), never dense diagonal matrix products.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_info.utilities.checks import (
    _as_tensor,
    _check_bandwidth,
    _check_finite,
    _check_ndim,
)
from lightning_info.utilities.enums import Bandwidth

__all__ = ["diffusion_kernel", "gaussian_affinity"]

_FLOAT_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


def _resolve_dtype(dtype: Any, default: torch.dtype) -> torch.dtype:
    """Return the working dtype (``torch.float32``/``torch.float64``; ``None`` -> ``default``).

    Raises:
        ValueError: if ``dtype`` is neither None nor float32/float64 (torch dtype or string).
    """
    if dtype is None:
        return default
    try:
        return _FLOAT_DTYPES[dtype]
    except (KeyError, TypeError):
        raise ValueError(
            f"`dtype` must be None, torch.float32 or torch.float64; got {dtype!r}."
        ) from None


def _mul_scaled_(t: Tensor, factor: float, exp2: int = 0) -> Tensor:
    r"""Multiply ``t`` in place by ``factor * 2**exp2`` without forming that number in ``t``'s dtype.

    A factor outside the dtype's normal range (e.g. :math:`1/(2\sigma^2) = 5 \cdot 10^{59}` in
    float32) would become ``inf`` or 0 and turn a 0 entry into NaN (:math:`0 \cdot \infty`). Here
    it is applied as its mantissa and then in exact power-of-two steps, so 0 stays 0 and nonzero
    entries overflow to ``±inf`` or underflow to 0 as the exact product would. A factor in range
    costs one multiplication, with the same result as ``t.mul_(factor * 2**exp2)``.

    Args:
        t: floating tensor, changed in place.
        factor: finite float > 0.
        exp2: extra binary exponent (an integer; it may be far outside float64's range).

    Returns:
        ``t`` itself.
    """
    finfo = torch.finfo(t.dtype)
    mantissa, e = math.frexp(factor)  # factor = mantissa * 2**e, 0.5 <= mantissa < 1
    k = int(e) + int(exp2)
    max_k = math.frexp(finfo.max)[1]  # mantissa * 2**k is a normal number for min_k <= k < max_k
    min_k = math.frexp(finfo.tiny)[1]
    if min_k <= k < max_k:
        return t.mul_(math.ldexp(mantissa, k))
    # Scaling up: exact power-of-two steps first (subnormal inputs gain their bits back), then
    # the mantissa 2m in [1, 2). Scaling down: the mantissa first, then the steps.
    up = k > 0
    if up:
        mantissa, k = 2.0 * mantissa, k - 1
    else:
        t.mul_(mantissa)
    # Beyond this many binary orders of magnitude every nonzero value has under/overflowed.
    span = max_k - min_k - int(math.log2(finfo.eps)) + 4
    k = max(-span, min(span, k))
    step = min(max_k, -min_k) - 2  # 2**step and 2**-step are normal numbers
    while abs(k) > step:
        sign = 1 if k > 0 else -1
        t.mul_(math.ldexp(1.0, sign * step))
        k -= sign * step
    t.mul_(math.ldexp(1.0, k))
    return t.mul_(mantissa) if up else t


def _scaled_centred_rows(x: Tensor) -> tuple[Tensor, int]:
    """Centred rows of ``x`` divided by a power of two, and that power's exponent.

    ``x`` is first scaled so that its largest entry is ~1 (the mean of float32 values near 3e38
    would overflow), then centred, then scaled again; power-of-two scalings are exact.

    Returns:
        ``(y, e)`` with ``x - mean(x) = 2**e * y`` up to the rounding of the centring, and the
        largest ``|y|`` in [0.5, 1) (``e = 0`` for constant data); ``y`` is a new tensor of
        ``x``'s dtype.
    """
    exponent = 0
    x = x.clone()
    for centre in (False, True):
        if centre:
            x = x - x.mean(dim=0, keepdim=True)
        biggest = float(x.abs().amax()) if x.numel() else 0.0
        if biggest > 0.0:
            e = math.frexp(biggest)[1]  # 2**(e-1) <= biggest < 2**e
            _mul_scaled_(x, 1.0, -e)
            exponent += e
    return x, exponent


def _scaled_sq_dists(x: Tensor) -> tuple[Tensor, int]:
    r"""Squared Euclidean distances of the rows of ``x`` in units of a power of two.

    Returns ``(d2, e)`` with the true squared distances :math:`= 2^{2e}` ``d2``. The rows are scaled
    by :math:`2^{-e_0}` (largest entry ~1), centred (distances are translation invariant, and
    centring limits cancellation when the data sit far from the origin), and scaled again so that
    the largest centred entry is ~1; ``e`` is the sum of both exponents. Power-of-two scalings are
    exact, so for data of moderate scale ``d2`` equals the unscaled computation times
    :math:`2^{-2e}` bit for bit, while float32 data of scale 1e29 (squares overflow) or 1e-30
    (squares underflow) keep full precision. Then :math:`\|x_i\|^2 + \|x_j\|^2 - 2 x_i^\top x_j`
    (one matmul), tiny negative round-off clamped at 0, diagonal exactly 0, as
    ``sklearn.metrics.pairwise_distances`` does.

    Args:
        x: (N, D) floating tensor of finite values, already validated; the result has its dtype
            and device.

    Returns:
        ``(d2, e)``: (N, N) symmetric tensor (>= 0, zero diagonal, all entries <= 4 D) and the
        binary exponent ``e``.
    """
    x, exponent = _scaled_centred_rows(x)
    sq_norms = x.square().sum(dim=1)
    d2 = x @ x.T
    d2.mul_(-2.0).add_(sq_norms[:, None]).add_(sq_norms[None, :])
    d2 = 0.5 * (d2 + d2.T)  # exact symmetry regardless of the BLAS kernel used
    _refine_small_sq_dists_(d2, x, x, _refine_tolerance(sq_norms))
    d2.clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2, exponent


#: Pairs whose expanded squared distance is below this many ulps of ``2 max_i |x_i|^2`` are
#: within the round-off of the expansion and are recomputed from the differences.
_REFINE_ULPS = 16
#: Elements of ``x[i] - x[j]`` formed at once when recomputing such pairs.
_REFINE_CHUNK = 1 << 22


def _refine_tolerance(sq_norms: Tensor) -> float:
    """Squared distances at or below this are within the expansion's round-off.

    Returns:
        ``_REFINE_ULPS`` ulps of ``2 max_i |x_i|^2`` (0 for no rows).
    """
    biggest = float(sq_norms.amax()) if sq_norms.numel() else 0.0
    return 2.0 * biggest * _REFINE_ULPS * torch.finfo(sq_norms.dtype).eps


def _refine_small_sq_dists_(d2: Tensor, x_rows: Tensor, x_cols: Tensor, tol: float) -> None:
    r"""Recompute, in place, the squared distances that the expansion cannot resolve.

    :math:`\|x_i\|^2 + \|x_j\|^2 - 2 x_i^\top x_j` has an absolute round-off of a few ulps of
    :math:`\|x_i\|^2 + \|x_j\|^2`, so duplicate rows can get a tiny positive distance, which a
    small ``sigma`` (e.g. 1e-30) turns into affinity 0 instead of 1. Entries of ``d2`` (rows of
    ``x_rows`` by rows of ``x_cols``) at or below ``tol`` (``_refine_tolerance``: ``_REFINE_ULPS``
    ulps of :math:`2 \max_i \|x_i\|^2`) are recomputed as :math:`\sum_k (x_{ik} - x_{jk})^2`,
    exactly 0 for duplicates and symmetric in i, j, in chunks of at most ``_REFINE_CHUNK``
    elements; the only full-size temporary is one boolean mask. Generic data have no such pairs
    off the diagonal; data with many exact duplicates cost O(pairs * D) more.
    """
    if tol <= 0.0:  # every row is the centroid: all distances are exactly 0 already
        return
    rows, cols = (d2 <= tol).nonzero(as_tuple=True)
    step = max(1, _REFINE_CHUNK // max(1, x_rows.shape[1]))
    for a in range(0, rows.numel(), step):
        i, j = rows[a : a + step], cols[a : a + step]
        d2[i, j] = (x_rows[i] - x_cols[j]).square_().sum(dim=1)


def _pairwise_sq_dists(x: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of a float tensor (see ``_scaled_sq_dists``).

    Args:
        x: (N, D) floating tensor, already validated; the result has its dtype and device.

    Returns:
        (N, N) symmetric tensor of squared distances, >= 0, zero diagonal; ``inf`` where a squared
        distance exceeds the dtype's range (never NaN).
    """
    d2, exponent = _scaled_sq_dists(x)
    return _mul_scaled_(d2, 1.0, 2 * exponent)


#: ``sigma="median"``: above this many rows the median is taken over a seeded subset of them.
_MEDIAN_MAX_ROWS = 4096
#: ``sigma="knn"``: the width of point i is the distance to its ``_KNN_NEIGHBORS``-th neighbour.
_KNN_NEIGHBORS = 10
_BANDWIDTH_RULES = tuple(b.value for b in Bandwidth)


def _check_sigma(value: Any, name: str = "sigma") -> float | str:
    """Return a validated bandwidth: a number (see ``_check_bandwidth``) or a :class:`Bandwidth`.

    Raises:
        TypeError: if ``value`` is neither a number nor a string.
        ValueError: if it is a string other than the rules, or a number out of range.
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    if isinstance(value, str):  # Bandwidth members are strings too
        if str(value) not in _BANDWIDTH_RULES:
            raise ValueError(
                f"`{name}` must be a number > 0 (a fixed width, in the units of the embeddings) "
                f"or one of {_BANDWIDTH_RULES} (derived from the data); got {value!r}."
            )
        return str(value)
    return _check_bandwidth(value, name)


def _offdiag_median(d2: Tensor) -> float:
    """Median of the off-diagonal entries of a square matrix (the lower middle value).

    Returns:
        The median as a Python float.
    """
    n = d2.shape[0]
    off = d2.flatten()[1:].view(n - 1, n + 1)[:, :-1]  # row i: the entries after (i, i)
    return float(off.median())


def _median_sq_width(d2: Tensor) -> float:
    """``sigma**2`` of the ``"median"`` rule from squared distances.

    Returns:
        The median off-diagonal squared distance (over a seeded subset of 4096 rows above that;
        the median of the distinct pairs when most coincide; 0 if all rows coincide).
    """
    n = d2.shape[0]
    if n > _MEDIAN_MAX_ROWS:
        gen = torch.Generator().manual_seed(0)  # a fixed subset: sigma is a function of the data
        sub = torch.randperm(n, generator=gen)[:_MEDIAN_MAX_ROWS].sort().values.to(d2.device)
        d2 = d2[sub[:, None], sub[None, :]]
    med = _offdiag_median(d2)
    if med > 0.0:
        return med
    positive = d2[d2 > 0]  # more than half of the pairs are duplicates: use the distinct ones
    return float(positive.median()) if positive.numel() else 0.0


def _knn_inv_widths(d2: Tensor) -> Tensor:
    """``1 / sigma_i`` of the ``"knn"`` rule from squared distances.

    Returns:
        (N,) inverse widths (points with >= k duplicates borrow a typical width; all ones if
        every distance is 0).
    """
    n = d2.shape[0]
    k = min(_KNN_NEIGHBORS, n - 1)
    s2 = torch.kthvalue(d2, k + 1, dim=1).values  # k+1: the point itself is at distance 0
    positive = s2 > 0
    if not bool(positive.all()):  # >= k duplicates of a point: borrow a typical width
        if bool(positive.any()):
            fill = float(s2[positive].median())
        else:  # every point has >= k duplicates: the median rule's width (1 if all coincide)
            fill = _median_sq_width(d2) or 1.0
        s2 = torch.where(positive, s2, torch.full_like(s2, fill))
    return s2.rsqrt()


def _affinity_from_sq_dists(d2: Tensor, exponent: int, sigma: float | str) -> Tensor:
    """Gaussian affinity, in place on ``d2`` (squared distances in units of ``2**(2 exponent)``).

    A fixed ``sigma`` is applied together with the distance scale (``_mul_scaled_``), so neither
    over/underflows in float32 on its own; the rules derive the width from ``d2`` itself, in the
    same units, so the scale cancels exactly.

    Returns:
        ``d2``, overwritten with the affinity.
    """
    if not isinstance(sigma, str):
        return _mul_scaled_(d2, 0.5 / sigma**2, 2 * exponent).neg_().exp_()
    if sigma == Bandwidth.MEDIAN:
        width_sq = _median_sq_width(d2)
        return d2.mul_(0.5 / width_sq if width_sq > 0 else 0.0).neg_().exp_()
    inv = _knn_inv_widths(d2)  # "knn": exp(-d2_ij / (2 sigma_i sigma_j)), exactly symmetric
    return d2.mul_(torch.outer(inv, inv)).mul_(-0.5).exp_()


def _gaussian_affinity(x: Tensor, sigma: float | str) -> Tensor:
    """Unnormalised Gaussian affinity of a validated float tensor (fixed width or a rule).

    ``exp(-d^2 / (2 sigma^2))`` for a fixed ``sigma``; see :class:`Bandwidth` for the rules.
    Duplicate rows always get affinity 1 and never NaN, whatever ``sigma`` and the data's scale.

    Returns:
        (N, N) affinity in ``x``'s dtype.
    """
    d2, exponent = _scaled_sq_dists(x)
    return _affinity_from_sq_dists(d2, exponent, sigma)


def _resolve_width(x: Tensor, sigma: float | str) -> float:
    """The fixed width that a global rule gives for ``x`` (the number itself for a number).

    Used where the kernel is applied without forming it (the Lanczos solver). The ``"knn"`` rule
    has one width per point and no global equivalent.

    Returns:
        The width in the units of ``x`` (1.0 when all rows coincide).

    Raises:
        ValueError: for ``sigma="knn"``.
    """
    if not isinstance(sigma, str):
        return sigma
    if sigma == Bandwidth.KNN:
        raise ValueError(
            "`sigma='knn'` (one width per point) needs the exact solver; use `solver='exact'` "
            "(O(N^3)) or `sigma='median'` with `solver='lanczos'`."
        )
    n = x.shape[0]
    if n > _MEDIAN_MAX_ROWS:
        gen = torch.Generator().manual_seed(0)
        x = x[torch.randperm(n, generator=gen)[:_MEDIAN_MAX_ROWS].sort().values.to(x.device)]
    d2, exponent = _scaled_sq_dists(x)
    width_sq = _median_sq_width(d2)
    if width_sq <= 0.0:  # all rows coincide: any width gives the same (all-ones) kernel
        return 1.0
    return math.ldexp(math.sqrt(width_sq), exponent)


def _diffusion_kernel(x: Tensor, sigma: float | str) -> Tensor:
    """Symmetric diffusion kernel of a validated float tensor.

    Returns:
        ``K = d^{-1/2}[:, None] * G * d^{-1/2}[None, :]`` (N, N), with ``d = G.sum(1)``.
    """
    g = _gaussian_affinity(x, sigma)
    d_inv_sqrt = g.sum(dim=1).rsqrt()
    # K_ij = G_ij * (s_i s_j): the outer product is exactly symmetric, so K is too.
    return g.mul_(torch.outer(d_inv_sqrt, d_inv_sqrt))  # same spectrum as D^-1 G


def _validate_embeddings(embeddings: Any, name: str = "embeddings") -> Tensor:
    """Validate an (N, D) array of finite numbers and return it as a floating tensor.

    Returns:
        The tensor (integers become float64).

    Raises:
        ValueError: if it is not 2-D, holds NaN/inf or has fewer than 2 rows.
    """
    x = _as_tensor(embeddings, name)
    _check_ndim(x, name, (2,), "2-D (N, D)")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    _check_finite(x, name)
    if x.shape[0] < 2:
        raise ValueError(f"`{name}` must have at least 2 samples (rows); got {x.shape[0]}.")
    return x


def gaussian_affinity(
    embeddings: Tensor, *, sigma: float | str = 10.0, dtype: torch.dtype | str | None = None
) -> Tensor:
    r"""Compute the Gaussian affinity matrix of a set of embeddings.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II, the kernel before normalisation:

    .. math::

        G_{ij} = \exp\!\left(-\frac{\|x_i - x_j\|_2^2}{2\sigma^2}\right).

    The reference code multiplies by :math:`1/(\sigma\sqrt{2\pi})`; that constant cancels in the
    diffusion normalisation and is omitted here (so :math:`G_{ii} = 1`). Finite for any finite
    data and accepted ``sigma``, also in float32 (see :func:`diffusion_kernel`).

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2.
        sigma: kernel bandwidth, > 0, in the units of the embeddings (default 10, the paper's),
            or a rule that derives it from the data, ``"median"`` or ``"knn"``
            (:class:`~lightning_info.utilities.enums.Bandwidth`; scale-invariant).
        dtype: ``torch.float64`` (default) or ``torch.float32``; the working precision.

    Returns:
        (N, N) symmetric tensor with entries in (0, 1] and unit diagonal, on the input's device.

    Raises:
        TypeError: if ``embeddings`` is not array-like numbers, or ``sigma`` is not a number or
            a rule.
        ValueError: if ``embeddings`` is not 2-D, has fewer than 2 rows or non-finite values,
            ``sigma <= 0`` (or so extreme that ``sigma**2`` under/overflows) or an unknown rule,
            or ``dtype`` is not float32/float64.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> g = gaussian_affinity(x, sigma=5.0)
        >>> round(g[0, 1].item(), 4)  # exp(-25 / 50)
        0.6065
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    sigma = _check_sigma(sigma)
    work_dtype = _resolve_dtype(dtype, torch.float64)
    x = _validate_embeddings(embeddings).to(work_dtype)
    return _gaussian_affinity(x, sigma)


def diffusion_kernel(
    embeddings: Tensor, *, sigma: float | str = 10.0, dtype: torch.dtype | str | None = None
) -> Tensor:
    r"""Compute the symmetric diffusion kernel of a set of embeddings.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II: with the Gaussian affinity :math:`G` and
    degrees :math:`d_i = \sum_j G_{ij}`,

    .. math::

        K = D^{-1/2} G D^{-1/2}, \qquad K_{ij} = \frac{G_{ij}}{\sqrt{d_i d_j}},

    computed as a row/column scaling in O(N^2) (the reference uses two dense diagonal matmuls,
    O(N^3)). :math:`K` is symmetric and similar to the random-walk operator :math:`P = D^{-1} G`
    (:math:`P = D^{-1/2} K D^{1/2}`), so it has the same eigenvalues: all in :math:`[-1, 1]`, the
    largest equal to 1 with eigenvector :math:`\sqrt{d}`. No density (alpha) normalisation is
    applied, as in the reference.

    Distances are computed on centred data rescaled by a power of two, and the factor
    :math:`1/(2\sigma^2)` is applied without forming it in the working dtype, so the result is
    finite for any finite data and any accepted ``sigma`` even in float32 (e.g. data of scale
    1e29 or sigma = 1e-30): entries whose exponent leaves the dtype's range are 0, duplicate
    rows get affinity 1 exactly.

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2.
        sigma: kernel bandwidth, > 0, in the units of the embeddings (default 10, the paper's),
            or a rule that derives it from the data, ``"median"`` or ``"knn"``
            (:class:`~lightning_info.utilities.enums.Bandwidth`; scale-invariant).
        dtype: ``torch.float64`` (default) or ``torch.float32``; the working precision.

    Returns:
        (N, N) symmetric nonnegative tensor on the input's device.

    Raises:
        TypeError: if ``embeddings`` is not array-like numbers, or ``sigma`` is not a number or
            a rule.
        ValueError: if ``embeddings`` is not 2-D, has fewer than 2 rows or non-finite values,
            ``sigma <= 0`` (or so extreme that ``sigma**2`` under/overflows) or an unknown rule,
            or ``dtype`` is not float32/float64.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [5.0]])
        >>> k = diffusion_kernel(x, sigma=1.0)
        >>> round(torch.linalg.eigvalsh(k).max().item(), 4)
        1.0
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    sigma = _check_sigma(sigma)
    work_dtype = _resolve_dtype(dtype, torch.float64)
    x = _validate_embeddings(embeddings).to(work_dtype)
    return _diffusion_kernel(x, sigma)
