"""Score a saved checkpoint with smooth unique information, outside ``fit``.

Used by ``lightning-info score``; also callable from Python. The heavy lifting is the
:class:`~lightning_info.callbacks.SmoothUniqueInformation` callback's :meth:`score`; this module
only loads the checkpoint, finds the training data and the training hyper-parameters.
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import zipfile
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
from lightning_info.utilities.batch import default_input_fn, default_output_fn
from lightning_info.utilities.data import load_dataset, train_val_split
from lightning_info.utilities.memory import check_memory, format_bytes

__all__ = [
    "CheckpointError",
    "CheckpointScores",
    "DataMismatchError",
    "load_checkpoint",
    "score_checkpoint",
]

#: Where Lightning keeps the hyper-parameters of the module and of the datamodule in a checkpoint.
MODEL_HPARAMS_KEY = "hyper_parameters"
DATAMODULE_HPARAMS_KEY = "datamodule_hyper_parameters"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not a Lightning checkpoint, or not this model's.

    Attributes:
        needs_trust: True only for a valid file holding objects that only full unpickling can
            rebuild (then, and only then, ``trust_checkpoint=True`` / ``--trust-checkpoint`` is
            the way out).
    """

    def __init__(self, message: str, *, needs_trust: bool = False) -> None:
        """Keep whether the opt-in would help beside the message."""
        super().__init__(message)
        self.needs_trust = needs_trust


class DataMismatchError(ValueError):
    """The model does not take the data it is to be scored on (e.g. 784 pixels into a 64-input)."""


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
    Before unpickling, the checksums of a zip checkpoint (the format ``torch.save`` writes) are
    verified, so that a damaged file is reported as such and not loaded with wrong weights.

    Args:
        path: the checkpoint file.
        trust_checkpoint: allow full unpickling (``weights_only=False``), which runs any code the
            file carries: only for files from a source you trust.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointError: (a ``ValueError``) for a file that is missing, empty, truncated or
            damaged ("not a readable checkpoint"), that is not a checkpoint dictionary with a
            ``state_dict``, or, with ``needs_trust`` set, a valid file that holds objects which
            only full unpickling can rebuild (the message names them and the opt-in).
    """
    path = Path(path)
    _check_readable(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as err:  # classify: objects that need trust, or a damaged file
        needed = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if needed and not trust_checkpoint:
            raise CheckpointError(
                f"{path}: the checkpoint holds objects other than tensors and plain containers "
                f"({', '.join(dict.fromkeys(needed))}), and rebuilding them would run code stored "
                "in the file, so it was not loaded. If you trust where the file comes from, pass "
                "`--trust-checkpoint` (`trust_checkpoint=True` in Python).",
                needs_trust=True,
            ) from None
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, damaged, or not written by "
            f"torch.save): {type(err).__name__}: {_first_line(err)}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"{path}: expected a checkpoint dictionary; got {type(checkpoint).__name__}."
        )
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(
            f"{path}: not a Lightning checkpoint (no 'state_dict'; it holds "
            f"{sorted(map(str, checkpoint))[:8]}). Save it with Trainer.save_checkpoint or "
            "ModelCheckpoint."
        )
    return checkpoint


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message, without terminal escapes.

    Returns:
        The first non-empty line's first sentence (at most 200 characters), or
        ``"(no message)"``.
    """
    for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines():
        if line.strip():
            return line.strip().split(". ")[0].rstrip(".")[:200]
    return "(no message)"


def _check_readable(path: Path) -> None:
    """Fail on a missing or empty file, and on a zip checkpoint whose checksums do not match.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is not a readable checkpoint: the file is empty (0 bytes).")
    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format, or not a checkpoint at all: torch.load decides
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint (a damaged zip archive): {_first_line(err)}"
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: the checksum of its member {bad!r} does not "
            "match (the file is damaged)."
        )


def _init_kwargs(cls: type, checkpoint: dict[str, Any], key: str) -> dict[str, Any]:
    """The keyword arguments Lightning's ``load_from_checkpoint`` passes to ``cls(...)``.

    The saved hyper-parameters under ``key``, wrapped under the checkpoint's
    ``hparams_name`` when ``__init__`` takes them as one argument, and filtered to ``__init__``'s
    parameters unless it takes ``**kwargs`` (``pytorch_lightning.core.saving._load_state``).

    Returns:
        The arguments (empty when the checkpoint saved none).
    """
    saved = checkpoint.get(key)
    kwargs = dict(saved) if isinstance(saved, dict) else {}
    params = inspect.signature(cls.__init__).parameters
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][1:]
    name_key = f"{key[: -len('hyper_parameters')]}hparams_name"
    if checkpoint.get(name_key) in names:
        kwargs = {checkpoint[name_key]: kwargs}
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in names}
    return kwargs


def _short(kwargs: dict[str, Any], limit: int = 120) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _guard_model_memory(
    model_cls: type[pl.LightningModule],
    checkpoint: dict[str, Any],
    limit_bytes: int | None,
) -> None:
    """Refuse a model whose parameters would exceed the memory limit, before building it.

    The model is built on PyTorch's ``meta`` device from the checkpoint's hyper-parameters
    (no memory is allocated for its tensors) and its parameters and buffers are counted. A model
    that cannot be built on the meta device is not estimated (it is then built for real, as
    Lightning does).

    Raises:
        MemoryBudgetError: if the parameters and buffers need more than ``limit_bytes``.
    """  # noqa: DOC502 (raised by check_memory: the guard's contract)
    kwargs = _init_kwargs(model_cls, checkpoint, MODEL_HPARAMS_KEY)
    if "_instantiator" in kwargs:
        return  # LightningCLI's instantiator: Lightning checks and builds it
    try:
        with torch.device("meta"):
            model = model_cls(**kwargs)
    except Exception:  # not buildable on the meta device: no estimate, Lightning builds it
        return
    tensors = itertools.chain(model.parameters(), model.buffers())
    estimate = sum(t.numel() * t.element_size() for t in tensors)
    stored = sum(
        t.numel() * t.element_size()
        for t in checkpoint["state_dict"].values()
        if torch.is_tensor(t)
    )
    check_memory(
        estimate,
        limit_bytes=limit_bytes,
        what=(
            f"building {model_cls.__name__} from the checkpoint's hyper-parameters "
            f"({_short(kwargs)}) (its parameters and buffers)"
        ),
        cheaper=(
            "a checkpoint whose hyper-parameters match its weights (its state_dict holds "
            f"{format_bytes(stored)})"
        ),
    )


def _load_module(
    model_cls: type[pl.LightningModule], ckpt_path: Path, trust_checkpoint: bool
) -> pl.LightningModule:
    """``model_cls.load_from_checkpoint`` on the CPU, its failures as one-line errors.

    Returns:
        The module with the checkpoint's weights.

    Raises:
        CheckpointError: if the checkpoint's hyper-parameters or weights do not fit ``model_cls``.
    """
    try:
        return model_cls.load_from_checkpoint(
            ckpt_path, map_location="cpu", weights_only=not trust_checkpoint
        )
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        text = " ".join(str(err).split())
        if "Error(s) in loading state_dict" in text:
            detail = text.split(":", 1)[-1].strip()
            raise CheckpointError(
                f"{ckpt_path}: its weights do not fit {model_cls.__name__} "
                f"({detail[:400]}{'...' if len(detail) > 400 else ''}); is it a checkpoint of "
                "this model class?"
            ) from None
        raise CheckpointError(
            f"{ckpt_path}: {model_cls.__name__} cannot be built from this checkpoint: "
            f"{type(err).__name__}: {text[:400]}"
        ) from None


def _data(
    module: torch.nn.Module,
    datamodule_cls: type[pl.LightningDataModule] | None,
    datamodule_kwargs: dict[str, Any],
    dataset: str | None,
) -> tuple[Dataset, Dataset | None]:
    """The training (and validation) data: the datamodule's, or an embedded dataset's.

    Returns:
        ``(train dataset, validation dataset or None)``.

    Raises:
        ValueError: if the datamodule cannot be built with its arguments, or no source is given.
    """
    if datamodule_cls is not None:
        try:
            dm = datamodule_cls(**datamodule_kwargs)
        except TypeError as err:
            raise ValueError(
                f"{datamodule_cls.__name__} cannot be built with the arguments "
                f"{_short(datamodule_kwargs)} (the checkpoint's datamodule hyper-parameters and "
                f"--datamodule-args): {err}"
            ) from None
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


def _first_layer(module: torch.nn.Module) -> str:
    """What the model's first layer with a fixed input size takes, in words.

    Returns:
        e.g. ``"its first layer net.0 (Linear) takes 64 input features"``, or ``""``.
    """
    for name, sub in module.named_modules():
        for attr, what in (("in_features", "input features"), ("in_channels", "input channels")):
            size = getattr(sub, attr, None)
            if isinstance(size, int):
                return f"; its first layer {name} ({type(sub).__name__}) takes {size} {what}"
    return ""


def _check_model_takes(
    module: torch.nn.Module,
    train_ds: Dataset,
    datamodule_cls: type[pl.LightningDataModule],
    saved: dict[str, Any],
) -> None:
    """Run the model on two training samples; a shape error becomes one line naming both shapes.

    Raises:
        DataMismatchError: if the model rejects the datamodule's inputs, naming the input shape,
            what the model's first layer takes, the checkpoint's saved datamodule arguments and
            ``--datamodule-args``.
    """
    try:
        x = default_input_fn(torch.utils.data.default_collate([train_ds[0], train_ds[1]]))
    except Exception:  # an unusual dataset or batch: the callback's own checks report it
        return
    try:
        with torch.no_grad():
            model_outputs(module, x, output_fn=default_output_fn)
    except RuntimeError as err:
        hint = (
            f"the checkpoint saved the datamodule arguments {_short(saved)}; "
            if saved
            else "the checkpoint saved no datamodule arguments; "
        )
        raise DataMismatchError(
            f"the model does not take the training data of {datamodule_cls.__name__}: its inputs "
            f"have shape {tuple(x.shape[1:])} per sample{_first_layer(module)} "
            f"({' '.join(str(err).split())[:200]}). The model was trained on other data: "
            f"{hint}pass the datamodule arguments it was trained with as --datamodule-args "
            "'{...}' (datamodule_args= in Python)."
        ) from None


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
    memory_limit_bytes: int | None = None,
) -> CheckpointScores:
    """Compute per-sample SUI for a checkpoint and write the CSV and TensorBoard summaries.

    Args:
        model_cls: the ``LightningModule`` class (``load_from_checkpoint`` is used).
        ckpt_path: the checkpoint file.
        datamodule_cls: a ``LightningDataModule`` class providing ``train_dataloader`` (and
            optionally ``val_dataloader`` for functional SI). It is built, as
            ``LightningDataModule.load_from_checkpoint`` does, with the hyper-parameters the
            checkpoint saved for it (``save_hyperparameters()`` in the datamodule; stored under
            ``datamodule_hyper_parameters``).
        datamodule_args: keyword arguments for ``datamodule_cls``; they override the saved ones
            key by key.
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
        memory_limit_bytes: refuse, before building it, a model whose parameters and buffers
            (counted on the ``meta`` device from the checkpoint's hyper-parameters) need more;
            None: :data:`~lightning_info.utilities.memory.DEFAULT_MEMORY_LIMIT_BYTES`.

    Returns:
        A :class:`CheckpointScores`.

    Raises:
        CheckpointError: (a ``ValueError``) an unreadable checkpoint, one that needs
            ``trust_checkpoint=True``, or one whose weights do not fit ``model_cls``.
        DataMismatchError: (a ``ValueError``) the model does not take the datamodule's inputs.
        MemoryBudgetError: the model's parameters exceed ``memory_limit_bytes``.
        ValueError: ``linearize_at="init"`` without a snapshot, no learning rate known, no data.
    """  # noqa: DOC502 (raised by the helpers below and load_checkpoint; documented as the contract)
    checkpoint = load_checkpoint(ckpt_path, trust_checkpoint=trust_checkpoint)
    _guard_model_memory(model_cls, checkpoint, memory_limit_bytes)
    module = _load_module(model_cls, Path(ckpt_path), trust_checkpoint)
    init_state, resolved, recipe = _replayed_run(checkpoint, linearize_at)
    saved_dm = (
        _init_kwargs(datamodule_cls, checkpoint, DATAMODULE_HPARAMS_KEY) if datamodule_cls else {}
    )
    dm_kwargs = {**saved_dm, **(datamodule_args or {})}
    train_ds, val_ds = _data(module, datamodule_cls, dm_kwargs, dataset)
    if datamodule_cls is not None:
        _check_model_takes(module, train_ds, datamodule_cls, saved_dm)
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
