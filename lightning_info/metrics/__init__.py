"""torchmetrics wrappers that accumulate state, sync it under DDP and call the functional layer."""

from lightning_info.metrics.dse import DiffusionSpectralEntropy, DiffusionSpectralMutualInformation

__all__: list[str] = ["DiffusionSpectralEntropy", "DiffusionSpectralMutualInformation"]
