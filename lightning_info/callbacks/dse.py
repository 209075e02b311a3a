r"""Monitor diffusion spectral entropy / mutual information of layer representations in training.

Liao, Liu et al., *Assessing Neural Network Representations During Training Using Noise-Resilient
Diffusion Spectral Entropy*, IEEE CISS 2024 (arXiv 2312.04823). As in the paper's experiments, the
representation is read in eval mode on a fixed held-out probe set after every epoch. This module
holds no math: it captures activations and feeds the metrics of :mod:`lightning_info.metrics.dse`;
the probe set and its reference groups live in :mod:`lightning_info.callbacks._probe`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_info.callbacks._capture import _ActivationCapture, _parse_layer
from lightning_info.callbacks._loaders import first_loader, map_dataset
from lightning_info.callbacks._probe import REFERENCE_OF, _ProbeSet
from lightning_info.functional.dse import _check_profile_memory, _Profile
from lightning_info.metrics.dse import (
    DiffusionSpectralEntropy,
    DiffusionSpectralMutualInformation,
    _DiffusionProfile,
)
from lightning_info.reporting import tensorboard_writers
from lightning_info.utilities.batch import default_input_fn, default_target_fn
from lightning_info.utilities.checks import _check_choice, _check_int
from lightning_info.utilities.compat import Callback, callback_state_key
from lightning_info.utilities.rng import preserved_global_rng

__all__ = ["DiffusionSpectralEntropyMonitor"]

#: The quantities the monitor can compute, and the key segment each is logged under.
QUANTITIES: tuple[str, ...] = ("dse", "dsmi_y", "dsmi_x")
#: Every quantity the monitor can log: the defaults plus the label-free ``"dsmi_z"``.
ALL_QUANTITIES: tuple[str, ...] = (*QUANTITIES, "dsmi_z")
#: Logged name of the default layer (the input of the last ``nn.Linear``).
PENULTIMATE = "penultimate"
#: The monitor's default kernel width (a data-derived rule; the functional default stays 10).
DEFAULT_SIGMA = "median"
#: The monitor's default probe size (``max_samples``), chosen by ``benchmarks/overfitting.py``.
DEFAULT_MAX_SAMPLES = 500
#: The monitor's eigensolver precision: float32 differs from float64 by < 1e-6 bits on the
#: overfitting benchmark's features (N = 500) and is 13-20 % cheaper per evaluation.
DEFAULT_DTYPE = torch.float32
#: A fixed ``sigma`` outside ``[_SCALE_LOW, _SCALE_HIGH]`` times the median feature distance
#: makes the kernel nearly constant (DSE near 0) or nearly diagonal (DSE near log2 N): warned.
_SCALE_LOW, _SCALE_HIGH = 0.2, 5.0


class DiffusionSpectralEntropyMonitor(Callback):
    r"""Log DSE, DSMI(Z;Y) and DSMI(Z;X) of chosen layers on a fixed probe set at epoch ends.

    Liao, Liu et al. 2023 (arXiv 2312.04823), Sec. II-III and their experiments (Sec. IV): for the
    representation :math:`Z` of each layer on a fixed probe set with targets :math:`Y` and inputs
    :math:`X` (spectrally clustered once),

    .. math::

        S_D(Z) = -\sum_i p_i \log_2 p_i,\quad
        I_D(Z;B) = \sum_c \tfrac{n_c}{N}\big(\mathbb{E}[S_D(Z^*_c)] - S_D(Z \mid B=c)\big),\
        B \in \{Y, X\}.

    **Kernel width.** The default ``metric`` uses ``sigma="median"`` (the median pairwise
    distance of the probe's features), not the paper's fixed ``sigma=10``: with a fixed width the
    curves follow the growing feature norm instead of the geometry (``benchmarks/RESULTS.md``,
    overfitting section). Pass ``metric=DiffusionSpectralEntropy(sigma=10.0)`` for the paper's
    values; a fixed width far from the feature scale is warned about once per layer.

    What happens when:

    * ``setup`` (fit only): layer names are resolved with ``get_submodule``; an unknown name raises
      a ``ValueError`` listing the available names. With no layer given, the input of the last
      ``nn.Linear`` (the penultimate features) is used and the choice is logged.
    * ``on_train_start``: the probe set is drawn once, seeded (identical on every process), at most
      ``max_samples`` samples of the validation dataset (``stage="validate"``; without validation
      data it falls back to the training dataset with a warning) or of the training dataset
      (``stage="train"``). Its references are grouped once: targets by what they are (classes;
      scalar regression targets in bins; vector targets in spectral clusters), flattened inputs in
      spectral clusters. Batches without targets drop DSMI(Z;Y) and integer inputs (token ids)
      drop DSMI(Z;X), each with a warning. After a resume all of it comes back from the checkpoint.
    * every ``every_n_epochs``-th epoch end (epochs ``e`` with ``(e + 1) % every_n_epochs == 0``,
      the convention of ``check_val_every_n_epoch``): one ``torch.no_grad()`` eval-mode forward
      pass over the probe with forward hooks that are removed right after (the train/eval flags
      of all submodules are restored, the global random generators untouched). It runs in
      ``on_validation_epoch_end`` of the epoch-end validation, or in ``on_train_epoch_end`` when
      no validation runs that epoch; never in the sanity check. Each layer's quantities come
      from one affinity and one eigensolve.

    Logged keys (``pl_module.log(..., on_epoch=True)`` on every process; the values are identical
    on all of them, so no reduction is applied; ``<layer>`` is the name given, or
    ``penultimate``):

    * ``{prefix}dse/<layer>``: DSE in bits (higher = richer geometry).
    * ``{prefix}dsmi_y/<layer>``: DSMI with the targets in bits (higher = more label information).
      Use ``EarlyStopping(monitor=..., mode="max")`` or :class:`OverfittingEarlyStopping`.
    * ``{prefix}dsmi_x/<layer>``: DSMI with the clustered inputs in bits.
    * ``{prefix}dsmi_z/<layer>`` (only when asked for in ``quantities``): DSMI with k-means
      clusters of the layer's own probe features, in bits. It needs no labels at all: the signal
      of :class:`OverfittingEarlyStopping`'s label-free mode.
    * With a ``TensorBoardLogger`` of either Lightning package (and ``log_histogram``): the
      eigenvalues of the diffusion operator as histogram ``{prefix}spectrum/<layer>`` per
      evaluation (other loggers: skipped quietly).

    On epochs without an evaluation the keys are removed from ``trainer.callback_metrics``, so a
    stale value is never counted twice: with ``every_n_epochs > 1`` use
    ``EarlyStopping(..., strict=False)`` (patience then counts evaluations), and
    ``ModelCheckpoint(every_n_epochs=every_n_epochs)``. The same ``strict=False`` is needed with
    ``Trainer(val_check_interval < 1)``. The keys contain ``/``: in a ``ModelCheckpoint``
    ``filename`` use ``auto_insert_metric_name=False``, e.g.
    ``filename="{epoch}-dsmi={info/dsmi_y/penultimate:.3f}"`` (else the slashes become folders).

    Distributed: every process draws the same probe indices, runs its share (positions
    ``rank::world_size``), and the metric's concatenation sync gathers all shares in canonical
    order, so every process computes and logs the same value as a single process would. All
    processes take part in the same collectives in the same order.

    Numerical trouble: if a layer's activations contain NaN/inf on any process, that layer's values
    are skipped for the epoch (warned once per layer); training continues.

    Args:
        layers: submodule name(s) (``pl_module.get_submodule`` paths such as ``"net.2"``; append
            ``":input"`` to read a module's input instead of its output), or None for the input of
            the last ``nn.Linear``.
        quantities: which of ``"dse"``, ``"dsmi_y"``, ``"dsmi_x"``, ``"dsmi_z"`` to compute.
            Default the first three.
        metric: template :class:`DiffusionSpectralEntropy` carrying the numerical options (sigma,
            t, solver, dtype, seed, ``memory_limit_bytes``, ...) of every quantity. Default
            ``DiffusionSpectralEntropy(sigma="median", dtype=torch.float32, max_samples=None)``
            (float32 eigensolves: < 1e-6 bits from float64 on the benchmark's features, and
            cheaper). Its ``max_samples`` is not used (the probe is the sample); one below the
            monitor's ``max_samples`` is an error. ``memory_limit_bytes`` is checked for the probe
            at train start.
        mi_metric: template :class:`DiffusionSpectralMutualInformation` for the DSMI options
            ``num_repeats`` and ``num_clusters`` (bins / clusters of continuous or vector
            references); its kernel options must equal ``metric``'s. Default: the defaults.
        stage: ``"validate"`` (default) or ``"train"``: which dataset the probe is drawn from.
        max_samples: probe size cap, >= 2, or None for the whole dataset: the one source of the
            number of samples of every value (never subsampled again). Default 500: in the
            overfitting benchmark the 500-sample signals pass the same criteria and drive the stop
            to the same regret as 1,000 samples, at about a quarter of the cost (the eigensolve is
            cubic in N). DSE grows with N, so keep it fixed when comparing runs.
        every_n_epochs: evaluate every this many epochs, >= 1.
        seed: seed of the probe draw and of the reference clusterings.
        batch_size: probe batch size for the forward pass, >= 1.
        input_fn: ``batch -> inputs`` for the model's forward (default: ``batch[0]`` or a common
            dict key, see :func:`~lightning_info.utilities.batch.default_input_fn`).
        target_fn: ``batch -> targets`` for DSMI(Z;Y) (default ``batch[1]`` or a common dict key;
            without targets DSMI(Z;Y) is left out with a warning, while a given ``target_fn``
            that fails is an error).
        log_histogram: log the spectrum histogram to TensorBoard.
        log_key_prefix: prefix of all keys. Default ``"info/"``.

    Reuse: every fit starts afresh (``setup``), so one monitor serves a cross-validation loop;
    a resumed fit gets its probe back from the checkpoint, and cached reference groups are reused
    only for a probe of the same content (a SHA-256 fingerprint), else grouped again.

    Raises:
        ValueError: on invalid options (named in the message), a template ``max_samples`` below
            the monitor's, at fit start for an unknown layer (listing the available ones), a model
            without ``nn.Linear`` when no layer is given, no dataset to probe, or a given
            ``target_fn`` that fails.
        MemoryBudgetError: at train start, when the exact eigensolve of the probe would exceed
            the template's ``memory_limit_bytes`` (use ``solver="lanczos"`` or a smaller probe).
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
        max_samples: int | None = DEFAULT_MAX_SAMPLES,
        every_n_epochs: int = 1,
        seed: int = 0,
        batch_size: int = 256,
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor] | None = None,
        log_histogram: bool = True,
        log_key_prefix: str = "info/",
    ) -> None:
        """Validate the options (documented in the class docstring); nothing is read yet."""
        super().__init__()
        self.layers = _check_layers(layers)
        self.quantities = _check_quantities(quantities)
        self.stage = _check_choice(stage, "stage", ("validate", "train"))
        self.max_samples = _check_int(max_samples, "max_samples", minimum=2, allow_none=True)
        self.metric, self.mi_metric = _check_templates(metric, mi_metric, self.max_samples)
        self.every_n_epochs = _check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.seed = _check_int(seed, "seed")
        self.batch_size = _check_int(batch_size, "batch_size", minimum=1)
        self.input_fn = input_fn if input_fn is not None else default_input_fn
        self.target_fn = target_fn if target_fn is not None else default_target_fn
        self.log_histogram = bool(log_histogram)
        self.log_key_prefix = _check_prefix(log_key_prefix)
        self._probe = _ProbeSet(
            owner=type(self).__name__,
            max_samples=self.max_samples,
            seed=self.seed,
            batch_size=self.batch_size,
            input_fn=self.input_fn,
            target_fn=self.target_fn,
            target_fn_given=target_fn is not None,
            references=tuple(REFERENCE_OF[q] for q in self.quantities if q in REFERENCE_OF),
            num_clusters=self.mi_metric.num_clusters,
        )
        # resolved at setup / train start; the probe is restored from checkpoints
        self._layer_keys: dict[str, str] = {}  # logged layer name -> layer spec
        self._metrics: dict[str, _DiffusionProfile] = {}
        self._last_epoch_done: int = -1
        self._batches_done: int = 0  # training batches finished in the current epoch
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ naming / state
    @property
    def active_quantities(self) -> tuple[str, ...]:
        """The quantities logged: ``quantities`` minus a DSMI whose reference the data lack."""
        if self._probe.indices is None:
            return self.quantities
        refs = self._probe.references
        return tuple(q for q in self.quantities if q not in REFERENCE_OF or REFERENCE_OF[q] in refs)

    def keys_for(self, layer: str) -> list[str]:
        """The keys logged for one layer name, in ``quantities`` order.

        Returns:
            ``["{prefix}{quantity}/{layer}", ...]`` for the active quantities.
        """
        return [f"{self.log_key_prefix}{q}/{layer}" for q in self.active_quantities]

    @property
    def num_classes(self) -> int | None:
        """Number of target groups of the probe (classes), once it is drawn; else None."""
        return self._probe.num_groups("y")

    @property
    @override
    def state_key(self) -> str:
        """Unique per configuration (layers, quantities, stage, cadence, seed)."""
        return callback_state_key(
            self,
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
        """Probe indices, their source, cached reference groups and the last evaluated epoch.

        Returns:
            The probe's state (tensors, strings, ints) and ``"last_epoch_done"``.
        """
        return {**self._probe.state_dict(), "last_epoch_done": self._last_epoch_done}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe so that a resumed run continues the same curves."""
        self._probe.load_state_dict(state_dict)
        self._last_epoch_done = int(state_dict.get("last_epoch_done", -1))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (e.g. for spawned DDP workers) without the cached probe batches.

        Returns:
            A copy of ``__dict__`` whose probe has no chunks (rebuilt at train start).
        """
        state = self.__dict__.copy()
        probe = _ProbeSet.__new__(_ProbeSet)  # cached probe batches are rebuilt at train start
        probe.__dict__.update(self._probe.__dict__, chunks=[])
        state["_probe"] = probe
        return state

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start a fit afresh (a resume restores the state afterwards); resolve layer names.

        Everything that belongs to one fit (the probe, its reference groups, the last evaluated
        epoch, the warnings given) is forgotten here, so the same monitor can be used for several
        fits (a cross-validation loop); Lightning restores a checkpoint's callback state after
        ``setup``, so a resumed fit continues with its probe.
        """
        if stage == "fit":
            self._probe.reset()
            self._metrics, self._last_epoch_done, self._warned = {}, -1, set()
            self._layer_keys = self._resolve_layers(pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Draw (or restore) the probe set, group its references and build the metrics."""
        with preserved_global_rng():  # reading samples must not shift the run's random stream
            self._draw_probe(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget last evaluation's values so that a stale value is never monitored twice."""
        self._batches_done = 0
        for layer in self._layer_keys:
            for key in self.keys_for(layer):
                trainer.callback_metrics.pop(key, None)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Count the epoch's finished training batches (to tell the epoch-end validation)."""
        self._batches_done = batch_idx + 1

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate at the epoch-end validation (not in the sanity check, not mid-epoch)."""
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._at_train_epoch_end(trainer) and self._is_eval_epoch(trainer):
            self._evaluate(trainer, pl_module)

    def _at_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        """Whether the current validation run is the one at the end of a training epoch.

        Public API only: the trainer's ``is_last_batch`` (the data ran out) or, for a limited
        epoch (``limit_train_batches``), all ``num_training_batches`` batches finished, counted
        from ``on_train_batch_end``. A validation inside the epoch (``val_check_interval < 1``)
        is neither.

        Returns:
            True at the epoch-end validation.
        """
        return bool(trainer.is_last_batch) or self._batches_done >= trainer.num_training_batches

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate here when no validation ran at this epoch's end."""
        if self._is_eval_epoch(trainer):
            self._evaluate(trainer, pl_module)

    # ------------------------------------------------------------------ setup helpers
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
        return {spec: spec for spec in self.layers}

    def _probe_loader(self, trainer: pl.Trainer) -> tuple[str, DataLoader]:
        source = self._probe.source or self.stage
        if source == "validate":
            loader = first_loader(trainer.val_dataloaders)
            if loader is not None and len(map_dataset(loader, type(self).__name__)) > 0:
                return "validate", loader
            rank_zero_warn(
                f"{type(self).__name__}(stage='validate'): no validation data; drawing the probe "
                "from the training data instead. DSMI(Z;Y) then measures fit, not "
                "generalisation; pass validation data for an overfitting signal.",
                category=UserWarning,
            )
        loader = first_loader(trainer.train_dataloader)
        if loader is None:
            raise ValueError(
                f"{type(self).__name__}: no map-style training or validation DataLoader to draw "
                "the probe set from."
            )
        return "train", loader

    def _draw_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        source, loader = self._probe_loader(trainer)
        self._probe.draw(source, loader, rank=trainer.global_rank, world=trainer.world_size)
        _check_profile_memory(  # refuse a probe too large for the exact path now, not at epoch end
            (int(self._probe.indices.numel()), 0),
            list(self._probe.groups.values()),
            solver=self.metric.solver,
            num_repeats=self.mi_metric.num_repeats,
            limit=self.metric.memory_limit_bytes,
        )
        names = tuple(f"dsmi_{r}" for r in self._probe.references)
        # the probe is the sample (its size is this monitor's `max_samples`): never subsampled again
        options = {**self.metric.options(), "max_samples": None}
        self._metrics = {
            key: _DiffusionProfile(
                names,
                num_repeats=self.mi_metric.num_repeats,
                self_clusters=self.mi_metric.num_clusters if "dsmi_z" in self.quantities else None,
                **options,
            ).to(pl_module.device)
            for key in self._layer_keys
        }

    # ------------------------------------------------------------------ the probe pass
    def _is_eval_epoch(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch
        return (epoch + 1) % self.every_n_epochs == 0 and epoch != self._last_epoch_done

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_epoch_done = trainer.current_epoch
        with preserved_global_rng():  # the probe pass must not shift the run's random stream
            if not self._probe.chunks:  # e.g. a callback added after train start
                self._draw_probe(trainer, pl_module)
            bad = self._forward_probe(pl_module)
            for key, metric in self._metrics.items():
                # the same collective on every process, in the same order, whatever the data
                if trainer.strategy.reduce_boolean_decision(bad[key], all=False):
                    self._warn_nonfinite(key, trainer.current_epoch)
                    metric.reset()
                    continue
                profile = metric.compute()
                metric.reset()
                self._log(trainer, pl_module, key, profile)

    def _forward_probe(self, pl_module: pl.LightningModule) -> dict[str, bool]:
        """Run the probe through the model and feed each layer's metric.

        Returns:
            ``{layer: whether its activations held NaN/inf}`` (such a layer is not fed).
        """
        targets = {
            key: (pl_module.get_submodule(_parse_layer(spec).module_name), _parse_layer(spec).side)
            for key, spec in self._layer_keys.items()
        }
        device = pl_module.device
        bad = dict.fromkeys(self._layer_keys, False)
        for metric in self._metrics.values():
            metric.reset()
            metric.to(device)
        with torch.no_grad(), _ActivationCapture(pl_module, targets) as capture:
            for chunk in self._probe.chunks:
                pl_module(self.input_fn(move_data_to_device(chunk.batch, device)))
                for key, z in capture.pop().items():
                    bad[key] = bad[key] or not bool(torch.isfinite(z).all())
                    if not bad[key]:
                        self._metrics[key].update(
                            z, chunk.groups.to(device), index=chunk.positions.to(device)
                        )
        return bad

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str, profile: _Profile
    ) -> None:
        values = {"dse": profile.dse, **profile.dsmi}
        self._check_scale(key, profile)
        writers = tensorboard_writers(trainer) if self.log_histogram else []
        if profile.eigvals is not None and writers and trainer.is_global_zero:
            spectrum = torch.sort(profile.eigvals).values.float().cpu()
            for writer in writers:
                writer.add_histogram(
                    f"{self.log_key_prefix}spectrum/{key}",
                    spectrum,
                    global_step=trainer.current_epoch,
                )
        with warnings.catch_warnings():
            # identical on every process by construction: no reduction needed
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            for q in self.active_quantities:
                pl_module.log(
                    f"{self.log_key_prefix}{q}/{key}",
                    values[q].to(device=pl_module.device, dtype=torch.float32),
                    on_step=False,
                    on_epoch=True,
                    sync_dist=False,
                    batch_size=1,
                )

    def _check_scale(self, key: str, profile: _Profile) -> None:
        """Warn once per layer when a fixed ``sigma`` is far from the features' scale."""
        sigma = self.metric.sigma
        if (
            isinstance(sigma, str)
            or profile.median_affinity is None
            or f"scale:{key}" in self._warned
        ):
            return
        g = profile.median_affinity
        ratio = math.inf if g <= 0.0 else math.sqrt(max(0.0, -2.0 * math.log(g)))
        if _SCALE_LOW <= ratio <= _SCALE_HIGH:
            return
        self._warned.add(f"scale:{key}")
        what = (
            "nearly constant (DSE near 0)"
            if ratio < _SCALE_LOW
            else "nearly diagonal (DSE near log2 N)"
        )
        rank_zero_warn(
            f"{type(self).__name__}: layer `{key}`: the median distance between probe features is "
            f"{ratio:.3g} x sigma = {sigma:g}, so the kernel is {what} and DSE/DSMI mostly follow "
            "the feature scale. Use `metric=DiffusionSpectralEntropy(sigma='median')` (the "
            "monitor's default) or a sigma near the feature scale. Warned once.",
            category=UserWarning,
        )

    def _warn_nonfinite(self, key: str, epoch: int) -> None:
        if f"nonfinite:{key}" in self._warned:
            return
        self._warned.add(f"nonfinite:{key}")
        rank_zero_warn(
            f"{type(self).__name__}: layer `{key}` produced NaN/inf activations at epoch {epoch}; "
            "its DSE/DSMI are skipped while this lasts (warned once). Training continues.",
            category=RuntimeWarning,
        )


def _check_layers(layers: str | Sequence[str] | None) -> list[str] | None:
    """The layer names as a list (None: the penultimate features).

    Returns:
        ``[name, ...]`` or None.

    Raises:
        TypeError: if a name is not a string.
        ValueError: for an empty list.
    """
    if layers is None:
        return None
    layers = [layers] if isinstance(layers, str) else list(layers)
    for name in layers:
        if not isinstance(name, str):
            raise TypeError(f"`layers` must hold strings; got {type(name).__name__}.")
    if not layers:
        raise ValueError("`layers` must name at least one layer, or be None; got [].")
    return layers


def _check_quantities(quantities: str | Sequence[str]) -> tuple[str, ...]:
    """The quantities to log, a non-empty subset of :data:`ALL_QUANTITIES` in the given order.

    Returns:
        The quantities as a tuple.

    Raises:
        ValueError: for an unknown quantity or none at all.
    """
    if isinstance(quantities, str):
        quantities = [quantities]
    checked = tuple(_check_choice(q, "quantities", ALL_QUANTITIES) for q in quantities)
    if not checked:
        raise ValueError(f"`quantities` must hold at least one of {ALL_QUANTITIES}; got ().")
    return checked


def _check_prefix(log_key_prefix: Any) -> str:
    """The prefix of every logged key.

    Returns:
        ``log_key_prefix``.

    Raises:
        TypeError: if it is not a string.
    """
    if not isinstance(log_key_prefix, str):
        raise TypeError(f"`log_key_prefix` must be a string; got {log_key_prefix!r}.")
    return log_key_prefix


def _check_templates(
    metric: DiffusionSpectralEntropy | None,
    mi_metric: DiffusionSpectralMutualInformation | None,
    max_samples: int | None,
) -> tuple[DiffusionSpectralEntropy, DiffusionSpectralMutualInformation]:
    """The metric templates, checked against each other and against the probe size.

    Returns:
        ``(metric, mi_metric)``, defaults filled in.

    Raises:
        TypeError: for a template of the wrong class.
        ValueError: for kernel options that differ between the two templates, or a template
            ``max_samples`` that would subsample the probe (whose size is the monitor's).
    """
    if metric is not None and not isinstance(metric, DiffusionSpectralEntropy):
        raise TypeError(
            f"`metric` must be a DiffusionSpectralEntropy; got {type(metric).__name__}."
        )
    if mi_metric is not None and not isinstance(mi_metric, DiffusionSpectralMutualInformation):
        raise TypeError(
            "`mi_metric` must be a DiffusionSpectralMutualInformation; got "
            f"{type(mi_metric).__name__}."
        )
    if metric is None:
        metric = DiffusionSpectralEntropy(
            sigma=DEFAULT_SIGMA, dtype=DEFAULT_DTYPE, max_samples=None
        )
    _check_no_subsample("metric", metric, max_samples)
    if mi_metric is None:
        return metric, DiffusionSpectralMutualInformation(**metric.options())
    _check_no_subsample("mi_metric", mi_metric, max_samples)
    # the probe size is the monitor's and the memory budget `metric`'s: neither is a kernel option
    not_kernel = ("seed", "max_samples", "memory_limit_bytes")
    kernel = {k: v for k, v in mi_metric.options().items() if k not in not_kernel}
    expected = {k: v for k, v in metric.options().items() if k not in not_kernel}
    if kernel != expected:
        raise ValueError(
            "`mi_metric`'s kernel options must equal `metric`'s (DSE and DSMI of a layer share one "
            f"kernel): got {kernel} and {expected}. Set them on `metric`; `mi_metric` carries "
            "`num_repeats` and `num_clusters`."
        )
    return metric, mi_metric


def _check_no_subsample(name: str, template: Any, max_samples: int | None) -> None:
    """The probe size has one source, the monitor's ``max_samples``: a template must not cap it.

    Raises:
        ValueError: if the template's ``max_samples`` is below the probe size (or caps a probe of
            the whole dataset), naming both.
    """
    cap = template.max_samples
    if cap is None or (max_samples is not None and cap >= max_samples):
        return  # the template would not subsample the probe: nothing to decide
    probe = "the whole dataset (max_samples=None)" if max_samples is None else max_samples
    raise ValueError(
        f"`{name}` has max_samples={cap}, which would subsample the monitor's probe of {probe} "
        "samples: the probe size is set once, by the monitor's `max_samples`. Pass "
        f"`max_samples={cap}` to {DiffusionSpectralEntropyMonitor.__name__} and build `{name}` "
        "with `max_samples=None`."
    )


def _available(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_modules() if name]
