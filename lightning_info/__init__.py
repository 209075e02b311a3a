"""lightning_info: what a network learns (DSE/DSMI) and from which samples (SUI).

Two published methods as PyTorch Lightning callbacks, torchmetrics metrics and pure functions:

* Diffusion Spectral Entropy / Mutual Information -- Liao, Liu et al., CISS 2024, arXiv 2312.04823.
* Smooth Unique Information -- Harutyunyan, Achille, Paolini et al., ICLR 2021, arXiv 2101.06640.
"""

from lightning_info import functional
from lightning_info.applications import aggregate_by_group, summarize_dataset, suspicious_samples
from lightning_info.callbacks.dse import DiffusionSpectralEntropyMonitor
from lightning_info.callbacks.early_stopping import OverfittingEarlyStopping
from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores
from lightning_info.metrics.dse import (
    DiffusionSpectralEntropy,
    DiffusionSpectralMutualInformation,
)

__version__ = "0.1.0.dev0"

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
