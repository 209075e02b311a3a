"""lightning_info: what a network learns (DSE/DSMI) and from which samples (SUI).

Two published methods as PyTorch Lightning callbacks, torchmetrics metrics and pure functions:

* Diffusion Spectral Entropy / Mutual Information -- Liao, Liu et al., CISS 2024, arXiv 2312.04823.
* Smooth Unique Information -- Harutyunyan, Achille, Paolini et al., ICLR 2021, arXiv 2101.06640.

The names below are imported on first use (PEP 562), so that ``import lightning_info.cli`` and
``lightning-info --help`` do not import torch and Lightning; ``from lightning_info import X``
works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "aggregate_by_group": "lightning_info.applications",
    "summarize_dataset": "lightning_info.applications",
    "suspicious_samples": "lightning_info.applications",
    "DiffusionSpectralEntropyMonitor": "lightning_info.callbacks.dse",
    "OverfittingEarlyStopping": "lightning_info.callbacks.early_stopping",
    "SmoothUniqueInformation": "lightning_info.callbacks.sui",
    "SUIScores": "lightning_info.callbacks.sui",
    "DiffusionSpectralEntropy": "lightning_info.metrics.dse",
    "DiffusionSpectralMutualInformation": "lightning_info.metrics.dse",
}
_SUBMODULES = frozenset(
    {
        "applications",
        "callbacks",
        "cli",
        "demo",
        "functional",
        "metrics",
        "models",
        "reporting",
        "scoring",
        "utilities",
    }
)

__all__ = [
    # DSE/DSMI metrics, monitor callback and overfitting early stop
    "DiffusionSpectralEntropy",
    "DiffusionSpectralEntropyMonitor",
    "DiffusionSpectralMutualInformation",
    "OverfittingEarlyStopping",
    # SUI callback and applications
    "SUIScores",
    "SmoothUniqueInformation",
    "__version__",
    "aggregate_by_group",
    "functional",
    "summarize_dataset",
    "suspicious_samples",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from lightning_info import functional
    from lightning_info.applications import (
        aggregate_by_group,
        summarize_dataset,
        suspicious_samples,
    )
    from lightning_info.callbacks.dse import DiffusionSpectralEntropyMonitor
    from lightning_info.callbacks.early_stopping import OverfittingEarlyStopping
    from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores
    from lightning_info.metrics.dse import (
        DiffusionSpectralEntropy,
        DiffusionSpectralMutualInformation,
    )


def __getattr__(name: str) -> Any:
    """Import a public name (or a subpackage) on first access.

    Returns:
        The object, cached in the package's namespace.

    Raises:
        AttributeError: for a name the package does not have.
    """
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and subpackages, for ``dir()`` and tab completion.

    Returns:
        The sorted names.
    """
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
