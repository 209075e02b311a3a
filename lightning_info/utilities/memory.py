"""Up-front memory guards: estimate a peak before allocating it, refuse with a clear message.

Every path whose memory grows with the number of samples N, the outputs K or the replayed steps
estimates its peak *before* allocating and calls :func:`check_memory`, which raises
:class:`~lightning_info.utilities.exceptions.MemoryBudgetError` naming the estimate, the budget
and the cheaper option. The budget is an argument of each public entry point
(``memory_limit_bytes``); ``None`` means :data:`DEFAULT_MEMORY_LIMIT_BYTES`. ``docs/reliability.md``
lists every guard, its estimate and its message.
"""

from __future__ import annotations

from lightning_info.utilities.exceptions import MemoryBudgetError

__all__ = ["DEFAULT_MEMORY_LIMIT_BYTES", "check_memory", "format_bytes"]

#: Default refusal threshold (bytes) of the up-front memory guards: 8 GiB, a third of the
#: 24 GiB machines this project is developed on. Pass ``memory_limit_bytes`` to raise or lower it.
DEFAULT_MEMORY_LIMIT_BYTES = 8 * 2**30


def format_bytes(num_bytes: float) -> str:
    """Format a byte count for a message.

    Args:
        num_bytes: the count.

    Returns:
        e.g. ``"20.0 GB"`` (decimal units, as ``free -h`` and most users read them).

    Example:
        >>> format_bytes(20e9), format_bytes(512), format_bytes(3.5e6)
        ('20.0 GB', '512 B', '3.5 MB')
    """
    value = float(num_bytes)
    if abs(value) < 1000:
        return f"{value:.0f} B"
    units = ("kB", "MB", "GB", "TB")
    index = 0
    value /= 1000
    while abs(value) >= 1000 and index < len(units) - 1:
        value /= 1000
        index += 1
    return f"{value:.1f} {units[index]}"


def check_memory(
    estimate_bytes: float, *, limit_bytes: int | None, what: str, cheaper: str
) -> None:
    """Refuse a computation whose estimated peak exceeds the limit, before it allocates.

    Args:
        estimate_bytes: the estimated peak of the computation.
        limit_bytes: the refusal threshold; None means :data:`DEFAULT_MEMORY_LIMIT_BYTES`.
        what: the computation, e.g. ``"exact DSE on N = 50000 samples (N x N float64 kernel)"``.
        cheaper: the cheaper option, e.g. ``'solver="lanczos"'``.

    Raises:
        MemoryBudgetError: if ``estimate_bytes > limit_bytes``.

    Example:
        >>> check_memory(1e6, limit_bytes=None, what="a small thing", cheaper="nothing")
        >>> try:
        ...     check_memory(2e10, limit_bytes=2**33, what="exact DSE", cheaper='solver="lanczos"')
        ... except MemoryError as err:
        ...     print(err)
        exact DSE needs about 20.0 GB, over the memory limit of 8.6 GB (`memory_limit_bytes`); use solver="lanczos", or raise `memory_limit_bytes` if the machine has the memory.
    """
    limit = DEFAULT_MEMORY_LIMIT_BYTES if limit_bytes is None else int(limit_bytes)
    if estimate_bytes > limit:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(estimate_bytes)}, over the memory limit of "
            f"{format_bytes(limit)} (`memory_limit_bytes`); use {cheaper}, or raise "
            "`memory_limit_bytes` if the machine has the memory.",
            estimate_bytes=estimate_bytes,
            limit_bytes=limit,
        )
