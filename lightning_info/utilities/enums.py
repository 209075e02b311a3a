"""String enums for the options of the functional layer.

Every option that takes one of these enums also accepts the plain string value
(``"exact"`` or ``EigenSolver.EXACT``, ``"structured"`` or ``JacobianForm.STRUCTURED``).
"""

from __future__ import annotations

from enum import Enum


class EigenSolver(str, Enum):
    """How the spectrum of the diffusion operator is obtained for DSE.

    * ``EXACT`` (``"exact"``): all N eigenvalues with ``torch.linalg.eigvalsh``; O(N^3) time,
      O(N^2) memory. Matches the reference implementation to round-off.
    * ``LANCZOS`` (``"lanczos"``): stochastic Lanczos quadrature estimate of
      ``tr(f(K))``; an approximation whose error falls with ``num_lanczos_probes`` and
      ``num_lanczos_steps``.
    * ``AUTO`` (``"auto"``): ``EXACT`` up to a sample count threshold, ``LANCZOS`` above it.

    Each member has one entry in the dispatch table ``_DISPATCH`` of
    :mod:`lightning_info.functional.dse`, which picks the backend (its DSE function and whether it
    forms the N x N kernel) that runs on N rows; a new solver is its module, a member here and
    that entry.
    """

    EXACT = "exact"
    LANCZOS = "lanczos"
    AUTO = "auto"

    def __str__(self) -> str:
        """Return the string value (``"exact"``, ...), as used in messages and logs."""
        return self.value


class JacobianForm(str, Enum):
    r"""How per-sample Jacobians are represented for the empirical NTK and projected features.

    Used by :func:`~lightning_info.functional.jacobian.empirical_ntk` and
    :func:`~lightning_info.functional.jacobian.jacobian_features` (``form=``); see
    ``docs/sui.md`` §8.4.

    * ``EXPLICIT`` (``"explicit"``): every selected parameter's Jacobian is materialized with
      ``torch.func.vmap(jacrev(...))`` as K x P numbers per sample, then multiplied
      (:math:`J J^\top`) or randomly projected (:math:`J R`). Works for any model; memory and time
      grow with P.
    * ``STRUCTURED`` (``"structured"``): every plain ``nn.Linear`` layer called once per forward
      on (B, in) inputs, with no tied parameter, keeps its Jacobian in factored form: layer
      inputs A and output gradients G, kernel :math:`(G G^\top) \odot (A A^\top + 1)`, projected
      features :math:`g (a^\top R_W + R_b)`; its (K, out x in) Jacobian is never formed.
      ``nn.Conv2d`` (``groups=1``, zero padding), BatchNorm / ``nn.LayerNorm`` affine
      parameters, ``nn.Embedding`` and ``nn.Linear`` on sequences get their Jacobian blocks in
      closed form from inputs and output gradients. Every other parameter falls back to
      ``EXPLICIT``. Exact up to rounding.
    """

    EXPLICIT = "explicit"
    STRUCTURED = "structured"

    def __str__(self) -> str:
        """Return the string value (``"exact"``, ...), as used in messages and logs."""
        return self.value


class Bandwidth(str, Enum):
    r"""Data-derived widths of the Gaussian kernel of DSE/DSMI (a fixed ``sigma`` is a number).

    A fixed ``sigma`` (the paper's ``10``) is in the units of the features, so DSE and DSMI then
    follow the feature scale: features much smaller than ``sigma`` give a nearly constant kernel
    (DSE near 0), much larger ones a nearly diagonal kernel (DSE near ``log2 N``). These rules
    derive the width from the data, so the kernel, and every value computed from it, does not
    change when all features are rescaled by the same factor.

    * ``MEDIAN`` (``"median"``): one width for all pairs, :math:`\sigma` = the median of the
      pairwise distances (of all rows up to 4096; above that, of a seeded subset of 4096 rows).
    * ``KNN`` (``"knn"``): a width per point, :math:`\sigma_i` = the distance from :math:`x_i`
      to its 10th nearest neighbour, and
      :math:`G_{ij} = \exp(-\lVert x_i - x_j\rVert^2 / (2\sigma_i\sigma_j))` (the self-tuning
      kernel of Zelnik-Manor & Perona, 2004, as in diffusion maps / PHATE): dense regions get
      narrow kernels, sparse ones wide kernels. Exact solver only.
    """

    MEDIAN = "median"
    KNN = "knn"

    def __str__(self) -> str:
        """Return the string value (``"median"`` or ``"knn"``), as used in messages and logs."""
        return self.value


class SUIMethod(str, Enum):
    r"""How the leave-one-out runs of smooth unique information are solved (``method=``).

    Used by :func:`~lightning_info.functional.smooth_unique_information`, the engines of
    :mod:`lightning_info.functional.sui` and the
    :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback; each solved member has
    one entry in the dispatch table ``_SOLVERS`` of :mod:`lightning_info.functional.sui`.

    * ``REPLAY`` (``"replay"``): the ``t`` gradient-descent steps replayed exactly
      (:mod:`~lightning_info.functional._sui_finite`, ``docs/sui.md`` §6.1).
    * ``RIDGE`` (``"ridge"``): the ridge equivalent of early stopping, the t = ∞ closed form with
      :math:`\lambda + c/(\eta t)` (:mod:`~lightning_info.functional._sui_algebra`,
      ``docs/sui.md`` §6.2).
    * ``CONVERGED`` (``"converged"``): the t = ∞ closed form (``num_steps=None``); chosen by the
      plan, not by the caller.
    * ``AUTO`` (``"auto"``): ``REPLAY`` when its estimated cost fits the flop budget, else
      ``RIDGE`` (:func:`~lightning_info.functional.gd_plan.plan_gradient_descent`).
    """

    AUTO = "auto"
    REPLAY = "replay"
    RIDGE = "ridge"
    CONVERGED = "converged"

    def __str__(self) -> str:
        """Return the string value (``"replay"``, ...), as used in messages and logs."""
        return self.value


#: The ``method=`` values a caller may pass (``CONVERGED`` is the plan's choice for t = ∞).
SUI_METHOD_CHOICES: tuple[str, ...] = tuple(
    m.value for m in SUIMethod if m is not SUIMethod.CONVERGED
)
