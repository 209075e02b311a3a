"""String enums for the options of the functional layer.

Every option that takes one of these enums also accepts the plain string value
(``"exact"`` or ``EigenSolver.EXACT``).
"""

from __future__ import annotations

from enum import Enum


class EigenSolver(str, Enum):
    """How the spectrum of the diffusion operator is obtained for DSE.

    * ``EXACT`` (``"exact"``): all N eigenvalues with ``torch.linalg.eigvalsh``; O(N^3) time,
      O(N^2) memory. Matches the reference implementation to round-off.
    * ``LANCZOS`` (``"lanczos"``): stochastic Lanczos quadrature estimate of
      ``tr(f(K))``; an approximation whose error falls with ``num_probes`` and ``num_steps``.
    * ``AUTO`` (``"auto"``): ``EXACT`` up to a sample count threshold, ``LANCZOS`` above it.
    """

    EXACT = "exact"
    LANCZOS = "lanczos"
    AUTO = "auto"

    def __str__(self) -> str:
        return self.value
