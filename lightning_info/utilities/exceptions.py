"""Typed exceptions of ``lightning_info`` (callers branch on the type, never on message text)."""

from __future__ import annotations

__all__ = ["MemoryBudgetError", "NotPositiveDefiniteError"]


class NotPositiveDefiniteError(ValueError):
    r"""A kernel that must be positive definite is not (numerically).

    Raised by the smooth-unique-information closed forms when :math:`A = \Theta + \lambda I` has
    no Cholesky factor: with ``lam == 0`` the kernel is singular (the converged leave-one-out
    solutions are not unique), with ``lam > 0`` it has negative eigenvalues beyond round-off.
    A ``ValueError``, so ``except ValueError`` keeps working.

    Args:
        lam: the ridge :math:`\lambda` that was added to the kernel.

    Example:
        >>> isinstance(NotPositiveDefiniteError(0.0), ValueError)
        True
    """

    def __init__(self, lam: float) -> None:
        """Build the message for a singular (``lam == 0``) or an indefinite kernel."""
        self.lam = float(lam)
        if self.lam == 0.0:
            message = (
                "`ntk` is not positive definite (singular or numerically rank-deficient), so with "
                "`num_steps=None` (t = ∞) and `weight_decay=0` the converged leave-one-out "
                "solutions are not unique. Use `weight_decay > 0` or a finite `num_steps`."
            )
        else:
            message = (
                "`ntk` + N·weight_decay·I is not positive definite: the kernel has negative "
                "eigenvalues beyond round-off. Compute it in float64 from the Jacobians, or "
                "increase `weight_decay`."
            )
        super().__init__(message)


class MemoryBudgetError(MemoryError):
    """A computation would need more memory than its limit; raised before anything is allocated.

    A ``MemoryError``, so ``except MemoryError`` keeps working. The message names the estimate,
    the limit and the cheaper option (see :func:`lightning_info.utilities.memory.check_memory`).

    Args:
        message: the message.
        estimate_bytes: the estimated peak.
        limit_bytes: the limit it exceeds.

    Example:
        >>> err = MemoryBudgetError("too big", estimate_bytes=2e10, limit_bytes=2**33)
        >>> isinstance(err, MemoryError), err.estimate_bytes > err.limit_bytes
        (True, True)
    """

    def __init__(self, message: str, *, estimate_bytes: float, limit_bytes: int) -> None:
        """Keep the numbers beside the message."""
        super().__init__(message)
        self.estimate_bytes = float(estimate_bytes)
        self.limit_bytes = int(limit_bytes)
