"""Score a saved checkpoint with smooth unique information, outside ``fit``.

Used by ``lightning-info score``; also callable from Python. The heavy lifting is the
:class:`~lightning_info.callbacks.SmoothUniqueInformation` callback's :meth:`score`; this module
only loads the checkpoint, finds the training data and the training hyper-parameters.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import Dataset, TensorDataset

from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores
from lightning_info.functional.jacobian import model_outputs
from lightning_info.functional.training_recipe import AUTO, Horizon, TrainingRecipe, WeightDecay
from lightning_info.utilities.batch import default_output_fn
from lightning_info.utilities.data import load_dataset, train_val_split

__all__ = ["CheckpointScores", "load_checkpoint", "score_checkpoint"]


@dataclass(frozen=True)
class CheckpointScores:
    """Result of :func:`score_checkpoint`.

    Attributes:
        scores: the per-sample scores (dataset order, with dataset indices).
        csv_path: the score file written (atomically).
        log_dir: TensorBoard log directory of the summaries.
    """

    scores: SUIScores
    csv_path: Path
    log_dir: Path

    @property
    def linearize_at(self) -> str:
        """``"init"`` or ``"final"``: which weights were the linearization point."""
        return self.scores.linearize_at

    @property
    def settings(self) -> dict[str, Any]:
        """The hyper-parameters used (learning rate, steps, weight decay, ...)."""
        return self.scores.settings


def load_checkpoint(
    path: str | os.PathLike[str], *, trust_checkpoint: bool = False
) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, safely unless ``trust_checkpoint``.

    ``torch.load(..., weights_only=True)`` only rebuilds tensors and primitive containers
    (dicts, lists, tuples, numbers, strings), so loading cannot execute code carried by the file.
    A checkpoint written by Lightning with this package's callbacks attached loads this way.

    Args:
        path: the checkpoint file.
        trust_checkpoint: allow full unpickling (``weights_only=False``), which runs any code the
            file carries: only for files from a source you trust.

    Returns:
        The checkpoint dictionary.

    Raises:
        ValueError: if the checkpoint holds objects that only full unpickling can rebuild (the
            message names them and the opt-in), or is not a dictionary.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: the checkpoint holds objects other than tensors and plain containers, and "
            "rebuilding them would run code stored in the file, so it was not loaded. If you "
            "trust where the file comes from, pass `--trust-checkpoint` "
            f"(`trust_checkpoint=True` in Python). torch.load said: {str(err).splitlines()[0]}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path}: expected a checkpoint dictionary; got {type(checkpoint).__name__}."
        )
    return checkpoint


def _data(
    module: torch.nn.Module,
    datamodule_cls: type[pl.LightningDataModule] | None,
    datamodule_args: dict[str, Any] | None,
    dataset: str | None,
) -> tuple[Dataset, Dataset | None]:
    if datamodule_cls is not None:
        dm = datamodule_cls(**(datamodule_args or {}))
        dm.prepare_data()
        dm.setup("fit")
        train_ds = dm.train_dataloader().dataset
        try:
            val_ds = dm.val_dataloader().dataset
        except Exception:  # a datamodule without validation data is fine: no F-SI then
            val_ds = None
        return train_ds, val_ds
    if dataset is None:
        raise ValueError("give `datamodule_cls` or `dataset` ('digits' or 'mnist').")
    ds = load_dataset(dataset)  # type: ignore[arg-type]
    inputs = _input_layout(module, ds.inputs, ds.image_shape, dataset)
    tr, va = train_val_split(ds.inputs.shape[0], val_fraction=0.2, seed=0)
    return (
        TensorDataset(inputs[tr], ds.targets[tr]),
        TensorDataset(inputs[va], ds.targets[va]),
    )


def _input_layout(
    module: torch.nn.Module, inputs: torch.Tensor, image_shape: tuple[int, int], name: str
) -> torch.Tensor:
    """The embedded pixels as the model takes them: flat (N, H*W) or images (N, 1, H, W).

    Returns:
        The first layout the model accepts.

    Raises:
        ValueError: if the model accepts neither, with both errors.
    """
    layouts = [("flat", inputs), ("image", inputs.reshape(-1, 1, *image_shape))]
    errors = []
    for kind, candidate in layouts:
        try:
            with torch.no_grad():
                model_outputs(module, candidate[:2], output_fn=default_output_fn)
        except Exception as err:  # the model rejects this layout: try the next one
            errors.append(f"{kind} {tuple(candidate.shape[1:])}: {type(err).__name__}: {err}")
            continue
        if kind == "image":
            rank_zero_info(
                f"score: feeding the embedded {name} data as (N, 1, {image_shape[0]}, "
                f"{image_shape[1]}) images (the model rejects flat inputs)."
            )
        return candidate
    raise ValueError(
        f"the model accepts neither layout of the embedded {name!r} data ("
        + "; ".join(errors)
        + "). Score it with your own LightningDataModule (`--datamodule`), whose batches the "
        "model takes as they are."
    )


def _replayed_run(
    checkpoint: dict[str, Any], linearize_at: str
) -> tuple[dict[str, torch.Tensor] | None, str, TrainingRecipe]:
    """The linearization point and the training recipe a checkpoint holds (notes warned).

    Returns:
        ``(initial weights or None, "init" or "final", recipe)``; the recipe counts the steps
        since the snapshot for ``"init"``.

    Raises:
        ValueError: for ``linearize_at="init"`` without the callback's snapshot.
    """
    init_state, init_step = SmoothUniqueInformation.snapshot_from_checkpoint(checkpoint)
    if linearize_at == "init" and init_state is None:
        raise ValueError(
            "linearize_at='init' needs the initial weights, but the checkpoint holds no "
            "SmoothUniqueInformation snapshot (train with the callback attached, or use 'final')."
        )
    resolved = "init" if (linearize_at in ("auto", "init") and init_state is not None) else "final"
    recipe = TrainingRecipe.from_checkpoint(checkpoint, init_step if resolved == "init" else 0)
    for _, message in recipe.assumption_notes():
        rank_zero_warn(f"lightning-info score: {message}", category=UserWarning)
    return init_state, resolved, recipe


def _reporting_trainer(out: Path) -> tuple[pl.Trainer, TensorBoardLogger]:
    """A CPU trainer whose only job is to give the callback a log directory and a logger.

    Returns:
        ``(trainer, logger)``, the logger writing to ``out/tensorboard``.
    """
    logger = TensorBoardLogger(
        save_dir=str(out), name="tensorboard", version="", default_hp_metric=False
    )
    trainer = pl.Trainer(
        logger=logger,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(out),
    )
    return trainer, logger


def score_checkpoint(
    model_cls: type[pl.LightningModule],
    ckpt_path: str | os.PathLike[str],
    *,
    datamodule_cls: type[pl.LightningDataModule] | None = None,
    datamodule_args: dict[str, Any] | None = None,
    dataset: Literal["digits", "mnist"] | str | None = None,
    linearize_at: Literal["auto", "init", "final"] = "auto",
    max_samples: int | None = 1000,
    learning_rate: float | None = None,
    num_steps: Horizon = AUTO,
    weight_decay: WeightDecay = AUTO,
    out: str | os.PathLike[str] = "sui_report",
    trust_checkpoint: bool = False,
) -> CheckpointScores:
    """Compute per-sample SUI for a checkpoint and write the CSV and TensorBoard summaries.

    Args:
        model_cls: the ``LightningModule`` class (``load_from_checkpoint`` is used).
        ckpt_path: the checkpoint file.
        datamodule_cls: a ``LightningDataModule`` class providing ``train_dataloader`` (and
            optionally ``val_dataloader`` for functional SI).
        datamodule_args: keyword arguments for ``datamodule_cls``.
        dataset: an embedded dataset (``"digits"`` / ``"mnist"``, 80/20 split with seed 0, as the
            demo) instead of a datamodule.
        linearize_at: ``"init"`` needs the SUI callback's snapshot in the checkpoint; ``"auto"``
            uses it when present and the checkpoint's weights otherwise.
        max_samples: training samples to score (seeded subset).
        learning_rate: default: the checkpoint's first optimizer group (with momentum β, the
            heavy-ball rate lr/(1-β)).
        num_steps: GD steps: ``"auto"`` (default: the rule of the callback, read from the
            checkpoint: plain SGD replays its steps since the snapshot, SGD with momentum and
            adaptive optimizers score the converged solution), an int, or ``"converged"`` /
            None (t = ∞). The same values as the callback's ``num_steps`` and the command
            line's ``--num-steps``.
        weight_decay: ``"auto"`` (default, the callback's rule: chosen by leave-one-out
            cross-validation for a converged replay, the checkpoint's optimizer's for an SGD
            horizon), ``"loo"``, ``"optimizer"``, or a number.
        out: output folder.
        trust_checkpoint: unpickle arbitrary objects from the checkpoint (``torch.load`` with
            ``weights_only=False``). Default False: only tensors and primitive containers are
            loaded, so a checkpoint from an untrusted source cannot run code. Set it only for a
            checkpoint you trust that holds other objects (see :func:`load_checkpoint`).

    Returns:
        A :class:`CheckpointScores`.

    Raises:
        ValueError: ``linearize_at="init"`` without a snapshot, no learning rate known, no data,
            or a checkpoint that needs ``trust_checkpoint=True``.
    """  # noqa: DOC502 (raised by the helpers below and load_checkpoint; documented as the contract)
    checkpoint = load_checkpoint(ckpt_path, trust_checkpoint=trust_checkpoint)
    module = model_cls.load_from_checkpoint(
        ckpt_path, map_location="cpu", weights_only=not trust_checkpoint
    )
    init_state, resolved, recipe = _replayed_run(checkpoint, linearize_at)
    train_ds, val_ds = _data(module, datamodule_cls, datamodule_args, dataset)
    out = Path(out)
    trainer, logger = _reporting_trainer(out)
    callback = SmoothUniqueInformation(
        linearize_at=resolved,
        max_samples=max_samples,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        num_steps=num_steps,
        dirpath=out,
    )
    scores = callback.score(
        module, train_ds, val_ds, trainer=trainer, init_state=init_state, recipe=recipe, write=True
    )
    logger.experiment.flush()
    assert callback.csv_path_ is not None
    return CheckpointScores(
        scores=scores,
        csv_path=callback.csv_path_,
        log_dir=Path(logger.log_dir),
    )
