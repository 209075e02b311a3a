r"""torchmetrics wrappers of diffusion spectral entropy (DSE) and mutual information (DSMI).

Liao, Liu et al., *Assessing Neural Network Representations During Training Using Noise-Resilient
Diffusion Spectral Entropy*, IEEE CISS 2024 (arXiv 2312.04823), Sec. II-III. The math lives in
:mod:`lightning_info.functional.dse`; these classes only accumulate embeddings (list states reduced
by concatenation, so after a DDP sync every process holds the same samples and computes the same
value), put them into a canonical order and call the functional cores.

The metrics call only the small private interface that :mod:`lightning_info.functional.dse`
documents for them (option and batch validation, ``_reference_labels``, ``_dsmi_compute`` and
``_information_profile``) and only public ``torchmetrics.Metric`` API (``sync_context`` with
``sync_on_compute``, ``reset``).

Canonical order. DSE/DSMI are order-invariant only up to the seeded random subsets they draw
(``max_samples`` subsampling, the DSMI subsets :math:`Z^*_c`). Pass ``index=`` (each sample's
position in a fixed dataset) to ``update`` and the samples are sorted by it, duplicates dropped, so
the value does not depend on how the samples were split over batches or processes (a
``DistributedSampler`` that pads with repeated samples included). Without ``index`` the samples are
used in concatenation order, which under DDP is rank 0's samples, then rank 1's, ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from lightning_info.functional.dse import (
    _check_dse_options,
    _check_dsmi_options,
    _dse_update,
    _dsmi_compute,
    _information_profile,
    _Profile,
    _reference_labels,
    cluster_reference,
)
from lightning_info.utilities.checks import _as_tensor, _check_finite, _check_int, _check_ndim
from lightning_info.utilities.enums import EigenSolver

__all__ = ["DiffusionSpectralEntropy", "DiffusionSpectralMutualInformation"]


def _check_index(index: Any, n: int) -> Tensor:
    """Validate an (n,) integer ``index`` tensor and return it as int64 (on its device).

    Returns:
        The (n,) int64 positions.

    Raises:
        TypeError: for non-numeric or floating-point positions.
        ValueError: for a tensor that is not 1-D or has another length than the embeddings.
    """
    idx = _as_tensor(index, "index")
    _check_ndim(idx, "index", (1,), "1-D (N,) integer sample positions")
    if idx.is_floating_point():
        raise TypeError(f"`index` must hold integers; got dtype {idx.dtype}.")
    if idx.shape[0] != n:
        raise ValueError(
            f"`embeddings` and `index` must have the same number of samples; got {n} and "
            f"{idx.shape[0]}."
        )
    return idx.to(torch.long)


class _DiffusionMetricBase(Metric):
    """Shared state handling: embeddings (+ optional index) in list states, canonical order."""

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False
    embeddings: list[Tensor]
    index: list[Tensor]

    def __init__(
        self,
        *,
        sigma: float | str,
        t: float,
        max_samples: int | None,
        seed: int,
        solver: EigenSolver | str,
        num_lanczos_probes: int,
        num_lanczos_steps: int,
        dtype: torch.dtype | str | None,
        memory_limit_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        sigma, t, _, solver, num_lanczos_probes, num_lanczos_steps, seed = _check_dse_options(
            sigma, t, dtype, solver, num_lanczos_probes, num_lanczos_steps, seed
        )
        self.sigma = sigma
        self.t = t
        self.max_samples = _check_int(max_samples, "max_samples", minimum=2, allow_none=True)
        self.seed = seed
        self.solver = solver
        self.num_lanczos_probes = num_lanczos_probes
        self.num_lanczos_steps = num_lanczos_steps
        self.work_dtype = dtype  # validated above; None means the functional default (float64)
        self.memory_limit_bytes = _check_int(
            memory_limit_bytes, "memory_limit_bytes", minimum=1, allow_none=True
        )
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def _store(self, embeddings: Any, index: Any) -> int:
        x = _as_tensor(embeddings, "embeddings")
        if x.ndim > 2 or x.ndim == 1:
            x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
        x = _dse_update(x.detach())
        self.embeddings.append(x)
        if index is not None:
            self.index.append(_check_index(index, x.shape[0]).to(x.device))
        return x.shape[0]

    def _gathered(self, *extra: list[Tensor]) -> tuple[Tensor, ...]:
        """Concatenated (and, with ``index``, sorted and de-duplicated) states.

        Returns:
            ``(embeddings, *extra)`` in canonical order, checked finite with N >= 2.

        Raises:
            ValueError: if ``index`` was given to some ``update`` calls only, or (from the
                checks) for non-finite embeddings or fewer than 2 samples.
        """
        x = dim_zero_cat(self.embeddings)
        others = [dim_zero_cat(e) for e in extra]
        index = dim_zero_cat(self.index) if len(self.index) else None
        if index is not None and index.numel() > 0:
            if index.numel() != x.shape[0]:
                raise ValueError(
                    "`index` must be passed to every `update` call or to none; got "
                    f"{index.numel()} indices for {x.shape[0]} samples."
                )
            order = torch.argsort(index.flatten(), stable=True)
            sorted_index = index.flatten()[order]
            keep = torch.ones_like(sorted_index, dtype=torch.bool)
            keep[1:] = sorted_index[1:] != sorted_index[:-1]  # drop padding duplicates
            order = order[keep]
            x = x[order]
            others = [o[order.to(o.device)] for o in others]
        _check_finite(x, "embeddings")
        if x.shape[0] < 2:
            raise ValueError(f"`embeddings` must have at least 2 samples (rows); got {x.shape[0]}.")
        return (x, *others)

    def options(self) -> dict[str, Any]:
        """The numerical options this metric was built with (``__init__`` keywords).

        Returns:
            ``{sigma, t, max_samples, seed, solver, num_lanczos_probes, num_lanczos_steps,
            dtype, memory_limit_bytes}``, e.g. to build another metric with the same kernel.
        """
        return dict(
            sigma=self.sigma,
            t=self.t,
            max_samples=self.max_samples,
            seed=self.seed,
            solver=self.solver,
            num_lanczos_probes=self.num_lanczos_probes,
            num_lanczos_steps=self.num_lanczos_steps,
            dtype=self.work_dtype,
            memory_limit_bytes=self.memory_limit_bytes,
        )

    def _options(self) -> dict[str, Any]:
        """The keywords of the functional cores.

        Returns:
            The options as keywords of ``_dsmi_compute`` / ``_information_profile``.
        """
        return dict(
            sigma=self.sigma,
            t=self.t,
            dtype=self.work_dtype,
            solver=self.solver,
            num_lanczos_probes=self.num_lanczos_probes,
            num_lanczos_steps=self.num_lanczos_steps,
            seed=self.seed,
            max_samples=self.max_samples,
            memory_limit_bytes=self.memory_limit_bytes,
        )


class DiffusionSpectralEntropy(_DiffusionMetricBase):
    r"""Accumulate embeddings and compute their diffusion spectral entropy (DSE) in bits.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II: with the eigenvalues :math:`\lambda_i` of
    the symmetric diffusion kernel :math:`K = D^{-1/2} G D^{-1/2}`,
    :math:`G_{ij} = \exp(-\|z_i - z_j\|^2 / 2\sigma^2)`,

    .. math::

        S_D(Z, t) = -\sum_i p_i \log_2 p_i, \qquad p_i = |\lambda_i|^t / \textstyle\sum_j |\lambda_j|^t.

    ``compute`` equals :func:`~lightning_info.functional.diffusion_spectral_entropy` on the
    concatenation of all updates (after a DDP sync: of all processes), in canonical order when
    ``index`` is given (see the module docstring). DSE grows with the number of samples (ceiling
    :math:`\log_2 N`), so compare values computed at the same sample count: ``max_samples`` caps it
    with a seeded subsample that is identical on every process.

    Args:
        sigma: Gaussian kernel bandwidth, > 0, in the units of the embeddings (default 10, the
            paper's), or ``"median"`` / ``"knn"``: a width derived from the data, so the value
            does not change with the scale of the features (see
            :func:`~lightning_info.functional.diffusion_spectral_entropy`).
        t: diffusion time, >= 1. Default 1.
        max_samples: cap on the number of samples (seeded uniform subsample above it); None = all.
            Default 2048.
        seed: seed of the local generator (subsample, Lanczos probes); never the global RNG.
        solver: ``"exact"``, ``"lanczos"`` or ``"auto"`` (an :class:`EigenSolver` also works).
        num_lanczos_probes: Lanczos probes, >= 1.
        num_lanczos_steps: Lanczos steps, >= 1.
        dtype: eigensolve precision (None = float64, or float32).
        memory_limit_bytes: refusal threshold of the exact path's up-front memory guard (checked
            at ``compute``, before the N x N kernel is allocated), or None for the default 8 GiB
            (see :func:`~lightning_info.functional.diffusion_spectral_entropy`).
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).

    Returns (``compute``):
        0-dim float64 tensor, bits, in ``[0, log2 N]``; higher = the diffusion spectrum is spread
        over more directions.

    Raises:
        TypeError: on options of the wrong type or non-numeric embeddings.
        ValueError: on invalid options (see the functional), embeddings that are not (N, D) or hold
            NaN/inf (raised by ``update``), fewer than 2 samples in total, or ``index`` given to some
            updates only (raised by ``compute``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> z = 100.0 * torch.eye(4, 8).repeat_interleave(25, 0) + 0.01 * torch.randn(100, 8, generator=g)
        >>> metric = DiffusionSpectralEntropy()
        >>> for batch in z.split(30):
        ...     metric.update(batch)
        >>> round(metric.compute().item(), 3)  # four tight clusters: log2(4)
        2.0
    """

    def __init__(
        self,
        *,
        sigma: float | str = 10.0,
        t: float = 1,
        max_samples: int | None = 2048,
        seed: int = 0,
        solver: EigenSolver | str = "exact",
        num_lanczos_probes: int = 16,
        num_lanczos_steps: int = 32,
        dtype: torch.dtype | str | None = None,
        memory_limit_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate the options (documented in the class docstring)."""
        super().__init__(
            sigma=sigma,
            t=t,
            max_samples=max_samples,
            seed=seed,
            solver=solver,
            num_lanczos_probes=num_lanczos_probes,
            num_lanczos_steps=num_lanczos_steps,
            dtype=dtype,
            memory_limit_bytes=memory_limit_bytes,
            **kwargs,
        )
        self._last_spectrum: Tensor | None = None

    def update(self, embeddings: Tensor, *, index: Tensor | None = None) -> None:
        """Append a batch of embeddings ``(B, D)`` (higher ranks are flattened to ``(B, -1)``).

        Args:
            embeddings: (B, ...) finite features; detached, kept on their device.
            index: optional (B,) integer positions of these samples in a fixed dataset (see the
                module docstring).
        """
        self._last_spectrum = None  # new samples: the last compute's spectrum is stale
        self._store(embeddings, index)

    def reset(self) -> None:
        """Reset the accumulated samples (``Metric.reset``) and forget the last spectrum."""
        super().reset()
        self._last_spectrum = None

    def compute(self) -> Tensor:
        """DSE in bits of all accumulated embeddings.

        Returns:
            0-dim float64 tensor, in ``[0, log2 N]``.
        """
        (x,) = self._gathered()
        profile = _information_profile(x, {}, **self._options())
        # the exact solver's eigenvalues are kept for :meth:`spectrum` (no second eigensolve)
        self._last_spectrum = (
            None if profile.eigvals is None else torch.sort(profile.eigvals).values
        )
        return profile.dse

    def spectrum(self) -> Tensor:
        r"""Eigenvalues of the diffusion operator of the accumulated embeddings (for histograms).

        Uses the same samples as :meth:`compute` (synced across processes, canonical order,
        subsampled) and the exact eigensolve, whatever ``solver`` is. Right after ``compute`` with
        ``solver="exact"`` (no ``update`` in between) it returns that computation's eigenvalues
        without a second eigensolve or sync; otherwise, like ``compute``, it gathers the states and
        must be called on every process under DDP.

        Returns:
            (N,) float64 tensor of eigenvalues of :math:`P = D^{-1} G`, in :math:`[-1, 1]`.
        """
        if self._last_spectrum is not None:
            return self._last_spectrum  # from the last compute(), no update since: no second solve
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute, should_unsync=True
        ):
            (x,) = self._gathered()
            profile = _information_profile(x, {}, **{**self._options(), "solver": "exact"})
        return torch.sort(profile.eigvals).values


class DiffusionSpectralMutualInformation(_DiffusionMetricBase):
    r"""Accumulate embeddings and a reference; compute their diffusion spectral MI in bits.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. III: :math:`I_D(Z;B) = S_D(Z) - S_D(Z \mid B)`,
    estimated as the authors do, with :math:`S_D(Z)` taken at each group's size by averaging
    ``num_repeats`` random subsets :math:`Z^*_c`:

    .. math::

        I_D(Z;B) = \sum_c \frac{n_c}{N}\Big(\mathbb{E}\big[S_D(Z^*_c)\big] - S_D(Z \mid B=c)\Big).

    ``compute`` equals :func:`~lightning_info.functional.diffusion_spectral_mutual_information` on
    the concatenation of all updates (see :class:`DiffusionSpectralEntropy` for ``index`` and
    DDP). The reference is grouped the same way as there: class labels, bins of a scalar, or
    spectral clusters of vectors (clustering runs at every ``compute``: for inputs, cluster once
    with :func:`~lightning_info.functional.cluster_reference` and pass the cluster ids with
    ``discrete=True``, as the monitor callback does).

    Args:
        sigma: Gaussian kernel bandwidth, > 0 (default 10), or ``"median"`` / ``"knn"`` (see
            :class:`DiffusionSpectralEntropy`).
        t: diffusion time, >= 1. Default 1.
        discrete: whether a 1-D reference holds class labels (None: infer, see the functional).
        num_clusters: bins / spectral clusters for a non-discrete reference, >= 2. Default 10.
        num_repeats: random subsets per group, >= 1. Default 5.
        max_samples: cap on the number of samples (seeded subsample, after grouping). Default 2048.
        seed: seed of the local generator and of the clustering.
        solver: ``"exact"``, ``"lanczos"`` or ``"auto"``.
        num_lanczos_probes: Lanczos probes, >= 1.
        num_lanczos_steps: Lanczos steps, >= 1.
        dtype: eigensolve precision (None = float64, or float32).
        memory_limit_bytes: refusal threshold of the exact path's up-front memory guard, or None
            for the default 8 GiB (see :class:`DiffusionSpectralEntropy`).
        **kwargs: torchmetrics ``Metric`` options.

    Returns (``compute``):
        0-dim float64 tensor, bits; higher = the embedding geometry separates the groups better;
        about 0 (possibly slightly negative) for an unrelated reference.

    Raises:
        TypeError: on options of the wrong type or non-numeric inputs.
        ValueError: on invalid options, embeddings that are not (N, D) or hold NaN/inf, a reference
            of another length or rank (raised by ``update``), fewer than 2 samples in total, or
            ``index`` given to some updates only (raised by ``compute``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(4).repeat_interleave(25)
        >>> z = 100.0 * torch.eye(4, 8)[y] + 0.01 * torch.randn(100, 8, generator=g)
        >>> metric = DiffusionSpectralMutualInformation()
        >>> metric.update(z[:50], y[:50])
        >>> metric.update(z[50:], y[50:])
        >>> round(metric.compute().item(), 2)  # log2(4) - 0
        2.0
    """

    reference: list[Tensor]

    def __init__(
        self,
        *,
        sigma: float | str = 10.0,
        t: float = 1,
        discrete: bool | None = None,
        num_clusters: int = 10,
        num_repeats: int = 5,
        max_samples: int | None = 2048,
        seed: int = 0,
        solver: EigenSolver | str = "exact",
        num_lanczos_probes: int = 16,
        num_lanczos_steps: int = 32,
        dtype: torch.dtype | str | None = None,
        memory_limit_bytes: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Validate the options (documented in the class docstring)."""
        super().__init__(
            sigma=sigma,
            t=t,
            max_samples=max_samples,
            seed=seed,
            solver=solver,
            num_lanczos_probes=num_lanczos_probes,
            num_lanczos_steps=num_lanczos_steps,
            dtype=dtype,
            memory_limit_bytes=memory_limit_bytes,
            **kwargs,
        )
        self.discrete, self.num_clusters, self.num_repeats = _check_dsmi_options(
            discrete, num_clusters, num_repeats
        )
        self.add_state("reference", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, reference: Tensor, *, index: Tensor | None = None) -> None:
        """Append a batch of embeddings ``(B, D)`` and their reference ``(B,)`` or ``(B, D')``.

        Args:
            embeddings: (B, ...) finite features (flattened to ``(B, -1)``).
            reference: (B,) labels / scalars or (B, D') vectors, finite.
            index: optional (B,) integer sample positions (canonical order, see the module).

        Raises:
            ValueError: if ``reference`` is not 1-D/2-D, has another length, or is not finite.
        """
        ref = _as_tensor(reference, "reference")
        _check_ndim(ref, "reference", (1, 2), "1-D (B,) or 2-D (B, D')")
        _check_finite(ref, "reference")
        n = self._store(embeddings, index)
        if ref.shape[0] != n:
            self.embeddings.pop()
            if index is not None:
                self.index.pop()
            raise ValueError(
                "`embeddings` and `reference` must have the same number of samples; "
                f"got {n} and {ref.shape[0]}."
            )
        self.reference.append(ref.detach())

    def compute(self) -> Tensor:
        """DSMI in bits between all accumulated embeddings and references.

        Returns:
            0-dim float64 tensor.
        """
        x, ref = self._gathered(self.reference)
        labels = _reference_labels(
            ref, x.shape[0], discrete=self.discrete, num_clusters=self.num_clusters, seed=self.seed
        )
        return _dsmi_compute(x, labels, num_repeats=self.num_repeats, **self._options())


class _DiffusionProfile(_DiffusionMetricBase):
    """DSE and DSMI with several groupings of the same embeddings, from one affinity.

    The monitor's per-layer metric: one state for the embeddings and one (B, R) state of group
    ids (the R references: label groups, input clusters), so a DDP sync gathers each layer's
    activations once, and :func:`~lightning_info.functional.dse._information_profile` computes
    one affinity and one eigensolve for DSE and every DSMI (values equal to the separate
    :class:`DiffusionSpectralEntropy` / :class:`DiffusionSpectralMutualInformation` with
    ``discrete=True`` and the same options).

    Args:
        group_names: names of the R groupings, in the column order of ``update``'s ``groups``.
        num_repeats: DSMI random subsets per group, >= 1.
        self_clusters: if given, also the DSMI with ``self_clusters`` k-means clusters of the
            embeddings themselves (the label-free ``dsmi_z``; seeded with ``seed``), under the
            name ``"dsmi_z"``.
        **options: every option of :class:`DiffusionSpectralEntropy` (sigma, t, seed, solver,
            num_lanczos_probes, num_lanczos_steps, dtype, memory_limit_bytes; e.g.
            ``template.options()``) except ``max_samples``: the accumulated samples are the
            monitor's probe, whose size is the monitor's ``max_samples``, so they are never
            subsampled again.

    Raises:
        ValueError: for a ``max_samples`` other than None.
    """

    groups: list[Tensor]

    def __init__(
        self,
        group_names: tuple[str, ...] = (),
        *,
        num_repeats: int = 5,
        self_clusters: int | None = None,
        **options: Any,
    ) -> None:
        max_samples = options.pop("max_samples", None)
        if max_samples is not None:
            raise ValueError(
                "_DiffusionProfile does not subsample (the probe is the sample); got "
                f"max_samples={max_samples}."
            )
        super().__init__(max_samples=None, **options)
        self.group_names = tuple(group_names)
        self.num_repeats = _check_int(num_repeats, "num_repeats", minimum=1)
        self.self_clusters = _check_int(self_clusters, "self_clusters", minimum=2, allow_none=True)
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, groups: Tensor, *, index: Tensor | None = None) -> None:
        """Append embeddings ``(B, ...)``, their ``(B, R)`` integer group ids and positions."""
        n = self._store(embeddings, index)
        self.groups.append(groups.reshape(n, len(self.group_names)).to(torch.long))

    def compute(self) -> _Profile:
        """The profile of all accumulated samples (DSE, a DSMI per grouping, the spectrum).

        Returns:
            The :class:`~lightning_info.functional.dse._Profile`.
        """
        x, groups = self._gathered(self.groups)
        named = {name: groups[:, j] for j, name in enumerate(self.group_names)}
        if self.self_clusters is not None:  # one group (DSMI 0) when 2 samples cannot be split
            k = min(self.self_clusters, x.shape[0] - 1)
            named["dsmi_z"] = (
                cluster_reference(x, num_clusters=k, seed=self.seed, method="kmeans")
                if k >= 2
                else torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
            )
        options = self._options()
        return _information_profile(x, named, num_repeats=self.num_repeats, **options)
