r"""What users do with per-sample informativeness scores.

Find suspicious samples, summarize a dataset, compare classes and data sources. The applications of Smooth Unique Information listed by Harutyunyan et al., *Estimating
informativeness of samples with Smooth Unique Information* (ICLR 2021, arXiv:2101.06640, §6):
mislabeled / corrupted samples carry much unique information (they cannot be predicted from the
rest of the data), under-sampled classes carry more per sample, and removing the *least*
informative samples keeps accuracy much longer than removing random ones (data summarization,
done iteratively: remove the least informative few percent, recompute, repeat).

The functions take a plain ``(N,)`` score tensor, or any object with score attributes such as the
callback's :class:`~lightning_info.callbacks.sui.SUIScores` or the engine's ``UniqueInformation``
(then ``by=`` picks the field and the object's ``indices`` field, if any, maps positions to
dataset indices). Higher score = more informative, everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_info.utilities.checks import _as_tensor, _check_finite, _check_int, _check_ndim

__all__ = [
    "GroupSummary",
    "aggregate_by_group",
    "summarize_dataset",
    "suspicious_samples",
]


def _scores_and_indices(
    scores: Any, by: str, indices: Tensor | Sequence[int] | None
) -> tuple[Tensor, Tensor]:
    """Return ``(scores (N,) float64, dataset indices (N,) int64)`` from a tensor or a container.

    Returns:
        The validated scores on the CPU and their dataset indices (given, the container's
        ``indices``, or ``0..N-1``).

    Raises:
        ValueError: non-1-D or non-finite scores, or ``indices`` of another length.
    """
    container_indices = None
    if isinstance(scores, Tensor) or not hasattr(scores, by):
        vector = _as_tensor(scores, "scores")
    else:
        vector = _as_tensor(getattr(scores, by), f"scores.{by}")
        container_indices = getattr(scores, "indices", None)
    _check_ndim(vector, "scores", (1,), "a 1-D tensor (N,)")
    vector = vector.detach().cpu().double()
    _check_finite(vector, "scores")
    if indices is None:
        indices = container_indices
    if indices is None:
        idx = torch.arange(vector.numel())
    else:
        idx = _as_tensor(indices, "indices").detach().cpu().long().reshape(-1)
        if idx.numel() != vector.numel():
            raise ValueError(
                f"`indices` must have one entry per score ({vector.numel()}); got {idx.numel()}."
            )
    return vector, idx


def suspicious_samples(
    scores: Any,
    *,
    k: int | None = None,
    by: str = "auto",
    indices: Tensor | Sequence[int] | None = None,
) -> Tensor:
    r"""Rank samples from most to least suspicious (likely mislabeled or corrupted).

    Harutyunyan et al. (2021, arXiv:2101.06640, §6) observe that mislabeled and corrupted samples
    carry the most unique information: the rest of the data does not predict them, so leaving
    one out changes the trained weights or function the most (``by="weight_si"``).
    ``by="loo_error"`` ranks by the same leave-one-out runs seen from the sample itself: :math:`\lVert
    f_{S\setminus i}(x_i) - y_i\rVert^2`, how badly the run trained without the sample predicts
    its label (an exact N-fold cross-validation of the linearized network, no extra training).
    It is the default for a score container that has it: on flipped labels it was the strongest
    of SUI's rankings on the development tasks (``benchmarks/RESULTS.md`` section 9); on the
    held-out tasks it keeps its ranking after the network has memorized the flipped labels,
    while before that the training loss of the best epoch can lead it by up to 0.03 AUROC
    (section 13.5). The ranking, for the chosen score :math:`s`, is

    .. math::

        \operatorname{argsort}_i\; -s_i

    (stable, so ties keep dataset order). Inspect the top of the list first.

    Args:
        scores: (N,) scores (higher = more informative), or an object with a ``by`` attribute.
        k: return only the top ``k`` (default: all N).
        by: field of a score container to rank by: ``"auto"`` (default: ``"loo_error"`` when
            the container has it, e.g. :class:`~lightning_info.SUIScores`, else
            ``"weight_si"``), ``"loo_error"``, ``"weight_si"`` or ``"functional_si"``.
        indices: (N,) dataset indices of the scores (default: the container's ``indices`` or
            ``0..N-1``).

    Returns:
        (min(k, N),) int64 dataset indices, most suspicious first.

    Raises:
        ValueError: non-1-D or non-finite scores, ``indices`` of the wrong length, ``k`` < 0.
        TypeError: scores that are not numeric.

    Example:
        >>> import torch
        >>> suspicious_samples(torch.tensor([0.1, 5.0, 0.3, 2.0]), k=2).tolist()
        [1, 3]
        >>> suspicious_samples(torch.tensor([0.1, 5.0]), indices=[10, 20]).tolist()
        [20, 10]
    """  # noqa: DOC502 (raised by the shared score checks; the contract)
    if by == "auto":
        by = "loo_error" if hasattr(scores, "loo_error") else "weight_si"
    vector, idx = _scores_and_indices(scores, by, indices)
    k = _check_int(k, "k", minimum=0, allow_none=True)
    order = torch.argsort(vector, descending=True, stable=True)
    if k is not None:
        order = order[:k]
    return idx[order]


def _num_to_keep(n: int, keep_fraction: float) -> int:
    r""":math:`\lceil f N \rceil` (at least 1).

    Returns:
        The number of samples to keep.

    Raises:
        ValueError: if ``keep_fraction`` is not in (0, 1].
    """
    if not isinstance(keep_fraction, (int, float)) or not 0.0 < float(keep_fraction) <= 1.0:
        raise ValueError(f"`keep_fraction` must be in (0, 1]; got {keep_fraction!r}.")
    return max(1, math.ceil(float(keep_fraction) * n - 1e-9))


def summarize_dataset(
    scores: Tensor | Callable[[Tensor], Tensor] | Any,
    *,
    keep_fraction: float,
    by: str = "functional_si",
    indices: Tensor | Sequence[int] | None = None,
    num_samples: int | None = None,
    step_fraction: float = 0.05,
    progress: bool = False,
) -> Tensor:
    r"""Choose the samples to keep for a smaller training set by removing the least informative.

    Data summarization of Harutyunyan et al. (2021, arXiv:2101.06640, §6; authors' script
    ``data_summarization.py``). With the remaining set :math:`R_0 = S`, the **iterative** form
    repeats

    .. math::

        R_{s+1} = R_s \setminus \{\lceil \rho |R_s| \rceil \text{ samples of } R_s
        \text{ with the lowest } \mathrm{SI}(z; R_s)\}

    until :math:`|R_s|` reaches the target :math:`\lceil f N \rceil` (the last step removes only
    what is needed), recomputing the scores on :math:`R_s` every time because a sample's unique
    information grows when similar samples are removed. The **one-shot** form keeps the
    :math:`\lceil f N \rceil` highest-scoring samples of a single scoring.

    Args:
        scores: either (N,) scores / a score container (one-shot), or a callable
            ``score_fn(indices) -> (len(indices),) scores`` that scores the given subset of the
            dataset (iterative; e.g. wraps ``smooth_unique_information`` or
            ``SmoothUniqueInformation.score``).
        keep_fraction: f in (0, 1], fraction of the N samples to keep.
        by: field of a score container used by the one-shot form.
        indices: one-shot: (N,) dataset indices of the scores; iterative: the candidate dataset
            indices (default ``0..num_samples-1``).
        num_samples: N for the iterative form when ``indices`` is not given.
        step_fraction: :math:`\rho`, fraction of the remaining samples removed per iteration
            (the authors use 0.05).
        progress: show a tqdm bar over the iterations.

    Returns:
        int64 dataset indices to keep, sorted ascending, of length :math:`\lceil f N \rceil`.

    Raises:
        ValueError: ``keep_fraction`` or ``step_fraction`` outside (0, 1]; no candidates; a
            ``score_fn`` returning the wrong shape or non-finite scores.

    Example:
        >>> import torch
        >>> summarize_dataset(torch.tensor([0.5, 0.1, 0.9, 0.2]), keep_fraction=0.5).tolist()
        [0, 2]
        >>> score_fn = lambda idx: idx.double()  # toy scorer: larger index = more informative
        >>> summarize_dataset(score_fn, keep_fraction=0.3, num_samples=10).tolist()
        [7, 8, 9]
    """  # noqa: DOC502 (raised by the helpers below; the contract of the two forms)
    if not callable(scores) or isinstance(scores, Tensor):
        vector, idx = _scores_and_indices(scores, by, indices)
        keep = _num_to_keep(vector.numel(), keep_fraction)
        order = torch.argsort(vector, descending=True, stable=True)[:keep]
        return idx[order].sort().values
    if not isinstance(step_fraction, (int, float)) or not 0.0 < float(step_fraction) <= 1.0:
        raise ValueError(f"`step_fraction` must be in (0, 1]; got {step_fraction!r}.")
    remaining = _candidates(indices, num_samples)
    target = _num_to_keep(remaining.numel(), keep_fraction)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = _num_iterations(remaining.numel(), target, step_fraction)
        bar = tqdm(total=total, desc="summarize_dataset", leave=False)
    while remaining.numel() > target:
        remaining = _drop_least_informative(scores, remaining, target, step_fraction)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return remaining.sort().values


def _candidates(indices: Tensor | Sequence[int] | None, num_samples: int | None) -> Tensor:
    """The iterative form's starting set: ``indices``, or ``0..num_samples-1``.

    Returns:
        (N,) int64 dataset indices on the CPU.

    Raises:
        ValueError: for no candidate (or ``num_samples < 1``).
    """
    if indices is None:
        n = _check_int(num_samples, "num_samples", minimum=1)
        remaining = torch.arange(int(n))
    else:
        remaining = _as_tensor(indices, "indices").detach().cpu().long().reshape(-1)
    if remaining.numel() == 0:
        raise ValueError("`indices` must hold at least one candidate sample; got none.")
    return remaining


def _num_removed(size: int, target: int, step_fraction: float) -> int:
    r"""Samples one iteration removes: :math:`\lceil \rho |R_s| \rceil`, never past the target.

    Returns:
        The count, >= 1 while ``size > target``.
    """
    return min(size - target, max(1, math.ceil(step_fraction * size)))


def _num_iterations(size: int, target: int, step_fraction: float) -> int:
    """Iterations from ``size`` remaining samples down to ``target`` (for the progress bar).

    Returns:
        The number of scorings the iterative form runs.
    """
    num_iters = 0
    while size > target:
        size -= _num_removed(size, target, step_fraction)
        num_iters += 1
    return num_iters


def _drop_least_informative(
    score_fn: Callable[[Tensor], Tensor], remaining: Tensor, target: int, step_fraction: float
) -> Tensor:
    """One iteration: score ``remaining`` and drop its least informative samples.

    Returns:
        The kept dataset indices, most informative first.

    Raises:
        ValueError: if ``score_fn`` returns the wrong shape or non-finite scores.
    """
    current = _as_tensor(score_fn(remaining.clone()), "score_fn(indices)")
    if current.shape != remaining.shape:
        raise ValueError(
            f"`score_fn(indices)` must return shape ({remaining.numel()},); "
            f"got {tuple(current.shape)}."
        )
    current = current.detach().cpu().double()
    _check_finite(current, "score_fn(indices)")
    n_remove = _num_removed(remaining.numel(), target, step_fraction)
    order = torch.argsort(current, descending=True, stable=True)
    return remaining[order[: remaining.numel() - n_remove]]


@dataclass(frozen=True)
class GroupSummary:
    """Per-group statistics of a score, one entry per group (groups sorted ascending).

    Attributes:
        groups: (G,) group ids (class labels, source ids, ...).
        count: (G,) number of samples per group.
        mean: (G,) mean score.
        std: (G,) standard deviation (unbiased; 0 for a single sample).
        median: (G,) median score (lower median for even counts).
        total: (G,) sum of the scores (the group's share of the unique information).
    """

    groups: Tensor
    count: Tensor
    mean: Tensor
    std: Tensor
    median: Tensor
    total: Tensor

    def as_rows(self) -> list[tuple[int, int, float, float, float, float]]:
        """Rows ``(group, count, mean, std, median, total)`` for a table.

        Returns:
            One tuple of Python numbers per group.
        """
        return [
            (int(g), int(c), float(m), float(s), float(md), float(t))
            for g, c, m, s, md, t in zip(
                self.groups, self.count, self.mean, self.std, self.median, self.total
            )
        ]


def aggregate_by_group(
    scores: Any, groups: Tensor | Sequence[int], *, by: str = "weight_si"
) -> GroupSummary:
    r"""Aggregate scores per group (classes, data sources).

    Per class to spot under-sampled classes, per data source to compare sources. Harutyunyan et al. (2021, arXiv:2101.06640, §6): samples of an under-sampled class are more
    informative on average, and data sources can be compared by their samples' unique
    information. For every group g with members :math:`G_g`:

    .. math::

        \bar s_g = \frac{1}{|G_g|} \sum_{i \in G_g} s_i, \qquad
        S_g = \sum_{i \in G_g} s_i .

    Args:
        scores: (N,) scores or a score container (``by`` picks the field).
        groups: (N,) integer group id per sample, aligned with the scores (e.g. the container's
            ``labels``, or a user-given source id).
        by: field of a score container.

    Returns:
        A :class:`GroupSummary` with float64 statistics, groups sorted ascending.

    Raises:
        ValueError: non-1-D or non-finite scores, or ``groups`` of a different length.
        TypeError: non-numeric input.

    Example:
        >>> import torch
        >>> s = aggregate_by_group(torch.tensor([1.0, 3.0, 10.0]), torch.tensor([0, 0, 1]))
        >>> s.groups.tolist(), s.count.tolist(), s.mean.tolist()
        ([0, 1], [2, 1], [2.0, 10.0])
    """  # noqa: DOC502 (the TypeError comes from the shared score checks; the contract)
    vector, _ = _scores_and_indices(scores, by, None)
    group_ids = _as_tensor(groups, "groups").detach().cpu().reshape(-1)
    if group_ids.numel() != vector.numel():
        raise ValueError(
            f"`groups` must have one entry per score ({vector.numel()}); got {group_ids.numel()}."
        )
    unique = torch.unique(group_ids, sorted=True)
    stats = {name: [] for name in ("count", "mean", "std", "median", "total")}
    for g in unique:
        members = vector[group_ids == g]
        stats["count"].append(members.numel())
        stats["mean"].append(members.mean().item())
        stats["std"].append(members.std().item() if members.numel() > 1 else 0.0)
        stats["median"].append(members.median().item())
        stats["total"].append(members.sum().item())
    return GroupSummary(
        groups=unique,
        count=torch.tensor(stats["count"], dtype=torch.int64),
        mean=torch.tensor(stats["mean"], dtype=torch.float64),
        std=torch.tensor(stats["std"], dtype=torch.float64),
        median=torch.tensor(stats["median"], dtype=torch.float64),
        total=torch.tensor(stats["total"], dtype=torch.float64),
    )
