"""Lightning callbacks: when and where to measure, logging and reports (no math here)."""

from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores

__all__: list[str] = ["SUIScores", "SmoothUniqueInformation"]
