"""torchmetrics wrappers that accumulate state, sync it under DDP and call the functional layer."""

__all__: list[str] = []
