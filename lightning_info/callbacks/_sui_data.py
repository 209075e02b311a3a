"""The samples the SmoothUniqueInformation callback scores, and how they are read.

Training samples come from ``dataset=`` or the trainer's (first) training DataLoader's dataset,
held-out samples (for functional SI) from ``val_dataset=`` or the trainer's validation loader;
both are read through a *sequential* loader with the original ``collate_fn`` (no shuffling, no
sampler, no workers), seeded subsets when they exceed the caps, in dataset order. At fit start
:meth:`ScoringData.check` reads two samples and runs the model once, so that an unusable dataset
or model output fails before training rather than after it; that check also settles which tensor
of the model's output is scored (``output_fn``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_info.callbacks._loaders import first_loader
from lightning_info.functional.jacobian import _eval_mode, model_outputs
from lightning_info.utilities.batch import default_output_fn
from lightning_info.utilities.compat import fit_val_dataloaders
from lightning_info.utilities.sampling import seeded_subset

__all__: list[str] = []

Extractor = Callable[[Any], Tensor]


def uses_augmentation(dataset: Any) -> bool:
    """Best-effort: a torchvision-style dataset (or a ``Subset`` of one) with a ``transform``.

    Returns:
        Whether a ``transform``/``transforms`` attribute is set (it may or may not be random).
    """
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return any(getattr(dataset, attr, None) is not None for attr in ("transform", "transforms"))


def label_vector(targets: Tensor) -> Tensor:
    """(N,) labels for reports: the targets, or the argmax of multi-output targets.

    Returns:
        The labels.
    """
    if targets.ndim > 1 and targets.shape[1] > 1:
        return targets.argmax(1)
    return targets.reshape(targets.shape[0])


class ScoringData:
    """Sources, caps and extractors of the samples to score (see the module docstring).

    Args:
        dataset: training dataset to score instead of the trainer's.
        val_dataset: held-out dataset instead of the trainer's validation dataset.
        max_samples: cap on the scored training samples (seeded subset), or None.
        max_heldout: cap on the held-out samples, or None.
        seed: seed of the subsets (``seed`` for training, ``seed + 1`` for held-out samples).
        batch_size: batch size of the reading pass.
        input_fn: ``batch -> inputs``.
        target_fn: ``batch -> targets``.
    """

    def __init__(
        self,
        *,
        dataset: Dataset | None,
        val_dataset: Dataset | None,
        max_samples: int | None,
        max_heldout: int | None,
        seed: int,
        batch_size: int,
        input_fn: Extractor,
        target_fn: Extractor,
    ) -> None:
        self.dataset, self.val_dataset = dataset, val_dataset
        self.max_samples, self.max_heldout = max_samples, max_heldout
        self.seed, self.batch_size = seed, batch_size
        self.input_fn, self.target_fn = input_fn, target_fn

    # ------------------------------------------------------------------------------ sources
    def train_source(self, trainer: Any, dataset: Dataset | None = None) -> tuple[Any, Any]:
        """``(dataset, collate_fn)`` of the training samples (dataset None if there is none).

        Returns:
            The dataset (or None) and its loader's ``collate_fn`` (or None).
        """
        if dataset is not None or self.dataset is not None:
            return (dataset if dataset is not None else self.dataset), None
        loader = first_loader(getattr(trainer, "train_dataloader", None)) if trainer else None
        return (None, None) if loader is None else (loader.dataset, loader.collate_fn)

    def val_source(self, trainer: Any, dataset: Dataset | None = None) -> tuple[Any, Any]:
        """``(dataset, collate_fn)`` of the held-out samples (dataset None if there is none).

        Returns:
            The dataset (or None) and its loader's ``collate_fn`` (or None).
        """
        if dataset is not None or self.val_dataset is not None:
            return (dataset if dataset is not None else self.val_dataset), None
        loader = first_loader(fit_val_dataloaders(trainer)) if trainer is not None else None
        return (None, None) if loader is None else (loader.dataset, loader.collate_fn)

    # ------------------------------------------------------------------------------ reading
    def collect(
        self, dataset: Dataset, positions: Tensor, collate_fn: Callable | None
    ) -> tuple[Tensor, Tensor]:
        """Inputs and targets of ``dataset[positions]``, read in order, on the CPU.

        Returns:
            ``(inputs, targets)``.
        """
        loader = DataLoader(
            Subset(dataset, positions.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=collate_fn,
        )
        xs, ys = [], []
        for batch in loader:
            xs.append(self.input_fn(batch).detach().cpu())
            ys.append(self.target_fn(batch).detach().cpu())
        return torch.cat(xs, 0), torch.cat(ys, 0)

    def training_samples(
        self, dataset: Dataset, collate_fn: Callable | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(dataset positions, inputs, targets)`` of the scored training samples.

        Returns:
            The positions (ascending), inputs and targets.
        """
        positions = seeded_subset(len(dataset), self.max_samples, self.seed)
        x, y = self.collect(dataset, positions, collate_fn)
        return positions, x, y

    def heldout_inputs(self, dataset: Dataset | None, collate_fn: Callable | None) -> Tensor | None:
        """Inputs of the held-out samples, or None without held-out data.

        Returns:
            The inputs, or None.
        """
        if dataset is None or len(dataset) == 0:
            return None
        positions = seeded_subset(len(dataset), self.max_heldout, self.seed + 1)
        return self.collect(dataset, positions, collate_fn)[0]

    # ------------------------------------------------------------------------------ checks
    def check(
        self,
        dataset: Dataset | None,
        collate_fn: Callable | None,
        model: nn.Module,
        output_fn: Extractor | None,
    ) -> Extractor | None:
        """Fail now (fit start) on a dataset or model output the scoring pass cannot use.

        Returns:
            The ``output_fn`` to score with: the given one, None for a model returning a tensor,
            or :func:`~lightning_info.utilities.batch.default_output_fn` (with a notice) for a
            tuple / dict output.

        Raises:
            ValueError: for an unusable dataset, targets or model output (naming the argument).
            TypeError: if the extractors return something else than tensors.
        """  # noqa: DOC502 (the ValueErrors come from the helpers it calls; its contract)
        if dataset is None:
            return output_fn  # the trainer's loader is not known yet: checked again when scoring
        batch = self._two_samples(dataset, collate_fn)
        x, y = self.input_fn(batch), self.target_fn(batch)
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError("`input_fn` and `target_fn` must return tensors.")
        output_fn = _resolve_output_fn(model, x, output_fn)
        with torch.no_grad():
            out = model_outputs(model, x.to(_device_of(model)), output_fn=output_fn)
        _check_targets(y, out)
        return output_fn

    @staticmethod
    def _two_samples(dataset: Dataset, collate_fn: Callable | None) -> Any:
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as err:
            raise ValueError(
                "SmoothUniqueInformation needs a map-style dataset with `len()` to score samples by "
                f"index; got {type(dataset).__name__}. Pass `dataset=` with a map-style dataset."
            ) from err
        if n < 2:
            raise ValueError(f"the scoring dataset must hold at least 2 samples; got {n}.")
        collate = collate_fn or torch.utils.data.default_collate
        return collate([dataset[0], dataset[1]])


def _device_of(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _resolve_output_fn(
    model: nn.Module, x: Tensor, output_fn: Extractor | None
) -> Extractor | None:
    """The given ``output_fn``; else None for a tensor output, or the default picker (noticed).

    Returns:
        ``output_fn``, None, or :func:`~lightning_info.utilities.batch.default_output_fn`.

    Raises:
        ValueError: if the model's output is neither a tensor nor holds one the picker finds.
    """
    if output_fn is not None:
        return output_fn
    with torch.no_grad(), _eval_mode(model):
        raw = model(x.to(_device_of(model)))
    if isinstance(raw, Tensor):
        return None
    try:
        picked = default_output_fn(raw)
    except TypeError as err:
        raise ValueError(f"SmoothUniqueInformation(output_fn=None): {err}") from None
    rank_zero_info(
        f"SmoothUniqueInformation: the model returns a {type(raw).__name__}; scoring "
        f"{'its `logits`' if not isinstance(raw, (tuple, list)) else 'its first element'} "
        f"(shape {tuple(picked.shape)}). Pass `output_fn=` to score another output."
    )
    return default_output_fn


def _check_targets(y: Tensor, out: Tensor) -> None:
    if y.shape[0] != out.shape[0]:
        raise ValueError(
            f"the targets of a scoring batch have {y.shape[0]} rows for {out.shape[0]} inputs; "
            "check `target_fn`."
        )
    if not y.is_floating_point() and out.shape[1] > 1 and int(y.max()) >= out.shape[1]:
        raise ValueError(
            f"integer labels must be < the number of model outputs K = {out.shape[1]}; got "
            f"label {int(y.max())}. SUI uses one-hot targets on the K raw outputs."
        )
