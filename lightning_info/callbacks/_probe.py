"""The monitor's probe set: a fixed, seeded sample of a dataset and the groups DSMI needs.

Drawn once at train start (identical on every process), it holds the dataset positions of the
probe samples, this process's share of them as ready-collated batches, and, per probe sample,
the group ids of each DSMI reference:

* ``"y"``, the targets, grouped by what they are: class labels (integers, whole-number floats
  with at most 100 values, or one-hot rows) are classes; scalar regression targets are cut into
  ``num_clusters`` equal-width bins; vector targets are spectrally clustered into ``num_clusters``
  groups, like the inputs. A batch without targets (self-supervised training, Lightning's
  ``BoringModel``) leaves DSMI(Z;Y) out, with a warning, unless ``target_fn`` was given.
* ``"x"``, the flattened inputs, spectrally clustered once (DSMI(Z;X), as in the paper). Integer
  inputs (token ids) have no meaningful geometry, so DSMI(Z;X) is left out for them, with a
  warning.

The group ids are computed once per fit and restored from checkpoints, so curves continue after
resume. They are keyed on content, not size: a SHA-256 fingerprint of the probe's collated
batches is stored with them, and group ids whose fingerprint differs from the probe read now (a
monitor reused on another fold of the same size, a checkpoint resumed on other data) are computed
again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_info.callbacks._loaders import map_dataset
from lightning_info.functional.dse import _reference_labels, cluster_reference
from lightning_info.utilities.sampling import seeded_subset

__all__: list[str] = []

#: Reference name of each DSMI quantity of the monitor.
REFERENCE_OF = {"dsmi_y": "y", "dsmi_x": "x"}


@dataclass
class _ProbeChunk:
    """One batch of this process's share of the probe set (kept on the CPU between epochs)."""

    batch: Any
    positions: Tensor  # (B,) positions in the probe set, 0..n-1 (canonical order)
    groups: Tensor  # (B, R) group ids of the references, in ``_ProbeSet.references`` order


def target_groups(targets: Tensor, num_clusters: int, seed: int) -> tuple[Tensor, str]:
    """Group ids of probe targets for DSMI(Z;Y), and a description of how they were formed.

    Returns:
        ``(groups, description)``: (N,) long group ids (classes, bins of a scalar, or spectral
        clusters of vector targets) and a phrase for the log.

    Raises:
        ValueError: for non-finite targets.
    """
    y = targets.detach().cpu().reshape(targets.shape[0], -1)
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise ValueError("the probe targets contain NaN/inf; check `target_fn`.")
    if y.shape[1] > 1 and _is_one_hot(y):
        y = y.argmax(1, keepdim=True)
    if y.shape[1] == 1:
        y = y[:, 0]
        groups = _reference_labels(
            y, y.shape[0], discrete=None, num_clusters=num_clusters, seed=seed
        )
        if not y.is_floating_point() or bool((y == y.round()).all()):
            n = int(groups.unique().numel())
            if n <= 100:
                return groups, f"class labels ({n} classes)"
        return groups, f"scalar targets cut into {num_clusters} equal-width bins"
    k = min(num_clusters, y.shape[0] - 1)
    groups = cluster_reference(y.double(), num_clusters=k, seed=seed)
    return (
        groups,
        f"{y.shape[1]}-dim targets in {k} spectral clusters (as the inputs for DSMI(Z;X))",
    )


def fingerprint(batches: list[Any]) -> str:
    """SHA-256 of the content of collated batches (tensors by dtype, shape and bytes).

    Returns:
        The hex digest; equal for equal content, whatever the batch objects.
    """
    digest = hashlib.sha256()
    for batch in batches:
        _hash_into(digest, batch)
    return digest.hexdigest()


def _hash_into(digest: Any, obj: Any) -> None:
    """Feed one (nested) batch element into ``digest``."""
    if isinstance(obj, Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=repr):
            digest.update(f"K{key!r}".encode())
            _hash_into(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"S{len(obj)}".encode())
        for item in obj:
            _hash_into(digest, item)
    else:
        digest.update(f"O{obj!r}".encode())


def _is_one_hot(y: Tensor) -> bool:
    return bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all())


class _ProbeSet:
    """Probe indices, per-process chunks and DSMI group ids (see the module docstring).

    Args:
        owner: name used in messages (the callback's class name).
        max_samples: probe size cap, or None for the whole dataset.
        seed: seed of the probe draw and of the clusterings.
        batch_size: probe batch size.
        input_fn: ``batch -> inputs``.
        target_fn: ``batch -> targets``.
        target_fn_given: whether the user passed ``target_fn`` (then a failure is an error).
        references: the wanted references, a subset of ``("y", "x")``.
        num_clusters: bins / clusters of vector or continuous references.
    """

    def __init__(
        self,
        *,
        owner: str,
        max_samples: int | None,
        seed: int,
        batch_size: int,
        input_fn: Callable[[Any], Tensor],
        target_fn: Callable[[Any], Tensor],
        target_fn_given: bool,
        references: tuple[str, ...],
        num_clusters: int,
    ) -> None:
        self.owner, self.max_samples, self.seed = owner, max_samples, seed
        self.batch_size = batch_size
        self.input_fn, self.target_fn, self.target_fn_given = input_fn, target_fn, target_fn_given
        self.wanted = references
        self.num_clusters = num_clusters
        self.indices: Tensor | None = None
        self.source: str | None = None
        self.dataset_len: int | None = None
        self.groups: dict[str, Tensor] = {}  # reference -> (n,) group ids
        self.fingerprint: str | None = None  # of the probe content the group ids were made from
        self.chunks: list[_ProbeChunk] = []

    def reset(self) -> None:
        """Forget the probe and its group ids (a new fit; a resume restores them afterwards)."""
        self.indices, self.source, self.dataset_len = None, None, None
        self.groups, self.fingerprint, self.chunks = {}, None, []

    @property
    def references(self) -> tuple[str, ...]:
        """The references with group ids, in column order of the chunks' ``groups``."""
        return tuple(r for r in self.wanted if r in self.groups)

    def num_groups(self, reference: str) -> int | None:
        """Number of distinct groups of a reference (e.g. classes of ``"y"``), or None.

        Returns:
            The count, or None when the reference has no group ids (not drawn, or absent).
        """
        groups = self.groups.get(reference)
        return None if groups is None else int(groups.unique().numel())

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Indices, source and group ids: tensors, strings and ints only (``weights_only``).

        Returns:
            ``{"probe_indices", "probe_source", "probe_dataset_len", "probe_groups",
            "probe_fingerprint"}``.
        """
        return {
            "probe_indices": self.indices,
            "probe_source": self.source,
            "probe_dataset_len": self.dataset_len,
            "probe_groups": dict(self.groups),
            "probe_fingerprint": self.fingerprint,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (chunks are rebuilt by :meth:`draw`)."""
        self.indices = state.get("probe_indices")
        self.source = state.get("probe_source")
        self.dataset_len = state.get("probe_dataset_len")
        self.groups = dict(state.get("probe_groups") or {})
        self.fingerprint = state.get("probe_fingerprint")
        self.chunks = []

    # -------------------------------------------------------------------------------- drawing
    def draw(self, source: str, loader: DataLoader, *, rank: int, world: int) -> None:
        """Draw (or restore) the probe from ``loader``'s dataset and build this process's chunks.

        Raises:
            ValueError: if the dataset has fewer than 2 samples, or given extractors fail.
            TypeError: for an iterable-style dataset.
        """  # noqa: DOC502 (raised by the loader lookup and the draw helpers; the monitor's contract)
        dataset = map_dataset(loader, self.owner)
        n_data = len(dataset)
        if self.indices is not None and (self.source != source or self.dataset_len != n_data):
            rank_zero_warn(
                f"{self.owner}: the restored probe set does not match the data (source "
                f"{self.source!r} vs {source!r}, size {self.dataset_len} vs {n_data}); drawing a "
                "new one, so the curves restart.",
                category=UserWarning,
            )
            self.indices, self.groups = None, {}
        if self.indices is None:
            self.indices = self._draw_indices(n_data, source)
        self.source, self.dataset_len = source, n_data
        collate = loader.collate_fn or torch.utils.data.default_collate

        def read(positions: Tensor) -> Any:
            return collate([dataset[int(self.indices[p])] for p in positions])

        if self.wanted:  # every process reads (and groups) the whole probe: no collective
            everything = torch.arange(self.indices.numel()).split(self.batch_size)
            self._group_once([read(pos) for pos in everything])
        self.chunks = self._chunks(read, rank, world)
        rank_zero_info(
            f"{self.owner}: probe of {self.indices.numel()} samples from the {source} data "
            f"(seed {self.seed})."
        )

    def _group_once(self, batches: list[Any]) -> None:
        """Group the references unless group ids of exactly this content are cached."""
        content = fingerprint(batches)
        if self.groups and self.fingerprint == content:
            return
        if self.groups and self.fingerprint is not None:
            rank_zero_warn(
                f"{self.owner}: the probe samples differ from those its cached reference groups "
                "were made from (same positions, other content: a checkpoint resumed on other "
                "data); grouping them again, so DSMI curves restart.",
                category=UserWarning,
            )
        self.groups, self.fingerprint = self._groups(batches), content

    def _draw_indices(self, n_data: int, source: str) -> Tensor:
        n = n_data if self.max_samples is None else min(self.max_samples, n_data)
        if n < 2:
            raise ValueError(
                f"{self.owner}: the probe set needs at least 2 samples; the {source} dataset has "
                f"{n_data}."
            )
        return seeded_subset(n_data, n, self.seed)  # the same draw on every process

    def _groups(self, batches: list[Any]) -> dict[str, Tensor]:
        groups = {}
        if "y" in self.wanted:
            targets = self._targets(batches)
            if targets is not None:
                groups["y"], what = target_groups(targets, self.num_clusters, self.seed)
                rank_zero_info(f"{self.owner}: DSMI(Z;Y) groups the probe targets as {what}.")
        if "x" in self.wanted:
            inputs = torch.cat([self.input_fn(b).detach().cpu().flatten(1) for b in batches])
            if not inputs.is_floating_point():
                rank_zero_warn(
                    f"{self.owner}: the inputs are integers ({inputs.dtype}, e.g. token ids), whose "
                    "values have no geometry to cluster, so DSMI(Z;X) is not logged. Pass "
                    "`input_fn` returning float features, or leave 'dsmi_x' out of `quantities`.",
                    category=UserWarning,
                )
            else:
                k = min(self.num_clusters, inputs.shape[0] - 1)
                groups["x"] = cluster_reference(inputs.double(), num_clusters=k, seed=self.seed)
        return groups

    def _targets(self, batches: list[Any]) -> Tensor | None:
        try:
            parts = [torch.as_tensor(self.target_fn(b)).detach().cpu() for b in batches]
        except (TypeError, KeyError, IndexError) as err:
            if self.target_fn_given:
                raise ValueError(
                    f"{self.owner}: `target_fn` failed on a probe batch: {err}"
                ) from err
            rank_zero_warn(
                f"{self.owner}: the batches carry no targets ({err}), so DSMI(Z;Y) is not logged; "
                "DSE and DSMI(Z;X) are label-free. Pass `target_fn=` to log DSMI(Z;Y).",
                category=UserWarning,
            )
            return None
        return torch.cat([p.reshape(p.shape[0], -1) if p.ndim > 1 else p for p in parts])

    def _chunks(self, read: Callable[[Tensor], Any], rank: int, world: int) -> list[_ProbeChunk]:
        n = int(self.indices.numel())
        columns = [self.groups[r] for r in self.references]
        table = torch.stack(columns, 1) if columns else torch.zeros(n, 0, dtype=torch.long)
        # every process needs >= 1 sample; duplicates are dropped by the metrics' index
        mine = torch.arange(n)[rank::world] if n >= world else torch.arange(n)
        return [_ProbeChunk(read(pos), pos, table[pos]) for pos in mine.split(self.batch_size)]
