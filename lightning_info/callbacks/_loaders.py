"""Finding the DataLoaders and datasets of a trainer (shared by the callbacks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

__all__: list[str] = []


def first_loader(loaders: Any) -> DataLoader | None:
    """The first ``DataLoader`` of a loader, a sequence or a mapping of loaders (or None).

    Returns:
        The loader, or None when there is none.
    """
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, Sequence) and loaders and isinstance(loaders[0], DataLoader):
        return loaders[0]
    return None


def map_dataset(loader: DataLoader, owner: str) -> Any:
    """The loader's dataset, which must be map-style (the callbacks read samples by index).

    Returns:
        The dataset.

    Raises:
        TypeError: for an iterable-style dataset.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"{owner} reads samples by index and needs a map-style dataset (with __len__ and "
            f"__getitem__); got {type(dataset).__name__}."
        )
    return dataset
