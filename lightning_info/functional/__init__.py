"""Pure functions: tensors in, tensors out. No Lightning import, no I/O, no global state."""

__all__: list[str] = []
