"""The SUI callback's checks of the model and data against the closed form's assumptions.

The training recipe itself (optimizer, learning rate, weight decay, steps) and the rule that turns
it into the replayed run live in :mod:`lightning_info.functional.training_recipe`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lightning_info.callbacks._sui_data import uses_augmentation

__all__ = ["augmentation_note", "model_notes", "training_loss"]


def model_notes(pl_module: nn.Module, loss: str, dataset: Any) -> list[tuple[str, str]]:
    """``(key, message)`` for each way the model or data depart from the closed form's assumptions.

    Args:
        pl_module: the module (a cross-entropy loss, BatchNorm layers).
        loss: ``"auto"`` (detect cross-entropy), ``"mse"`` or ``"cross_entropy"``.
        dataset: the dataset to score, if given (a ``transform`` may augment it).

    Returns:
        The notes.
    """
    notes = []
    if _uses_cross_entropy(pl_module, loss):
        notes.append(
            (
                "loss",
                "the training loss is cross-entropy; the closed form (and the paper) use MSE on the raw "
                "outputs with one-hot targets, so the scores describe an MSE-trained linearized "
                "network. Scores are still computed.",
            )
        )
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()):
        notes.append(
            (
                "batchnorm",
                "the model has BatchNorm layers; they are linearized in eval mode (running "
                "statistics), which differs from their training-mode behaviour.",
            )
        )
    note = augmentation_note(dataset, "`dataset`", "an un-augmented copy")
    return notes if note is None else [*notes, note]


def augmentation_note(dataset: Any, name: str, remedy: str) -> tuple[str, str] | None:
    """The ``("augmentation", message)`` note when ``dataset`` has a ``transform``.

    Args:
        dataset: the dataset to score, or None.
        name: how the message names it (``"`dataset`"``, ``"the training dataset"``).
        remedy: what to pass instead.

    Returns:
        The note, or None when the dataset has no transform (or is None).
    """
    if dataset is None or not uses_augmentation(dataset):
        return None
    return (
        "augmentation",
        f"{name} has a `transform`; if it is random augmentation, the scoring pass sees "
        f"augmented samples. Pass {remedy}.",
    )


def training_loss(pl_module: nn.Module, loss: str) -> str:
    """The training loss as declared (``loss=``) or detected, for the reports.

    Detection (``loss="auto"``) is best-effort and only reads ``hparams.loss`` and loss
    submodules (``nn.CrossEntropyLoss``, ``nn.NLLLoss``, ``nn.BCE*Loss``, ``nn.MSELoss``); a module
    calling ``F.cross_entropy`` in ``training_step`` is not detected (its run is not changed to
    find out), so the reports always state the MSE assumption of the closed form.

    Args:
        pl_module: the module.
        loss: the callback's ``loss=`` option.

    Returns:
        ``"cross_entropy"``, ``"mse"`` or ``"unknown"``.
    """
    if loss != "auto":
        return loss
    hparams = getattr(pl_module, "hparams", {}) or {}
    declared = str(hparams.get("loss", "")).lower() if hasattr(hparams, "get") else ""
    if any(tag in declared for tag in ("cross", "entropy", "nll", "bce")):
        return "cross_entropy"
    if "mse" in declared or "squared" in declared:
        return "mse"
    ce_types = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss)
    if any(isinstance(m, ce_types) for m in pl_module.modules()):
        return "cross_entropy"
    if any(isinstance(m, nn.MSELoss) for m in pl_module.modules()):
        return "mse"
    return "unknown"


def _uses_cross_entropy(pl_module: nn.Module, loss: str) -> bool:
    return training_loss(pl_module, loss) == "cross_entropy"
