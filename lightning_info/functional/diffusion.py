r"""Gaussian affinities and the symmetric diffusion kernel used by DSE/DSMI.

Implements the kernel of Liao, Liu et al., *Assessing Neural Network Representations During
Training Using Noise-Resilient Diffusion Spectral Entropy*, CISS 2024 (arXiv 2312.04823), Sec. II:
a Gaussian kernel on Euclidean distances with a fixed bandwidth, normalised symmetrically so that it
has the spectrum of the random-walk diffusion operator :math:`P = D^{-1} G`.

All normalisations here are O(N^2) (row/column scaling), never dense diagonal matrix products.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_info.utilities.checks import (
    _as_tensor,
    _check_bandwidth,
    _check_finite,
    _check_ndim,
)

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


def _pairwise_sq_dists(x: Tensor) -> Tensor:
    r"""Squared Euclidean distances between the rows of a float tensor.

    Uses :math:`\|x_i\|^2 + \|x_j\|^2 - 2 x_i^\top x_j` (one matmul) on the **centred** rows
    (distances are translation invariant, and centring limits cancellation when the data sit far
    from the origin), clamps tiny negative round-off at 0 and sets the diagonal to exactly 0, as
    ``sklearn.metrics.pairwise_distances`` does.

    Args:
        x: (N, D) floating tensor, already validated; the result has its dtype and device.

    Returns:
        (N, N) symmetric tensor of squared distances, >= 0, zero diagonal.
    """
    x = x - x.mean(dim=0, keepdim=True)
    sq_norms = x.square().sum(dim=1)
    d2 = x @ x.T
    d2.mul_(-2.0).add_(sq_norms[:, None]).add_(sq_norms[None, :])
    d2 = 0.5 * (d2 + d2.T)  # exact symmetry regardless of the BLAS kernel used
    d2.clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    return d2


def _gaussian_affinity(x: Tensor, sigma: float) -> Tensor:
    """Unnormalised Gaussian affinity ``exp(-d^2 / (2 sigma^2))`` of a validated float tensor."""
    g = _pairwise_sq_dists(x)
    return g.mul_(-0.5 / sigma**2).exp_()


def _diffusion_kernel(x: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Symmetric diffusion kernel and the degree vector of a validated float tensor.

    Returns:
        ``(K, d)``: ``K = d^{-1/2}[:, None] * G * d^{-1/2}[None, :]`` (N, N) and ``d = G.sum(1)`` (N,).
    """
    g = _gaussian_affinity(x, sigma)
    d = g.sum(dim=1)
    d_inv_sqrt = d.rsqrt()
    # K_ij = G_ij * (s_i s_j): the outer product is exactly symmetric, so K is too.
    kernel = g.mul_(torch.outer(d_inv_sqrt, d_inv_sqrt))  # same spectrum as D^-1 G
    return kernel, d


def _validate_embeddings(embeddings: Any, name: str = "embeddings") -> Tensor:
    """Validate an (N, D) array of finite numbers and return it as a floating tensor."""
    x = _as_tensor(embeddings, name)
    _check_ndim(x, name, (2,), "2-D (N, D)")
    if not x.is_floating_point():
        x = x.to(torch.float64)
    _check_finite(x, name)
    if x.shape[0] < 2:
        raise ValueError(f"`{name}` must have at least 2 samples (rows); got {x.shape[0]}.")
    return x


def gaussian_affinity(
    embeddings: Tensor, *, sigma: float = 10.0, dtype: torch.dtype | str | None = None
) -> Tensor:
    r"""Compute the Gaussian affinity matrix of a set of embeddings.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II, the kernel before normalisation:

    .. math::

        G_{ij} = \exp\!\left(-\frac{\|x_i - x_j\|_2^2}{2\sigma^2}\right).

    The reference code multiplies by :math:`1/(\sigma\sqrt{2\pi})`; that constant cancels in the
    diffusion normalisation and is omitted here (so :math:`G_{ii} = 1`).

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2.
        sigma: kernel bandwidth, > 0, in the units of the embeddings. Default 10 (the paper's).
        dtype: ``torch.float64`` (default) or ``torch.float32``; the working precision.

    Returns:
        (N, N) symmetric tensor with entries in (0, 1] and unit diagonal, on the input's device.

    Raises:
        TypeError: if ``embeddings`` is not array-like numbers, or ``sigma`` is not a number.
        ValueError: if ``embeddings`` is not 2-D, has fewer than 2 rows or non-finite values,
            ``sigma <= 0`` (or so extreme that ``sigma**2`` under/overflows), or ``dtype`` is not float32/float64.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> g = gaussian_affinity(x, sigma=5.0)
        >>> round(g[0, 1].item(), 4)  # exp(-25 / 50)
        0.6065
    """
    sigma = _check_bandwidth(sigma, "sigma")
    work_dtype = _resolve_dtype(dtype, torch.float64)
    x = _validate_embeddings(embeddings).to(work_dtype)
    return _gaussian_affinity(x, sigma)


def diffusion_kernel(
    embeddings: Tensor, *, sigma: float = 10.0, dtype: torch.dtype | str | None = None
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

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2.
        sigma: kernel bandwidth, > 0, in the units of the embeddings. Default 10 (the paper's).
        dtype: ``torch.float64`` (default) or ``torch.float32``; the working precision.

    Returns:
        (N, N) symmetric nonnegative tensor on the input's device.

    Raises:
        TypeError: if ``embeddings`` is not array-like numbers, or ``sigma`` is not a number.
        ValueError: if ``embeddings`` is not 2-D, has fewer than 2 rows or non-finite values,
            ``sigma <= 0`` (or so extreme that ``sigma**2`` under/overflows), or ``dtype`` is not float32/float64.

    Example:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [5.0]])
        >>> k = diffusion_kernel(x, sigma=1.0)
        >>> round(torch.linalg.eigvalsh(k).max().item(), 4)
        1.0
    """
    sigma = _check_bandwidth(sigma, "sigma")
    work_dtype = _resolve_dtype(dtype, torch.float64)
    x = _validate_embeddings(embeddings).to(work_dtype)
    return _diffusion_kernel(x, sigma)[0]
