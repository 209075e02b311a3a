"""Lightning callbacks: when and where to measure, logging and reports (no math here)."""

from lightning_info.callbacks.dse import DiffusionSpectralEntropyMonitor
from lightning_info.callbacks.early_stopping import OverfittingEarlyStopping, StopReason
from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores

__all__: list[str] = [
    "DiffusionSpectralEntropyMonitor",
    "OverfittingEarlyStopping",
    "SUIScores",
    "SmoothUniqueInformation",
    "StopReason",
]
