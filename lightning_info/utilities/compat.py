"""One import path for both Lightning packages: ``pytorch_lightning`` and ``lightning.pytorch``.

Lightning ships the same trainer twice: the standalone ``pytorch_lightning`` package (this
project's hard dependency) and the unified ``lightning`` package (``import lightning as L``,
what Lightning's own docs now teach). Their classes are distinct objects, so a callback that
subclasses only ``pytorch_lightning.Callback`` fails ``isinstance`` checks made by
``lightning.pytorch`` (LightningCLI rejects it: "Import path does not correspond to a subclass of
Callback"), and a logger check against one package's ``TensorBoardLogger`` misses the other's.

This module builds the bases of ``lightning_info``'s callbacks from **both** packages when
``lightning`` is installed (it is optional), so one class works with either ``Trainer``, either
``LightningCLI`` and either package's loggers:

* :class:`Callback`: a subclass of ``pytorch_lightning.Callback`` and, when available, of
  ``lightning.pytorch.Callback``. Both define the same hooks; methods resolve to the
  ``pytorch_lightning`` ones.
* :class:`EarlyStopping`: likewise for ``EarlyStopping``; ``pytorch_lightning``'s implementation
  runs, and the ``lightning.pytorch`` base is initialised by it (its own ``__init__`` is skipped,
  see :class:`_SkipInit`).
* :data:`TENSORBOARD_LOGGER_TYPES`: the ``TensorBoardLogger`` classes of both packages, for
  :func:`lightning_info.reporting.tensorboard_writers`.
* :func:`callback_state_key`: the ``state_key`` of a configurable callback, the string Lightning's
  own callbacks build with their protected ``Callback._generate_state_key`` (so checkpoints keep
  their keys), built here from public data only.
* :func:`fit_val_dataloaders`: the validation loaders of the current ``fit``, also before the
  validation loop has first run (Lightning sets ``trainer.val_dataloaders`` lazily); the only
  place that reads a private Lightning attribute, as a documented fallback (tested in
  ``tests/utilities/test_compat_loaders.py`` with both packages).

Only public Lightning API is used outside this module; what would need a protected name lives
here, with a test per Lightning package (``tests/utilities/test_compat.py``).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping as _PLEarlyStopping
from pytorch_lightning.loggers import TensorBoardLogger as _PLTensorBoardLogger
from pytorch_lightning.utilities.model_helpers import is_overridden

try:  # the unified package is optional
    import lightning.pytorch as _lightning
    from lightning.pytorch.callbacks import EarlyStopping as _LEarlyStopping
    from lightning.pytorch.loggers import TensorBoardLogger as _LTensorBoardLogger
except ImportError:  # pragma: no cover - exercised only without `lightning` installed
    _lightning = None

__all__ = [
    "LIGHTNING_AVAILABLE",
    "TENSORBOARD_LOGGER_TYPES",
    "Callback",
    "EarlyStopping",
    "callback_state_key",
    "fit_val_dataloaders",
]

#: Whether the unified ``lightning`` package is installed (then both packages are supported).
LIGHTNING_AVAILABLE = _lightning is not None

if _lightning is not None:

    class Callback(pl.Callback, _lightning.Callback):  # type: ignore[misc]
        """A callback of both Lightning packages (see the module docstring)."""

    class _SkipInit(_LEarlyStopping):
        """The ``lightning.pytorch`` EarlyStopping base, already initialised by the other one.

        ``pytorch_lightning.callbacks.EarlyStopping.__init__`` ends with ``super().__init__()``;
        in the combined class that call reaches this class, whose attributes the
        ``pytorch_lightning`` initialiser has just set, so there is nothing left to do.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            """Do nothing: ``pytorch_lightning``'s ``EarlyStopping.__init__`` set everything."""

    class EarlyStopping(_PLEarlyStopping, _SkipInit):  # type: ignore[misc]
        """An ``EarlyStopping`` of both Lightning packages (see the module docstring)."""

    TENSORBOARD_LOGGER_TYPES: tuple[type, ...] = (_PLTensorBoardLogger, _LTensorBoardLogger)
else:  # pragma: no cover - exercised only without `lightning` installed

    class Callback(pl.Callback):  # type: ignore[no-redef]
        """A ``pytorch_lightning`` callback (``lightning`` is not installed)."""

    class EarlyStopping(_PLEarlyStopping):  # type: ignore[no-redef]
        """A ``pytorch_lightning`` EarlyStopping (``lightning`` is not installed)."""

    TENSORBOARD_LOGGER_TYPES = (_PLTensorBoardLogger,)


def callback_state_key(callback: object, **kwargs: Any) -> str:
    """The ``state_key`` of a callback configured by ``kwargs``, as Lightning builds it.

    Equal to ``callback._generate_state_key(**kwargs)`` of both Lightning packages (the class's
    qualified name followed by the ``repr`` of the keywords), so a checkpoint written before or
    after keeps its callback states under the same key; built without the protected method.

    Args:
        callback: the callback.
        **kwargs: the arguments that make two instances distinct (e.g. ``monitor``, ``mode``).

    Returns:
        The key, e.g. ``"DiffusionSpectralEntropyMonitor{'layers': None, ...}"``.

    Example:
        >>> class Probe(Callback):
        ...     pass
        >>> callback_state_key(Probe(), layers=None, seed=0)
        "Probe{'layers': None, 'seed': 0}"
    """
    return f"{type(callback).__qualname__}{kwargs!r}"


def _defined_val_dataloader(owner: Any) -> Any:
    """``owner.val_dataloader()`` when ``owner`` (a module or datamodule) overrides it, else None.

    Returns:
        The loader(s), or None.
    """
    if owner is None or not callable(getattr(owner, "val_dataloader", None)):
        return None
    base = pl.LightningDataModule if isinstance(owner, pl.LightningDataModule) else None
    if base is None and isinstance(owner, pl.LightningModule):
        base = pl.LightningModule
    if base is None:  # the other package's classes: compare with its own base
        if _lightning is None:
            return None
        base = (
            _lightning.LightningDataModule
            if isinstance(owner, _lightning.LightningDataModule)
            else _lightning.LightningModule
        )
    return owner.val_dataloader() if is_overridden("val_dataloader", owner, base) else None


def fit_val_dataloaders(trainer: Any) -> Any:
    """The validation loader(s) of the trainer's current ``fit``, or None without validation.

    In order: the public ``trainer.val_dataloaders`` (set once the validation loop has run);
    else the ``val_dataloader()`` of ``trainer.datamodule``, then of ``trainer.lightning_module``
    (public hooks, called anew); else, for loaders passed to ``fit(..., val_dataloaders=)``
    directly (which Lightning exposes through no public API before validation runs), the fit
    loop's private ``val_loop._data_source`` (Lightning 2.x, both packages). Any other
    Lightning version without that attribute gets None (then SUI's functional SI needs
    ``val_dataset=``).

    Args:
        trainer: a ``Trainer`` of either package, during or after ``fit``.

    Returns:
        What the validation loop iterates: a loader, a sequence or mapping of loaders, or None.
    """
    loaders = getattr(trainer, "val_dataloaders", None)
    if loaders is not None:
        return loaders
    for owner in (getattr(trainer, "datamodule", None), getattr(trainer, "lightning_module", None)):
        loaders = _defined_val_dataloader(owner)
        if loaders is not None:
            return loaders
    try:  # documented fallback: loaders given to fit() directly, before validation has run
        source = trainer.fit_loop.epoch_loop.val_loop._data_source
        return source.dataloader() if source.is_defined() else None
    except AttributeError:
        return None
