r"""Classic binned Shannon entropy (CSE) and mutual information (CSMI): the paper's baselines.

Liao, Liu et al., CISS 2024 (arXiv 2312.04823), Sec. IV compare DSE/DSMI with a plug-in Shannon
entropy of the embeddings after per-dimension binning ("CSE"/"CSMI"), which saturates at
:math:`\log_2 N` once every sample falls into its own joint bin. Binning here: each dimension is
min-max scaled to [0, 1] over the N samples and cut into ``num_bins`` equal-width, left-closed bins
(the maximum goes into the last bin; a constant dimension puts every sample into bin 0); each
sample's vector of bin ids is one cell of the joint histogram.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_info.functional.dse import _check_num_samples, _dse_update, _reference_labels
from lightning_info.utilities.checks import _check_int

__all__ = ["classic_shannon_entropy", "classic_shannon_mutual_information"]

_LN2 = math.log(2.0)


def _binned_cells(x: Tensor, num_bins: int) -> Tensor:
    """(N,) long id of each sample's joint histogram cell after per-dimension min-max binning.

    With D = 0 dimensions every sample lies in the one empty cell (id 0).

    Returns:
        (N,) int64 cell ids, 0..(number of occupied cells - 1).
    """
    if x.shape[1] == 0:  # torch.unique(dim=0) rejects an (N, 0) tensor
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    x = x.to(torch.float64)
    lo = x.min(dim=0).values
    span = x.max(dim=0).values - lo
    scaled = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
    edges = torch.arange(num_bins, dtype=torch.float64, device=x.device) * (1.0 / num_bins)
    codes = torch.bucketize(scaled.contiguous(), edges, right=True) - 1  # ids 0..num_bins-1
    return torch.unique(codes, dim=0, return_inverse=True)[1]


def _plugin_entropy_bits(cells: Tensor) -> Tensor:
    """Plug-in entropy in bits of the empirical distribution of integer ids.

    Returns:
        0-dim float64 tensor, bits.
    """
    counts = torch.unique(cells, return_counts=True)[1].to(torch.float64)
    p = counts / counts.sum()
    return torch.special.entr(p).sum() / _LN2


def classic_shannon_entropy(embeddings: Any, *, num_bins: int = 2) -> Tensor:
    r"""Compute the classic binned Shannon entropy (CSE) of a set of embeddings, in bits.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. IV baseline. Each dimension :math:`j` is
    min-max scaled and cut into ``num_bins`` equal-width bins,
    :math:`b_{ij} = \min(\lfloor \mathrm{num\_bins}\,(z_{ij} - \min_k z_{kj}) /
    (\max_k z_{kj} - \min_k z_{kj}) \rfloor, \mathrm{num\_bins} - 1)` (0 for a constant
    dimension), and the plug-in entropy of the joint cells :math:`b_i = (b_{i1}, \dots, b_{iD})` is

    .. math::

        H(Z) = -\sum_{b} \frac{n_b}{N} \log_2 \frac{n_b}{N},

    where :math:`n_b` counts the samples in cell :math:`b`. No eps is added (0 log 0 := 0).
    :math:`0 \le H \le \min(\log_2 N, D \log_2 \mathrm{num\_bins})`; with many dimensions
    nearly every sample has its own cell and CSE saturates at :math:`\log_2 N`. Embeddings with
    D = 0 features put every sample into one cell: H = 0.

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2 (D = 0 gives 0).
        num_bins: equal-width bins per dimension, >= 2. Default 2 (the reference's
            ``num_bins_per_dim``).

    Returns:
        0-dim float64 tensor in bits on the input's device; higher = samples spread over more
        cells.

    Raises:
        TypeError: if ``embeddings`` is not array-like numbers or ``num_bins`` is not an int.
        ValueError: if ``embeddings`` is not 2-D, has fewer than 2 rows or NaN/inf values,
            or ``num_bins < 2``.

    Example:
        >>> import torch
        >>> z = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
        >>> round(classic_shannon_entropy(z).item(), 4)  # four distinct cells
        2.0
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    x = _dse_update(embeddings)
    _check_num_samples(x)
    num_bins = _check_int(num_bins, "num_bins", minimum=2)
    return _plugin_entropy_bits(_binned_cells(x, num_bins))


def classic_shannon_mutual_information(
    embeddings: Any,
    reference: Any,
    *,
    num_bins: int = 2,
    discrete: bool | None = None,
    num_clusters: int = 10,
    seed: int = 0,
    clusters: Any = None,
) -> Tensor:
    r"""Compute the classic binned Shannon mutual information (CSMI) with a reference, in bits.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. IV baseline, built on
    :func:`classic_shannon_entropy`: the embeddings are binned **once** over all N samples
    (so the conditional histograms use the same cells) and

    .. math::

        I(Z;B) = H(Z) - \sum_c \frac{n_c}{N} H(Z \mid B = c),

    the plug-in mutual information of the cells and the groups, :math:`\ge 0` and
    :math:`\le \min(H(Z), H(B))` (0 for D = 0 features). ``reference`` is turned into groups exactly as in
    :func:`~lightning_info.functional.diffusion_spectral_mutual_information` (class labels,
    binned scalar, or spectrally clustered vectors; ``discrete`` inference and ``clusters``
    reuse are the same).

    Args:
        embeddings: (N, D) tensor or numpy array of finite numbers, N >= 2.
        reference: (N,) labels or scalars, or (N, D') vectors; may be None if ``clusters`` is
            given.
        num_bins: equal-width bins per embedding dimension, >= 2. Default 2.
        discrete: whether a 1-D reference holds class labels (None: infer as for DSMI).
        num_clusters: bins (scalar reference) or spectral clusters (vector reference), >= 2.
        seed: ``random_state`` of the clustering of a vector reference.
        clusters: optional precomputed (N,) integer group ids; overrides ``reference``.

    Returns:
        0-dim float64 tensor in bits on the input's device; higher = the binned embeddings
        tell the groups apart better.

    Raises:
        TypeError: on non-numeric inputs, float ``clusters`` or options of the wrong type.
        ValueError: as :func:`classic_shannon_entropy`, plus NaN/inf or wrong rank or length
            of ``reference``/``clusters``, ``discrete=True`` with a vector reference, and
            ``num_clusters < 2``.

    Example:
        >>> import torch
        >>> z = torch.tensor([[0.0], [0.1], [1.0], [0.9]])
        >>> y = torch.tensor([0, 0, 1, 1])
        >>> round(classic_shannon_mutual_information(z, y).item(), 4)  # the bin is the label
        1.0
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    x = _dse_update(embeddings)
    _check_num_samples(x)
    num_bins = _check_int(num_bins, "num_bins", minimum=2)
    labels = _reference_labels(
        reference,
        x.shape[0],
        discrete=discrete,
        num_clusters=num_clusters,
        seed=seed,
        clusters=clusters,
    ).to(x.device)
    cells = _binned_cells(x, num_bins)
    conditional = torch.zeros((), dtype=torch.float64, device=x.device)
    groups, counts = torch.unique(labels, return_counts=True)
    for group, n_c in zip(groups.tolist(), counts.tolist()):
        conditional = conditional + (n_c / x.shape[0]) * _plugin_entropy_bits(
            cells[labels == group]
        )
    return _plugin_entropy_bits(cells) - conditional
