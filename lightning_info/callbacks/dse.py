r"""Monitor diffusion spectral entropy / mutual information of layer representations in training.

Liao, Liu et al., *Assessing Neural Network Representations During Training Using Noise-Resilient
Diffusion Spectral Entropy*, IEEE CISS 2024 (arXiv 2312.04823). As in the paper's experiments, the
representation is read in eval mode on a fixed held-out probe set after every epoch: DSE(Z) rises
during training, DSMI(Z;Y) rises while the network learns generalisable features and stays flat
while it memorises, and DSMI(Z;X) uses the inputs clustered once. This module holds no math: it
captures activations and feeds the metrics of :mod:`lightning_info.metrics.dse`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from lightning_info.callbacks._capture import _ActivationCapture, _parse_layer
from lightning_info.functional.dse import _reuse_affinities, cluster_reference
from lightning_info.metrics.dse import DiffusionSpectralEntropy, DiffusionSpectralMutualInformation
from lightning_info.reporting import tensorboard_writers
from lightning_info.utilities.batch import default_input_fn, default_target_fn
from lightning_info.utilities.checks import _check_choice, _check_int
from lightning_info.utilities.compat import Callback
from lightning_info.utilities.rng import preserved_global_rng

__all__ = ["DiffusionSpectralEntropyMonitor"]

log = logging.getLogger(__name__)

#: The quantities the monitor can compute, and the key segment each is logged under.
QUANTITIES: tuple[str, ...] = ("dse", "dsmi_y", "dsmi_x")
#: Logged name of the default layer (the input of the last ``nn.Linear``).
PENULTIMATE = "penultimate"


@dataclass
class _ProbeChunk:
    """One batch of this process's share of the probe set (kept on the CPU between epochs)."""

    batch: Any
    positions: Tensor  # (B,) positions in the probe set, 0..n_probe-1 (canonical order)
    targets: Tensor | None
    clusters: Tensor | None


class DiffusionSpectralEntropyMonitor(Callback):
    r"""Log DSE, DSMI(Z;Y) and DSMI(Z;X) of chosen layers on a fixed probe set at epoch ends.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II-III and their experiments (Sec. IV): for the
    representation :math:`Z` of each layer on a fixed probe set with labels :math:`Y` and inputs
    :math:`X` (spectrally clustered once),

    .. math::

        S_D(Z) = -\sum_i p_i \log_2 p_i,\quad
        I_D(Z;B) = \sum_c \tfrac{n_c}{N}\big(\mathbb{E}[S_D(Z^*_c)] - S_D(Z \mid B=c)\big),\
        B \in \{Y, X\}.

    What happens when:

    * ``setup`` (fit only): layer names are resolved with ``get_submodule``; an unknown name raises
      a ``ValueError`` listing the available names. With no layer given, the input of the last
      ``nn.Linear`` (the penultimate features) is used and the choice is logged.
    * ``on_train_start``: the probe set is drawn once, seeded (identical on every process), at most
      ``max_samples`` samples of the validation dataset (``stage="validate"``; without validation
      data it falls back to the training dataset with a warning) or of the training dataset
      (``stage="train"``). For DSMI(Z;X) the flattened probe inputs are clustered once with
      :func:`~lightning_info.functional.cluster_reference`. After a resume both come back from the
      checkpoint (``state_dict``), so the curves continue.
    * every ``every_n_epochs``-th epoch end (epochs ``e`` with ``(e + 1) % every_n_epochs == 0``,
      the convention of ``check_val_every_n_epoch``): one ``torch.no_grad()`` eval-mode forward
      pass over the probe with forward hooks that are removed right after (the train/eval flags
      of all submodules are restored). It runs in ``on_validation_epoch_end`` of the epoch-end
      validation, or in ``on_train_epoch_end`` when no validation runs that epoch; never in the
      sanity check.

    Logged keys (``pl_module.log(..., on_epoch=True)`` on every process; the values are identical
    on all of them, so no reduction is applied; ``<layer>`` is the name given, or
    ``penultimate``):

    * ``{prefix}dse/<layer>``: DSE in bits (higher = richer geometry).
    * ``{prefix}dsmi_y/<layer>``: DSMI with the labels in bits (higher = more label information).
      Use ``EarlyStopping(monitor=..., mode="max")`` or :class:`OverfittingEarlyStopping`.
    * ``{prefix}dsmi_x/<layer>``: DSMI with the clustered inputs in bits.
    * With a ``TensorBoardLogger`` of either Lightning package (and ``log_histogram``): the
      eigenvalues of the diffusion operator as histogram ``{prefix}spectrum/<layer>`` per
      evaluation (other loggers: skipped quietly).

    On epochs without an evaluation the keys are removed from ``trainer.callback_metrics``, so a
    stale value is never counted twice: with ``every_n_epochs > 1`` use
    ``EarlyStopping(..., strict=False)`` (patience then counts evaluations), and
    ``ModelCheckpoint(every_n_epochs=every_n_epochs)``. The same ``strict=False`` is needed with
    ``Trainer(val_check_interval < 1)``: the mid-epoch validations carry no value (the pass runs
    once per epoch, at the end-of-epoch validation).

    Design note: all quantities of a layer come from one forward pass and are computed in one
    place (:meth:`_evaluate`), each by its own metric (three gathers of the same activations
    under DDP, cheap next to the eigensolves). Sharing the pairwise distances between DSE and the
    DSMI subsets (issue 7) would be a functional-layer change behind the same call site.

    Distributed: every process draws the same probe indices, runs its share (positions
    ``rank::world_size``), and the metrics' concatenation sync gathers all shares in canonical
    order, so every process computes and logs the same value as a single process would. All
    processes take part in the same collectives in the same order.

    Numerical trouble: if a layer's activations contain NaN/inf on any process, that layer's values
    are skipped for the epoch (warned once per layer); training continues.

    Args:
        layers: submodule name(s) (``pl_module.get_submodule`` paths such as ``"net.2"``; append
            ``":input"`` to read a module's input instead of its output), or None for the input of
            the last ``nn.Linear``.
        quantities: which of ``"dse"``, ``"dsmi_y"``, ``"dsmi_x"`` to compute. Default all three.
        metric: template :class:`DiffusionSpectralEntropy` carrying the numerical options (sigma,
            t, solver, dtype, seed, ...); cloned per layer. Default ``DiffusionSpectralEntropy()``.
        mi_metric: template :class:`DiffusionSpectralMutualInformation` for DSMI (``n_repeats``,
            ``n_clusters`` for the input clusters, ...). Default: one with the kernel options of
            ``metric``.
        stage: ``"validate"`` (default) or ``"train"``: which dataset the probe is drawn from.
        max_samples: probe size cap, >= 2, or None for the whole dataset. Default 1000. DSE grows
            with N, so keep it fixed when comparing runs.
        every_n_epochs: evaluate every this many epochs, >= 1.
        seed: seed of the probe draw (and of nothing else: the metrics carry their own).
        batch_size: probe batch size for the forward pass, >= 1.
        input_fn: ``batch -> inputs`` for the model's forward (default: ``batch[0]`` or a common
            dict key, see :func:`~lightning_info.utilities.batch.default_input_fn`).
        target_fn: ``batch -> labels`` for DSMI(Z;Y) (default ``batch[1]`` or a common dict key).
        log_histogram: log the spectrum histogram to TensorBoard.
        log_key_prefix: prefix of all keys. Default ``"info/"``.

    Raises:
        ValueError: on invalid options (named in the message), at fit start for an unknown layer
            (listing the available ones) or a model without ``nn.Linear`` when no layer is given,
            and when no dataset can serve as probe.
        TypeError: if a layer spec is not a string, or the probe dataset is iterable-style.

    Example:
        >>> monitor = DiffusionSpectralEntropyMonitor(["net.2"], quantities=("dse", "dsmi_y"))
        >>> monitor.keys_for("net.2")
        ['info/dse/net.2', 'info/dsmi_y/net.2']
    """

    def __init__(
        self,
        layers: str | Sequence[str] | None = None,
        *,
        quantities: Sequence[str] = QUANTITIES,
        metric: DiffusionSpectralEntropy | None = None,
        mi_metric: DiffusionSpectralMutualInformation | None = None,
        stage: Literal["validate", "train"] = "validate",
        max_samples: int | None = 1000,
        every_n_epochs: int = 1,
        seed: int = 0,
        batch_size: int = 256,
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor] | None = None,
        log_histogram: bool = True,
        log_key_prefix: str = "info/",
    ) -> None:
        super().__init__()
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None:
            layers = list(layers)
            for name in layers:
                if not isinstance(name, str):
                    raise TypeError(f"`layers` must hold strings; got {type(name).__name__}.")
            if not layers:
                raise ValueError("`layers` must name at least one layer, or be None; got [].")
        self.layers: list[str] | None = layers
        if isinstance(quantities, str):
            quantities = [quantities]
        self.quantities = tuple(_check_choice(q, "quantities", QUANTITIES) for q in quantities)
        if not self.quantities:
            raise ValueError(f"`quantities` must hold at least one of {QUANTITIES}; got ().")
        if metric is not None and not isinstance(metric, DiffusionSpectralEntropy):
            raise TypeError(
                f"`metric` must be a DiffusionSpectralEntropy; got {type(metric).__name__}."
            )
        if mi_metric is not None and not isinstance(mi_metric, DiffusionSpectralMutualInformation):
            raise TypeError(
                "`mi_metric` must be a DiffusionSpectralMutualInformation; got "
                f"{type(mi_metric).__name__}."
            )
        self.metric = metric if metric is not None else DiffusionSpectralEntropy()
        if mi_metric is None:
            m = self.metric
            mi_metric = DiffusionSpectralMutualInformation(
                sigma=m.sigma,
                t=m.t,
                seed=m.seed,
                solver=m.solver,
                num_probes=m.num_probes,
                num_steps=m.num_steps,
                dtype=m.work_dtype,
                max_samples=m.max_samples,
            )
        self.mi_metric = mi_metric
        self.stage = _check_choice(stage, "stage", ("validate", "train"))
        self.max_samples = _check_int(max_samples, "max_samples", minimum=2, allow_none=True)
        self.every_n_epochs = _check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.seed = _check_int(seed, "seed")
        self.batch_size = _check_int(batch_size, "batch_size", minimum=1)
        self.input_fn = input_fn if input_fn is not None else default_input_fn
        self.target_fn = target_fn if target_fn is not None else default_target_fn
        self.log_histogram = bool(log_histogram)
        if not isinstance(log_key_prefix, str):
            raise TypeError(f"`log_key_prefix` must be a string; got {log_key_prefix!r}.")
        self.log_key_prefix = log_key_prefix

        # resolved at setup / drawn at train start; the probe is restored from checkpoints
        self._layer_keys: dict[str, str] = {}  # logged layer name -> layer spec
        self._metrics: dict[str, dict[str, Any]] = {}
        self._probe_indices: Tensor | None = None
        self._probe_source: str | None = None
        self._probe_dataset_len: int | None = None
        self._input_clusters: Tensor | None = None
        self._chunks: list[_ProbeChunk] = []
        self._last_epoch_done: int = -1
        self._warned_nonfinite: set[str] = set()

    # ------------------------------------------------------------------ naming / state
    def keys_for(self, layer: str) -> list[str]:
        """The keys logged for one layer name, in ``quantities`` order."""
        return [f"{self.log_key_prefix}{q}/{layer}" for q in self.quantities]

    @property
    def state_key(self) -> str:
        """Unique per configuration (layers, quantities, stage, cadence, seed)."""
        return self._generate_state_key(
            layers=None if self.layers is None else tuple(self.layers),
            quantities=self.quantities,
            stage=self.stage,
            max_samples=self.max_samples,
            every_n_epochs=self.every_n_epochs,
            seed=self.seed,
            prefix=self.log_key_prefix,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        """Probe indices, their source, cached input clusters and the last evaluated epoch."""
        return {
            "probe_indices": self._probe_indices,
            "probe_source": self._probe_source,
            "probe_dataset_len": self._probe_dataset_len,
            "input_clusters": self._input_clusters,
            "last_epoch_done": self._last_epoch_done,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe so that a resumed run continues the same curves."""
        self._probe_indices = state_dict.get("probe_indices")
        self._probe_source = state_dict.get("probe_source")
        self._probe_dataset_len = state_dict.get("probe_dataset_len")
        self._input_clusters = state_dict.get("input_clusters")
        self._last_epoch_done = int(state_dict.get("last_epoch_done", -1))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_chunks"] = []  # cached probe batches are rebuilt at train start
        return state

    # ------------------------------------------------------------------ setup
    def _resolve_layers(self, pl_module: pl.LightningModule) -> dict[str, str]:
        if self.layers is None:
            last = None
            for name, module in pl_module.named_modules():
                if isinstance(module, nn.Linear):
                    last = (name, module)
            if last is None:
                raise ValueError(
                    "`layers=None` uses the input of the last nn.Linear, but the model has no "
                    "nn.Linear; name the layer(s) to monitor, e.g. "
                    f"`layers=[{_available(pl_module)[-1]!r}]`."
                )
            rank_zero_info(
                f"{type(self).__name__}: monitoring the penultimate features (input of "
                f"`{last[0]}`: {last[1]}) as `{PENULTIMATE}`."
            )
            return {PENULTIMATE: f"{last[0]}:input"}
        keys = {}
        for spec in self.layers:
            module_name = _parse_layer(spec).module_name
            try:
                pl_module.get_submodule(module_name)
            except AttributeError:
                names = ", ".join(f"`{n}`" for n in _available(pl_module))
                raise ValueError(
                    f"`layers`: {module_name!r} is not a submodule of {type(pl_module).__name__}. "
                    f"Available: {names}."
                ) from None
            keys[spec] = spec
        return keys

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve layer names (fails fast on typos) and build one metric per layer and quantity."""
        if stage != "fit":
            return
        self._layer_keys = self._resolve_layers(pl_module)
        self._metrics = {}
        for key in self._layer_keys:
            per_layer: dict[str, Any] = {}
            for q in self.quantities:
                template = self.metric if q == "dse" else self.mi_metric
                m = template.clone()
                if q != "dse":
                    m.discrete = True  # labels and cluster ids are classes
                m.reset()
                per_layer[q] = m.to(pl_module.device)
            self._metrics[key] = per_layer

    # ------------------------------------------------------------------ probe
    def _probe_loader(self, trainer: pl.Trainer) -> tuple[str, DataLoader]:
        def first(loaders: Any) -> DataLoader | None:
            if isinstance(loaders, DataLoader):
                return loaders
            if isinstance(loaders, Mapping):
                loaders = list(loaders.values())
            if isinstance(loaders, Sequence) and loaders and isinstance(loaders[0], DataLoader):
                return loaders[0]
            return None

        source = self._probe_source or self.stage
        if source == "validate":
            loader = first(trainer.val_dataloaders)
            if loader is not None and len(_dataset(loader)) > 0:
                return "validate", loader
            rank_zero_warn(
                f"{type(self).__name__}(stage='validate'): no validation data; drawing the probe "
                "from the training data instead. DSMI(Z;Y) then measures fit, not "
                "generalisation; pass validation data for an overfitting signal.",
                category=UserWarning,
            )
        loader = first(trainer.train_dataloader)
        if loader is None:
            raise ValueError(
                f"{type(self).__name__}: no map-style training or validation DataLoader to draw "
                "the probe set from."
            )
        return "train", loader

    def _draw_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        source, loader = self._probe_loader(trainer)
        dataset = _dataset(loader)
        n_data = len(dataset)
        if self._probe_indices is not None and (
            self._probe_source != source or self._probe_dataset_len != n_data
        ):
            rank_zero_warn(
                f"{type(self).__name__}: the restored probe set does not match the data "
                f"(source {self._probe_source!r} vs {source!r}, size {self._probe_dataset_len} vs "
                f"{n_data}); drawing a new one, so the curves restart.",
                category=UserWarning,
            )
            self._probe_indices = None
            self._input_clusters = None
        if self._probe_indices is None:
            n = n_data if self.max_samples is None else min(self.max_samples, n_data)
            if n < 2:
                raise ValueError(
                    f"{type(self).__name__}: the probe set needs at least 2 samples; the "
                    f"{source} dataset has {n_data}."
                )
            generator = torch.Generator().manual_seed(self.seed)  # same draw on every process
            self._probe_indices = torch.randperm(n_data, generator=generator)[:n].sort().values
        self._probe_source, self._probe_dataset_len = source, n_data
        indices = self._probe_indices
        n = indices.numel()
        collate = loader.collate_fn or torch.utils.data.default_collate

        if "dsmi_x" in self.quantities and self._input_clusters is None:
            # every process clusters the whole probe (deterministic), so no collective is needed
            inputs = [
                self.input_fn(collate([dataset[int(i)] for i in chunk])).flatten(1).cpu()
                for chunk in indices.split(self.batch_size)
            ]
            n_clusters = min(self.mi_metric.n_clusters, n)
            self._input_clusters = cluster_reference(
                torch.cat(inputs), n_clusters=n_clusters, seed=self.mi_metric.seed
            )

        world, rank = trainer.world_size, trainer.global_rank
        # every process needs >= 1 sample; duplicates are dropped by the metrics' index
        positions = torch.arange(n)[rank::world] if n >= world else torch.arange(n)
        self._chunks = []
        for pos in positions.split(self.batch_size):
            batch = collate([dataset[int(indices[p])] for p in pos])
            targets = None
            if "dsmi_y" in self.quantities:
                targets = (
                    torch.as_tensor(self.target_fn(batch)).detach().cpu().reshape(len(pos), -1)
                )
                targets = targets[:, 0] if targets.shape[1] == 1 else targets
            clusters = self._input_clusters[pos] if self._input_clusters is not None else None
            self._chunks.append(_ProbeChunk(batch, pos, targets, clusters))
        rank_zero_info(
            f"{type(self).__name__}: probe of {n} samples from the {source} data "
            f"(seed {self.seed})."
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw (or restore) the probe set and cluster its inputs once."""
        with preserved_global_rng():  # reading samples must not shift the run's random stream
            self._draw_probe(trainer, pl_module)

    # ------------------------------------------------------------------ when to evaluate
    def _is_eval_epoch(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and epoch != self._last_epoch_done

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget last evaluation's values so that a stale value is never monitored twice."""
        metrics = trainer.callback_metrics
        for layer in self._layer_keys:
            for key in self.keys_for(layer):
                metrics.pop(key, None)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate at the epoch-end validation (not in the sanity check, not mid-epoch)."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if not _at_train_epoch_end(trainer):
            return
        if self._is_eval_epoch(trainer):
            self._evaluate(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate here when no validation ran at this epoch's end."""
        if self._is_eval_epoch(trainer):
            self._evaluate(trainer, pl_module)

    # ------------------------------------------------------------------ the probe pass
    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with preserved_global_rng():  # the probe pass must not shift the run's random stream
            self._evaluate_now(trainer, pl_module)

    def _evaluate_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_epoch_done = trainer.current_epoch
        if not self._chunks:  # e.g. a callback added after train start
            self._draw_probe(trainer, pl_module)
        targets = {
            key: (pl_module.get_submodule(_parse_layer(spec).module_name), _parse_layer(spec).side)
            for key, spec in self._layer_keys.items()
        }
        device = pl_module.device
        bad = dict.fromkeys(self._layer_keys, False)
        for per_layer in self._metrics.values():
            for m in per_layer.values():
                m.reset()
                m.to(device)
        with torch.no_grad(), _ActivationCapture(pl_module, targets) as capture:
            for chunk in self._chunks:
                batch = move_data_to_device(chunk.batch, device)
                pl_module(self.input_fn(batch))
                activations = capture.pop()
                index = chunk.positions.to(device)
                for key, z in activations.items():
                    if bad[key] or not bool(torch.isfinite(z).all()):
                        bad[key] = True
                        continue
                    for q, m in self._metrics[key].items():
                        if q == "dse":
                            m.update(z, index=index)
                        elif q == "dsmi_y":
                            m.update(z, chunk.targets.to(device), index=index)
                        else:
                            m.update(z, chunk.clusters.to(device), index=index)

        for key in self._layer_keys:
            # the same collective on every process, in the same order, whatever the local data
            if trainer.strategy.reduce_boolean_decision(bad[key], all=False):
                if key not in self._warned_nonfinite:
                    self._warned_nonfinite.add(key)
                    rank_zero_warn(
                        f"{type(self).__name__}: layer `{key}` produced NaN/inf activations at "
                        f"epoch {trainer.current_epoch}; its DSE/DSMI are skipped while this "
                        "lasts (warned once). Training continues.",
                        category=RuntimeWarning,
                    )
                for m in self._metrics[key].values():
                    m.reset()
                continue
            values = {}
            with _reuse_affinities():  # DSE, DSMI(Z;Y), DSMI(Z;X): one pairwise-distance pass
                for q, m in self._metrics[key].items():
                    values[q] = m.compute()
            for q, m in self._metrics[key].items():
                value = values[q]
                writers = tensorboard_writers(trainer) if q == "dse" and self.log_histogram else []
                if writers:
                    spectrum = m.spectrum()
                    for writer in writers if trainer.is_global_zero else []:
                        writer.add_histogram(
                            f"{self.log_key_prefix}spectrum/{key}",
                            spectrum.float().cpu(),
                            global_step=trainer.current_epoch,
                        )
                m.reset()
                with warnings.catch_warnings():
                    # identical on every process by construction: no reduction needed
                    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
                    pl_module.log(
                        f"{self.log_key_prefix}{q}/{key}",
                        value.to(device=device, dtype=torch.float32),
                        on_step=False,
                        on_epoch=True,
                        sync_dist=False,
                        batch_size=1,
                    )


def _available(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_modules() if name]


def _dataset(loader: DataLoader) -> Any:
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise TypeError(
            "DiffusionSpectralEntropyMonitor draws its probe by index and needs a map-style "
            f"dataset (with __len__ and __getitem__); got {type(dataset).__name__}."
        )
    return dataset


def _at_train_epoch_end(trainer: pl.Trainer) -> bool:
    """Whether the current validation run is the one at the end of a training epoch."""
    try:
        epoch_loop = trainer.fit_loop.epoch_loop
        progress = epoch_loop.batch_progress
        return bool(
            progress.is_last_batch or progress.current.ready >= trainer.num_training_batches
        )
    except AttributeError:  # pragma: no cover - other Lightning versions
        return True
