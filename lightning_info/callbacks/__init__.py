"""Lightning callbacks: when and where to measure, logging and reports (no math here)."""

__all__: list[str] = []
