"""Seeded subsets of a dataset, identical on every process and never drawn from a global RNG."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["seeded_subset"]


def seeded_subset(n: int, size: int | None, seed: int) -> Tensor:
    """Sorted positions of a uniform random subset of ``size`` out of ``n`` (all if it fits).

    The draw uses a local ``torch.Generator`` seeded with ``seed``, so it is the same on every
    call and every process and leaves the global random state alone.

    Args:
        n: number of items.
        size: subset size, or None for all items.
        seed: seed of the draw.

    Returns:
        (min(n, size),) int64 positions in ascending order.

    Example:
        >>> seeded_subset(5, None, 0).tolist()
        [0, 1, 2, 3, 4]
        >>> len(seeded_subset(100, 10, 3)), bool((seeded_subset(100, 10, 3).diff() > 0).all())
        (10, True)
    """
    if size is None or n <= size:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values
