r"""Score every training sample's smooth unique information when ``fit`` ends.

Harutyunyan, Achille, Paolini et al., *Estimating informativeness of samples with Smooth Unique
Information*, ICLR 2021, arXiv:2101.06640. This module only decides *when* and *on what* to run
the engine (:func:`lightning_info.functional.sui.smooth_unique_information`) and *where* the
results go; the math lives in :mod:`lightning_info.functional`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_info.functional.jacobian import empirical_ntk, jacobian_features, model_outputs
from lightning_info.functional.sui import UniqueInformation, unique_information_from_kernels
from lightning_info.reporting import (
    log_histograms,
    log_image_grid,
    log_text_table,
    rank_descending,
    tensorboard_writers,
    write_csv_atomic,
)
from lightning_info.utilities.batch import default_input_fn, default_target_fn
from lightning_info.utilities.checks import _check_choice, _check_int, _check_positive
from lightning_info.utilities.compat import Callback
from lightning_info.utilities.rng import preserved_global_rng

__all__ = ["SUIScores", "SmoothUniqueInformation"]

LinearizeAt = Literal["init", "final"]
_STEPS_FROM_TRAINER = "trainer"


@dataclass(frozen=True)
class SUIScores:
    """Per-sample smooth unique information of the scored training samples, in dataset order.

    Attributes:
        indices: (N,) int64 dataset indices of the scored samples, ascending.
        labels: (N,) the samples' labels as stored in the dataset (argmax of multi-output targets).
        predicted: (N,) int64 predicted labels of the final model (argmax of the outputs; for a
            single output, ``output > 0.5``, the MSE-on-0/1 convention of the engine).
        weight_si: (N,) weight SI in nats, higher = more informative (see the engine).
        functional_si: (N,) held-out functional SI in nats, or NaN when no held-out data exist.
        weight_change_sq: (N,) raw :math:`\\lVert\\Delta w\\rVert^2`.
        function_change_sq: (N,) raw mean held-out :math:`\\lVert\\Delta f\\rVert^2` (or NaN).
        self_prediction_change: (N, K) leave-one-out change of each sample's own prediction.
        settings: the resolved settings of the scoring run (linearization point, learning
            rate, steps, weight decay, kernel, method, numbers of samples).
    """

    indices: Tensor
    labels: Tensor
    predicted: Tensor
    weight_si: Tensor
    functional_si: Tensor
    weight_change_sq: Tensor
    function_change_sq: Tensor
    self_prediction_change: Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def columns(self) -> dict[str, Tensor]:
        """Columns of the score file, in order (one row per scored sample)."""
        return {
            "index": self.indices,
            "label": self.labels,
            "predicted": self.predicted,
            "weight_si": self.weight_si,
            "functional_si": self.functional_si,
            "weight_change_sq": self.weight_change_sq,
            "function_change_sq": self.function_change_sq,
            "weight_si_rank": rank_descending(self.weight_si),
            "functional_si_rank": rank_descending(torch.nan_to_num(self.functional_si, nan=-1.0)),
        }


@contextlib.contextmanager
def _parameters_set_to(module: nn.Module, values: Mapping[str, Tensor] | None) -> Iterator[None]:
    """Temporarily copy ``values`` into the module's parameters (no-op for None); restore after."""
    if values is None:
        yield
        return
    params = dict(module.named_parameters())
    saved = {}
    with torch.no_grad():
        for name, value in values.items():
            if name in params:
                saved[name] = params[name].detach().clone()
                params[name].copy_(value.to(params[name].device, params[name].dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def _first_loader(loaders: Any) -> DataLoader | None:
    """Return the first DataLoader of a loader, a sequence or a mapping of loaders (or None)."""
    if loaders is None:
        return None
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, Sequence) and loaders and isinstance(loaders[0], DataLoader):
        return loaders[0]
    return None


def _uses_augmentation(dataset: Any) -> bool:
    """Best-effort: a torchvision-style dataset with a random ``transform`` set."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    for attr in ("transform", "transforms"):
        transform = getattr(dataset, attr, None)
        if transform is not None:
            return True
    return False


def _label_vector(targets: Tensor) -> Tensor:
    """(N,) labels for the report: the targets, or the argmax of multi-output targets."""
    if targets.ndim > 1 and targets.shape[1] > 1:
        return targets.argmax(1)
    return targets.reshape(targets.shape[0])


class SmoothUniqueInformation(Callback):
    r"""Score every training sample by its smooth unique information when ``fit`` ends.

    Harutyunyan et al., *Estimating informativeness of samples with Smooth Unique Information*
    (ICLR 2021, arXiv:2101.06640, Eqs. for SI and F-SI of the linearized network). The network
    is linearized at :math:`w_0` and trained in closed form by full-batch gradient descent on the
    mean MSE loss; leaving sample :math:`i` out changes the weights and the held-out predictions:

    .. math::

        \mathrm{SI}_i = \frac{\lVert w_S - w_{S\setminus i} \rVert^2}{2\sigma^2}, \qquad
        \text{F-SI}_i = \frac{1}{2\sigma^2}\,\mathrm{mean}_{x \in X_\mathrm{val}}
            \lVert f_S(x) - f_{S\setminus i}(x) \rVert^2 \quad\text{(nats; higher = more informative).}

    **Linearization point** (``linearize_at``). ``"init"`` (default) linearizes at the weights
    snapshotted in ``on_fit_start`` and replays the training run (the paper's setting: the scores
    describe the run that produced the final model). ``"final"`` linearizes at the trained weights
    (informativeness for further training from there). Measured on digits with 10% flipped
    labels (``benchmarks/sui_applications.py``, MLP 64-128-128-10, MSE + SGD, flipped-label
    AUROC of weight SI): in a short run that underfits the flipped labels both work (init 0.99,
    final 1.00, training-loss baseline 0.99); once the network has memorized them (all flipped
    samples fitted to their wrong label after 500 epochs) the final weights fit them, the
    residuals vanish and final-weight scores drop to 0.58 (training loss 0.66), while ``"init"``
    stays at 1.00. ``"init"`` is therefore the default. The snapshot is stored in the callback's
    checkpoint state, so resuming keeps the true initial weights (the checkpoint then
    carries one extra copy of the parameters).

    **Which samples.** The scoring pass rebuilds a *sequential* DataLoader (no shuffling, no
    sampler, ``num_workers=0``) over ``trainer.train_dataloader.dataset`` with the same
    ``collate_fn``, or over ``dataset=`` when given; with more than ``max_samples`` samples a
    seeded subset is drawn. Rows are reported with their dataset indices, in dataset order. The
    dataset's own ``__getitem__`` is used as is: if it applies random augmentation, pass an
    un-augmented copy as ``dataset=`` (a warning is issued when a ``transform`` attribute is
    found). F-SI averages over the validation dataset (``val_dataset=`` or the trainer's first
    validation loader), capped at ``max_heldout`` samples; without one F-SI is NaN.

    **Training hyper-parameters.** Unless given, the learning rate and weight decay are read from
    the first optimizer's first parameter group at fit start and the horizon ``num_steps`` is the
    number of optimizer steps taken since the snapshot (``trainer.global_step``). With SGD
    momentum β the replayed learning rate is lr/(1-β) (heavy-ball equivalence). With an adaptive
    optimizer (Adam, RMSprop, ...) there is no GD horizon to replay (lr=1e-3 for the run's steps
    barely moves the linearized model: flipped-label AUROC 0.70 on digits), so the converged
    solution ``num_steps=None`` is scored instead (AUROC 0.99 in the same run). A mini-batch
    step is treated as a full-batch step (same mean gradient). The closed form assumes plain
    SGD on an MSE loss without BatchNorm or augmentation and weight decay toward :math:`w_0`;
    when this is violated (Adam, momentum, a cross-entropy loss detected or declared with
    ``loss=``, BatchNorm, augmentation), a warning is issued once and the scores are still
    computed, as in the paper.

    **Defaults and cost.** At most ``max_samples=1000`` training and ``max_heldout=500``
    held-out samples. ``kernel="auto"`` uses the full NK x NK kernel when N·K <= 2000 and
    otherwise the trace kernel (the K outputs share one N x N kernel; O(N^2) memory).
    ``method="auto"`` uses the exact finite-horizon solve when its estimated cost is at most
    ``exact_max_cost`` (2e10 flops) and otherwise the ridge equivalent of early stopping (on the
    digits benchmark the two give the same AUROC to 0.003). A learning rate beyond the
    linearized GD's stability limit 2N/λ_max (frequent: real training runs at the edge of
    stability) is lowered to 0.9 of the limit with the steps raised to keep lr·t; both values
    are kept in ``scores_.settings``.

    **Distributed.** Under DDP every rank builds the same scoring set, computes the Jacobian
    features of its shard ``positions[rank::world_size]`` (no DistributedSampler, so no padding
    duplicates: each dataset index is scored exactly once), the features are all-gathered, rank
    0 solves and broadcasts, and every rank ends with the same ``scores_``. Only rank 0 writes
    files and logger summaries.

    Outputs:
        * ``scores_``: a :class:`SUIScores` (also returned by :meth:`score`).
        * ``<log_dir>/sui_scores.csv``, one row per scored sample (index, label, predicted,
          weight_si, functional_si, weight_change_sq, function_change_sq, both ranks), written
          atomically (temporary file + fsync + ``os.replace``): a killed write leaves the
          previous complete file or none. A re-run replaces the file, never appends.
        * TensorBoard (when a ``TensorBoardLogger`` is attached; other loggers are skipped):
          histograms ``sui/weight_si``, ``sui/functional_si`` and their ``log10``, a text table
          ``sui/top_k`` of the ``top_k`` most informative samples, and image grids
          ``sui/most_informative`` / ``sui/least_informative`` when the inputs are images
          ((N, C, H, W) or (N, H, W)) or ``image_shape`` is given for flat inputs.

    Logged keys:
        None through ``pl_module.log`` (Lightning forbids logging in ``on_fit_end``); nothing to
        monitor with ``EarlyStopping``.

    Args:
        linearize_at: ``"init"`` (weights at fit start) or ``"final"`` (weights at fit end).
        dataset: dataset to score instead of the training loader's dataset.
        val_dataset: held-out dataset for F-SI instead of the trainer's validation loader's.
        max_samples: cap on the number of scored training samples (seeded subset); None = all.
        max_heldout: cap on the number of held-out samples for F-SI; None = all.
        learning_rate: lr of the closed-form GD (default: read from the optimizer).
        weight_decay: weight decay (default: read from the optimizer).
        num_steps: GD steps; ``"trainer"`` (default) = optimizer steps since the snapshot, an
            int, or None for the converged solution.
        noise_scale: σ of the smoothing noise (only rescales the scores).
        kernel: ``"auto"`` (``"full"`` when N·K <= ``full_kernel_max``, else ``"trace"``),
            ``"full"`` or ``"trace"``.
        method: ``"auto"`` (``"exact"`` when its estimated cost is small, else ``"ridge"``),
            ``"exact"`` or ``"ridge"``; see the engine.
        params: which parameters to linearize (None = all trainable; a prefix or list of names).
        projection_dim: random-projection dimension of the Jacobians (None = exact kernel).
        chunk_size: samples per Jacobian ``vmap`` call.
        loss: ``"auto"`` (detect cross-entropy from ``hparams.loss`` or a loss submodule), ``"mse"``
            or ``"cross_entropy"``; only used for the assumption warning.
        input_fn: extracts the inputs from a batch (default: ``batch[0]`` / common dict keys).
        target_fn: extracts the targets from a batch (default: ``batch[1]`` / common dict keys).
        batch_size: batch size of the scoring pass.
        full_kernel_max: largest N·K for which ``kernel="auto"`` uses the full kernel.
        exact_max_cost: largest estimated flop count for which ``method="auto"`` uses the exact
            finite-horizon solve (else the ridge approximation).
        seed: seed of the subsets and the projection (identical on every rank).
        dirpath: directory of the score file (default: ``trainer.log_dir``).
        filename: name of the score file.
        top_k: rows of the TensorBoard text table and images per grid.
        image_shape: shape of one image for flat inputs, e.g. ``(8, 8)``, to log image grids.
        progress: show progress bars (also requires the trainer's progress bar to be enabled).

    A failure while scoring at fit end (after training) is reported as a warning and leaves
    ``scores_`` None, so that a finished training run is never turned into an error; call
    :meth:`score` to retry (it raises).

    Raises:
        ValueError: invalid options (at construction), or, at fit start, a scoring dataset that
            is empty or whose batches/model outputs cannot be used.
        TypeError: options of the wrong type.

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_info.models import MLPClassifier
        >>> from lightning_info.utilities.data import make_loader
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
        >>> model = MLPClassifier(5, 3, hidden=(8,), loss="mse", optimizer="sgd", lr=0.1)
        >>> sui = SmoothUniqueInformation(progress=False)
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[sui], logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=__import__("tempfile").mkdtemp())
        >>> trainer.fit(model, make_loader(x, y, batch_size=10))
        >>> len(sui.scores_), sui.scores_.settings["num_steps"], sui.scores_.settings["kernel"]
        (40, 8, 'full')
    """

    def __init__(
        self,
        *,
        linearize_at: LinearizeAt | str = "init",
        dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        max_samples: int | None = 1000,
        max_heldout: int | None = 500,
        learning_rate: float | None = None,
        weight_decay: float | None = None,
        num_steps: int | Literal["trainer"] | None = _STEPS_FROM_TRAINER,
        noise_scale: float = 1.0,
        kernel: Literal["auto", "full", "trace"] | str = "auto",
        method: Literal["auto", "exact", "ridge"] | str = "auto",
        params: str | Sequence[str] | None = None,
        projection_dim: int | None = None,
        chunk_size: int | None = None,
        loss: Literal["auto", "mse", "cross_entropy"] | str = "auto",
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor] | None = None,
        batch_size: int = 256,
        full_kernel_max: int = 2000,
        exact_max_cost: float = 2e10,
        seed: int = 0,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "sui_scores.csv",
        top_k: int = 16,
        image_shape: Sequence[int] | None = None,
        progress: bool = True,
    ) -> None:
        self.linearize_at = _check_choice(linearize_at, "linearize_at", ("init", "final"))
        self.dataset = dataset
        self.val_dataset = val_dataset
        self.max_samples = _check_int(max_samples, "max_samples", minimum=2, allow_none=True)
        self.max_heldout = _check_int(max_heldout, "max_heldout", minimum=1, allow_none=True)
        self.learning_rate = (
            None if learning_rate is None else _check_positive(learning_rate, "learning_rate")
        )
        self.weight_decay = (
            None
            if weight_decay is None
            else _check_positive(weight_decay, "weight_decay", allow_zero=True)
        )
        if num_steps != _STEPS_FROM_TRAINER:
            num_steps = _check_int(num_steps, "num_steps", minimum=1, allow_none=True)
        self.num_steps = num_steps
        self.noise_scale = _check_positive(noise_scale, "noise_scale")
        self.kernel = _check_choice(kernel, "kernel", ("auto", "full", "trace"))
        self.method = _check_choice(method, "method", ("auto", "exact", "ridge"))
        self.params = params
        self.projection_dim = _check_int(
            projection_dim, "projection_dim", minimum=1, allow_none=True
        )
        self.chunk_size = _check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
        self.loss = _check_choice(loss, "loss", ("auto", "mse", "cross_entropy"))
        self.input_fn = input_fn or default_input_fn
        self.target_fn = target_fn or default_target_fn
        self.batch_size = int(_check_int(batch_size, "batch_size", minimum=1))
        self.full_kernel_max = int(_check_int(full_kernel_max, "full_kernel_max", minimum=1))
        self.exact_max_cost = _check_positive(exact_max_cost, "exact_max_cost")
        self.seed = int(_check_int(seed, "seed"))
        self.dirpath = dirpath
        if not isinstance(filename, str) or not filename or os.sep in filename:
            raise ValueError(f"`filename` must be a plain file name; got {filename!r}.")
        self.filename = filename
        self.top_k = int(_check_int(top_k, "top_k", minimum=0))
        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if len(image_shape) not in (2, 3):
                raise ValueError(f"`image_shape` must be (H, W) or (C, H, W); got {image_shape!r}.")
        self.image_shape = image_shape
        self.progress = bool(progress)

        self.scores_: SUIScores | None = None
        self.csv_path_: Path | None = None
        self._init_params: dict[str, Tensor] | None = None
        self._init_step = 0
        self._restored = False
        self._hyper: dict[str, Any] = {}
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """Key of this callback's checkpoint state (depends on the linearization point)."""
        return self._generate_state_key(linearize_at=self.linearize_at, filename=self.filename)

    def state_dict(self) -> dict[str, Any]:
        """The initial-weight snapshot and its step, so that a resumed run keeps them."""
        return {"init_params": self._init_params, "init_step": self._init_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the snapshot taken in the original run's ``on_fit_start``."""
        self._init_params = state_dict.get("init_params")
        self._init_step = int(state_dict.get("init_step", 0))
        self._restored = self._init_params is not None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"SmoothUniqueInformation: {message}", category=UserWarning)

    # ------------------------------------------------------------------------------------------
    # hooks
    # ------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Validate the scoring data, read the optimizer settings and snapshot the weights."""
        with preserved_global_rng():  # reading samples must not shift the run's random stream
            self._fit_start(trainer, pl_module)

    def _fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a fresh snapshot for every fit, unless this fit resumes from a checkpoint that held one
        if self.linearize_at == "init" and not self._restored:
            self._init_params = {
                n: p.detach().to("cpu", copy=True) for n, p in pl_module.named_parameters()
            }
            self._init_step = int(trainer.global_step)
        self._restored = False
        self._hyper = self._read_optimizer(trainer)
        self._check_assumptions(trainer, pl_module)
        if self.dataset is not None:
            self._probe(self.dataset, None, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the trainer's training data (known only once the fit loop has set it up)."""
        if self.dataset is None:
            with preserved_global_rng():
                self._check_train_source(trainer, pl_module)

    def _check_train_source(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dataset, loader = self._train_source(trainer)
        if dataset is not None and _uses_augmentation(dataset):
            self._warn_once(
                "augmentation",
                "the training dataset has a `transform`; if it is random augmentation, the "
                "scoring pass sees augmented samples. Pass an un-augmented copy as `dataset=`.",
            )
        self._probe(dataset, self._collate_of(loader), pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score the training samples and write the reports."""
        if trainer.sanity_checking:  # pragma: no cover - fit_end never runs during sanity check
            return
        try:
            with preserved_global_rng():  # a later fit/test of the user sees the same stream
                self.score(pl_module, trainer=trainer)
        except Exception as err:  # the model is trained: report, do not fail the whole run
            rank_zero_warn(
                f"SmoothUniqueInformation: scoring at fit end failed, `scores_` is None "
                f"({type(err).__name__}: {err}). Call `.score(...)` to retry with other settings.",
                category=UserWarning,
            )
            self.scores_ = None

    # ------------------------------------------------------------------------------------------
    # configuration read from the trainer
    # ------------------------------------------------------------------------------------------
    def _read_optimizer(self, trainer: pl.Trainer) -> dict[str, Any]:
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        if not optimizers:
            return {}
        opt = optimizers[0]
        group = opt.param_groups[0]
        name = type(opt).__name__
        momentum = float(group.get("momentum", 0.0) or 0.0)
        info = {
            "optimizer": name,
            "lr": float(group.get("lr", float("nan"))),
            "weight_decay": float(group.get("weight_decay", 0.0) or 0.0),
            "momentum": momentum,
        }
        if name != "SGD":
            self._warn_once(
                "optimizer",
                f"the optimizer is {name}, not plain SGD; the closed form assumes gradient descent "
                "and adaptive steps have no GD horizon, so unless `num_steps=` is given the "
                "converged linearized solution (num_steps=None) is scored. Scores are still "
                "computed.",
            )
        elif momentum > 0 or group.get("nesterov", False):
            self._warn_once(
                "momentum",
                f"SGD uses momentum={momentum:g}; the closed form assumes plain gradient descent, "
                f"so it replays GD with the heavy-ball effective learning rate lr/(1-momentum) = "
                f"{info['lr'] / max(1e-12, 1 - momentum):g} unless `learning_rate=` is given. "
                "Scores are still computed.",
            )
        if len(optimizers) > 1 or len(opt.param_groups) > 1:
            self._warn_once(
                "groups",
                "several optimizers or parameter groups; the learning rate and weight decay of the "
                "first group of the first optimizer are used.",
            )
        if getattr(trainer, "lr_scheduler_configs", None):
            self._warn_once(
                "scheduler",
                "a learning-rate scheduler is configured; the learning rate at fit start is used "
                "for the whole horizon.",
            )
        return info

    def _detect_cross_entropy(self, pl_module: pl.LightningModule) -> bool:
        if self.loss != "auto":
            return self.loss == "cross_entropy"
        hparams = getattr(pl_module, "hparams", {}) or {}
        declared = str(hparams.get("loss", "")).lower() if hasattr(hparams, "get") else ""
        if any(tag in declared for tag in ("cross", "entropy", "nll", "bce")):
            return True
        ce_types = (nn.CrossEntropyLoss, nn.NLLLoss, nn.BCEWithLogitsLoss, nn.BCELoss)
        return any(isinstance(m, ce_types) for m in pl_module.modules())

    def _check_assumptions(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._detect_cross_entropy(pl_module):
            self._warn_once(
                "loss",
                "the training loss is cross-entropy; the closed form (and the paper) use MSE on "
                "the raw outputs with one-hot targets, so the scores describe an MSE-trained "
                "linearized network. Scores are still computed.",
            )
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in pl_module.modules()):
            self._warn_once(
                "batchnorm",
                "the model has BatchNorm layers; they are linearized in eval mode (running "
                "statistics), which differs from their training-mode behaviour.",
            )
        if self.dataset is not None and _uses_augmentation(self.dataset):
            self._warn_once(
                "augmentation",
                "`dataset` has a `transform`; if it is random augmentation, the scoring pass sees "
                "augmented samples. Pass an un-augmented copy.",
            )

    def _train_source(self, trainer: pl.Trainer | None) -> tuple[Dataset | None, DataLoader | None]:
        if self.dataset is not None:
            return self.dataset, None
        loader = _first_loader(getattr(trainer, "train_dataloader", None)) if trainer else None
        return (loader.dataset if loader is not None else None), loader

    def _val_source(self, trainer: pl.Trainer | None) -> tuple[Dataset | None, DataLoader | None]:
        if self.val_dataset is not None:
            return self.val_dataset, None
        if trainer is None:
            return None, None
        try:
            loader = _first_loader(trainer.val_dataloaders)
            if loader is None:  # validation has not run yet: ask the fit's validation source
                source = trainer.fit_loop.epoch_loop.val_loop._data_source
                if source.is_defined():
                    loader = _first_loader(source.dataloader())
        except Exception:  # no validation loop configured
            loader = None
        return (loader.dataset if loader is not None else None), loader

    @staticmethod
    def _collate_of(loader_or_trainer: Any) -> Callable[[list[Any]], Any] | None:
        if isinstance(loader_or_trainer, DataLoader):
            return loader_or_trainer.collate_fn
        if loader_or_trainer is None:
            return None
        loader = _first_loader(getattr(loader_or_trainer, "train_dataloader", None))
        return loader.collate_fn if loader is not None else None

    def _probe(
        self, dataset: Dataset | None, collate_fn: Callable | None, pl_module: pl.LightningModule
    ) -> None:
        """Fail at fit start (not after training) on a dataset the scoring pass cannot use."""
        if dataset is None:
            return  # the trainer's loader is not known yet; checked again when scoring
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError as err:
            raise ValueError(
                "SmoothUniqueInformation needs a map-style dataset with `len()` to score samples by "
                f"index; got {type(dataset).__name__}. Pass `dataset=` with a map-style dataset."
            ) from err
        if n < 2:
            raise ValueError(f"the scoring dataset must hold at least 2 samples; got {n}.")
        loader = DataLoader(Subset(dataset, [0, 1]), batch_size=2, collate_fn=collate_fn)
        batch = next(iter(loader))
        x = self.input_fn(batch)
        y = self.target_fn(batch)
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError("`input_fn` and `target_fn` must return tensors.")
        with torch.no_grad():
            out = model_outputs(pl_module, x.to(pl_module.device))
        if y.shape[0] != out.shape[0]:
            raise ValueError(
                f"the targets of a scoring batch have {y.shape[0]} rows for {out.shape[0]} inputs; "
                "check `target_fn`."
            )
        if not y.is_floating_point() and out.shape[1] > 1 and int(y.max()) >= out.shape[1]:
            raise ValueError(
                f"integer labels must be < the number of model outputs K = {out.shape[1]}; got "
                f"label {int(y.max())}. SUI uses one-hot targets on the K raw outputs."
            )

    # ------------------------------------------------------------------------------------------
    # scoring
    # ------------------------------------------------------------------------------------------
    def _subset_positions(self, n: int, cap: int | None, offset: int) -> Tensor:
        if cap is None or n <= cap:
            return torch.arange(n)
        gen = torch.Generator().manual_seed(self.seed + offset)
        return torch.randperm(n, generator=gen)[:cap].sort().values

    def _collect(
        self,
        dataset: Dataset,
        positions: Tensor,
        collate_fn: Callable | None,
        desc: str,
        progress: bool,
    ) -> tuple[Tensor, Tensor]:
        loader = DataLoader(
            Subset(dataset, positions.tolist()),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=0,
            collate_fn=collate_fn,
        )
        xs, ys = [], []
        iterator: Any = loader
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(loader, desc=desc, leave=False)
        for batch in iterator:
            xs.append(self.input_fn(batch).detach().cpu())
            ys.append(self.target_fn(batch).detach().cpu())
        return torch.cat(xs, 0), torch.cat(ys, 0)

    def _resolve(self, n: int, k: int, trainer: pl.Trainer | None) -> dict[str, Any]:
        hyper = self._hyper or (self._read_optimizer(trainer) if trainer is not None else {})
        lr = self.learning_rate if self.learning_rate is not None else hyper.get("lr")
        if lr is None or not math.isfinite(lr) or lr <= 0:
            raise ValueError(
                "`learning_rate` could not be read from the trainer's optimizer; pass "
                "`learning_rate=` to SmoothUniqueInformation."
            )
        wd = self.weight_decay if self.weight_decay is not None else hyper.get("weight_decay", 0.0)
        momentum = float(hyper.get("momentum", 0.0))
        if self.learning_rate is None and 0.0 < momentum < 1.0:
            lr = lr / (1.0 - momentum)  # heavy ball: same long-time dynamics as GD with lr/(1-β)
        adaptive = hyper.get("optimizer") not in (None, "SGD")
        if self.num_steps == _STEPS_FROM_TRAINER and adaptive:
            steps = None  # adaptive steps are not GD steps: use the converged solution
        elif self.num_steps == _STEPS_FROM_TRAINER:
            if trainer is None:
                raise ValueError(
                    "`num_steps='trainer'` needs a trainer; pass `num_steps=` (an int, or None for "
                    "the converged solution) when scoring outside fit."
                )
            steps = int(trainer.global_step) - (
                self._init_step if self.linearize_at == "init" else 0
            )
            if steps < 1:
                self._warn_once(
                    "steps",
                    f"no optimizer step was taken (global_step={trainer.global_step}); scoring "
                    "with num_steps=1.",
                )
                steps = 1
        else:
            steps = self.num_steps
        kernel = self.kernel
        if kernel == "auto":
            kernel = "full" if n * k <= self.full_kernel_max or k == 1 else "trace"
        return {
            "learning_rate": float(lr),
            "weight_decay": float(wd),
            "num_steps": steps,
            "kernel": kernel,
            "method": self.method,
            "optimizer": hyper.get("optimizer"),
            "momentum": momentum,
        }

    def score(
        self,
        pl_module: pl.LightningModule,
        dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        *,
        trainer: pl.Trainer | None = None,
        init_state: Mapping[str, Tensor] | None = None,
        write: bool = True,
    ) -> SUIScores:
        """Score the training samples now (called by ``on_fit_end``; usable outside fit).

        Args:
            pl_module: the (trained) module; its parameters are restored after scoring.
            dataset: dataset to score (default: the constructor's ``dataset`` or the trainer's
                training dataset).
            val_dataset: held-out dataset for F-SI (default: the constructor's or the trainer's).
            trainer: the trainer, to read optimizer settings, steps, loaders and loggers.
            init_state: parameters of the initial weights (name -> tensor) for
                ``linearize_at="init"`` outside fit (default: the fit-start snapshot).
            write: write the CSV and logger summaries (rank 0 only).

        Returns:
            The :class:`SUIScores`, also stored in ``scores_``.

        Raises:
            ValueError: no dataset to score, or settings that cannot be read from the trainer.
        """
        train_ds, train_loader = (
            (dataset, None) if dataset is not None else self._train_source(trainer)
        )
        if train_ds is None:
            raise ValueError(
                "no dataset to score: pass `dataset=` (to the callback or to `score`) or call it "
                "with a trainer that has a training DataLoader."
            )
        val_ds, val_loader = (
            (val_dataset, None) if val_dataset is not None else self._val_source(trainer)
        )
        collate = self._collate_of(train_loader)
        val_collate = self._collate_of(val_loader)
        show = self.progress and (trainer is None or trainer.progress_bar_callback is not None)
        show = show and (trainer is None or trainer.is_global_zero)

        positions = self._subset_positions(len(train_ds), self.max_samples, 0)
        x, y = self._collect(train_ds, positions, collate, "SUI: loading training samples", show)
        x_val = None
        if val_ds is not None and len(val_ds) > 0:
            val_pos = self._subset_positions(len(val_ds), self.max_heldout, 1)
            x_val, _ = self._collect(val_ds, val_pos, val_collate, "SUI: loading held-out", show)

        init = init_state if init_state is not None else self._init_params
        linearize_at = self.linearize_at
        if linearize_at == "init" and init is None:
            self._warn_once(
                "no_init",
                "linearize_at='init' but no initial weights are known (scoring outside fit "
                "without `init_state=`); linearizing at the current weights instead.",
            )
            linearize_at = "final"
        device = pl_module.device
        x_dev = x.to(device)
        with torch.no_grad():
            final_out = model_outputs(pl_module, x_dev, chunk_size=self.batch_size).cpu()
        predicted = (
            final_out.argmax(1) if final_out.shape[1] > 1 else (final_out[:, 0] > 0.5).long()
        )
        settings = self._resolve(x.shape[0], final_out.shape[1], trainer)
        settings.update(
            linearize_at=linearize_at,
            noise_scale=self.noise_scale,
            num_samples=int(x.shape[0]),
            num_heldout=0 if x_val is None else int(x_val.shape[0]),
            projection_dim=self.projection_dim,
        )
        rank_zero_info(
            f"SmoothUniqueInformation: scoring {x.shape[0]} samples "
            f"({settings['num_heldout']} held-out) at the {linearize_at} weights, "
            f"lr={settings['learning_rate']:g}, steps={settings['num_steps']}, "
            f"wd={settings['weight_decay']:g}, kernel={settings['kernel']}, "
            f"method={settings['method']}."
        )
        world = trainer.world_size if trainer is not None else 1
        distributed = world > 1 and dist.is_available() and dist.is_initialized()
        with _parameters_set_to(pl_module, init if linearize_at == "init" else None):
            if distributed:
                theta, theta_val = self._kernels_distributed(pl_module, trainer, x, x_val, settings)
            else:
                theta, theta_val = self._kernels(pl_module, x_dev, x_val, settings)
            info: UniqueInformation | None = None
            error: str | None = None
            if not distributed:
                f0 = model_outputs(pl_module, x_dev, chunk_size=self.batch_size)
                info = self._solve(theta, theta_val, f0, y.to(device), settings, show)
            elif trainer.is_global_zero:
                try:  # never leave the other ranks waiting in the broadcast below
                    f0 = model_outputs(pl_module, x_dev, chunk_size=self.batch_size)
                    info = self._solve(theta, theta_val, f0, y.to(device), settings, show)
                except Exception as err:
                    error = f"{type(err).__name__}: {err}"
        if distributed:
            info, settings, error = trainer.strategy.broadcast((info, settings, error), src=0)
            if error is not None:
                raise RuntimeError(f"SmoothUniqueInformation: scoring failed on rank 0: {error}")
        self.scores_ = self._to_scores(info, positions.long(), y, predicted, settings)
        if write:
            out_dir = self._output_dir(trainer)  # on every rank: `trainer.log_dir` is a collective
            if trainer is None or trainer.is_global_zero:
                self._write(trainer, out_dir, x, self.scores_)
        return self.scores_

    @staticmethod
    def _to_scores(
        info: UniqueInformation,
        indices: Tensor,
        y: Tensor,
        predicted: Tensor,
        settings: dict[str, Any],
    ) -> SUIScores:
        nan = torch.full_like(info.weight_si, float("nan")).cpu()
        return SUIScores(
            indices=indices,
            labels=_label_vector(y),
            predicted=predicted.long(),
            weight_si=info.weight_si.detach().cpu(),
            functional_si=nan if info.functional_si is None else info.functional_si.detach().cpu(),
            weight_change_sq=info.weight_change_sq.detach().cpu(),
            function_change_sq=(
                nan if info.function_change_sq is None else info.function_change_sq.detach().cpu()
            ),
            self_prediction_change=info.self_prediction_change.detach().cpu(),
            settings=dict(settings),
        )

    # ------------------------------------------------------------------------------------------
    # DDP: shard the Jacobian features, gather, solve on rank 0, broadcast
    # ------------------------------------------------------------------------------------------
    def _kernels(
        self, pl_module: nn.Module, x: Tensor, x_val: Tensor | None, settings: dict[str, Any]
    ) -> tuple[Tensor, Tensor | None]:
        """Train and held-out/train NTKs at the current parameters (one process)."""
        kw = dict(
            params=self.params,
            kernel=settings["kernel"],
            chunk_size=self.chunk_size,
            projection_dim=self.projection_dim,
            seed=self.seed,
        )
        theta = empirical_ntk(pl_module, x, **kw)
        theta_val = None
        if x_val is not None:
            theta_val = empirical_ntk(pl_module, x_val.to(x.device), x, **kw)
        return theta, theta_val

    def _gather_features(self, pl_module: nn.Module, trainer: pl.Trainer, x: Tensor) -> Tensor:
        """Jacobian features of ``x``: each rank computes rows ``rank::world``; all-gathered."""
        rank, world = trainer.global_rank, trainer.world_size
        device = pl_module.device  # type: ignore[attr-defined]
        kw = dict(params=self.params, projection_dim=self.projection_dim, seed=self.seed)
        shard = x[rank::world].to(device)
        per_rank = math.ceil(x.shape[0] / world)
        if shard.shape[0] > 0:
            feats = jacobian_features(pl_module, shard, chunk_size=self.chunk_size, **kw)
        else:  # more ranks than samples: contribute only padding
            feats = jacobian_features(pl_module, x[:1].to(device), **kw)[:0]
        padded = feats.new_zeros(per_rank, *feats.shape[1:])
        padded[: feats.shape[0]] = feats
        gathered = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded.contiguous())
        # position p was computed by rank p % world as its (p // world)-th row; padding dropped
        stacked = torch.stack(gathered, 0)  # (world, per_rank, K, d)
        order = torch.arange(x.shape[0], device=stacked.device)
        return stacked[order % world, order // world]

    def _kernels_distributed(
        self,
        pl_module: pl.LightningModule,
        trainer: pl.Trainer,
        x: Tensor,
        x_val: Tensor | None,
        settings: dict[str, Any],
    ) -> tuple[Tensor | None, Tensor | None]:
        """Gather the sharded features on every rank; only rank 0 forms the kernels."""
        phi = self._gather_features(pl_module, trainer, x)
        phi_val = None if x_val is None else self._gather_features(pl_module, trainer, x_val)
        if not trainer.is_global_zero:
            return None, None
        theta = _kernel(phi, phi, settings["kernel"])
        theta_val = None if phi_val is None else _kernel(phi_val, phi, settings["kernel"])
        return theta, theta_val

    def _solve(
        self,
        theta: Tensor,
        theta_val: Tensor | None,
        f0: Tensor,
        y: Tensor,
        settings: dict[str, Any],
        show: bool,
    ) -> UniqueInformation:
        """Make the horizon stable for the linearized GD, pick the method, call the engine.

        Real training often runs at a learning rate beyond the linearized model's stability
        limit 2N/λ_max(A) (edge of stability). The linearized GD would then diverge along the
        top eigendirections, so the learning rate is lowered to 0.9 of the limit and the number
        of steps raised to keep lr·t (the optimization time) unchanged.
        """
        n, k = f0.shape
        trace = settings["kernel"] == "trace" and k > 1
        a_mat = theta / k if trace else theta
        lam = n * settings["weight_decay"]
        if a_mat.shape[0] <= 6000:
            lam_max = float(torch.linalg.eigvalsh(a_mat.double())[-1]) + lam
        else:  # power iteration lower bound, with a safety margin
            v = torch.ones(a_mat.shape[0], dtype=torch.float64, device=a_mat.device)
            for _ in range(100):
                v = a_mat @ v
                v = v / v.norm()
            lam_max = 1.1 * float(v @ (a_mat @ v)) + lam
        lr, steps = settings["learning_rate"], settings["num_steps"]
        lr_max = 2.0 * n / max(lam_max, 1e-300)
        if lr >= 0.95 * lr_max:
            new_lr = 0.9 * lr_max
            new_steps = None if steps is None else max(1, math.ceil(steps * lr / new_lr))
            self._warn_once(
                "stability",
                f"learning_rate={lr:g} exceeds the stability limit 2N/λ_max = {lr_max:.4g} of "
                f"gradient descent on the linearized network (common at the edge of stability); "
                f"replaying the same optimization time with lr={new_lr:.4g} for "
                f"{new_steps} steps instead.",
            )
            settings.update(
                learning_rate_given=lr,
                num_steps_given=steps,
                learning_rate=new_lr,
                num_steps=new_steps,
            )
            lr, steps = new_lr, new_steps
        method = self.method
        if method == "auto":
            if steps is None:
                method = "exact"
            else:
                kb = 1 if trace else k
                nk = n * kb
                rhs = k if trace else 1
                cost = nk**3 + steps * n * nk * kb**2 + n * steps**2 * kb**2 * rhs
                method = "exact" if cost <= self.exact_max_cost else "ridge"
        settings["method"] = method
        kwargs = dict(
            learning_rate=lr,
            num_steps=steps,
            noise_scale=self.noise_scale,
            method=method,
            progress=show,
        )
        try:
            return unique_information_from_kernels(
                theta, theta_val, f0, y, weight_decay=settings["weight_decay"], **kwargs
            )
        except ValueError as err:
            if (
                steps is not None
                or settings["weight_decay"] > 0
                or "positive definite" not in str(err)
            ):
                raise
        # converged solution of a singular kernel: add a tiny ridge (relative 1e-8 of λ_max)
        jitter = 1e-8 * lam_max / n
        self._warn_once(
            "jitter",
            "the kernel is numerically singular, so the converged (num_steps=None) solution is "
            f"not unique; adding weight_decay={jitter:.3g} (1e-8 λ_max / N) to make it so.",
        )
        settings["weight_decay"] = jitter
        return unique_information_from_kernels(
            theta, theta_val, f0, y, weight_decay=jitter, **kwargs
        )

    # ------------------------------------------------------------------------------------------
    # reports (rank 0)
    # ------------------------------------------------------------------------------------------
    def _output_dir(self, trainer: pl.Trainer | None) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        if trainer is not None:
            log_dir = trainer.log_dir
            return Path(log_dir if log_dir is not None else trainer.default_root_dir)
        return Path.cwd()

    def _write(
        self, trainer: pl.Trainer | None, out_dir: Path, x: Tensor, scores: SUIScores
    ) -> None:
        self.csv_path_ = write_csv_atomic(out_dir / self.filename, scores.columns())
        writers = tensorboard_writers(trainer) if trainer is not None else []
        if not writers:
            return
        step = int(trainer.global_step) if trainer is not None else 0
        values = {"sui/weight_si": scores.weight_si}
        if bool(torch.isfinite(scores.functional_si).any()):
            values["sui/functional_si"] = scores.functional_si
        values.update(
            {f"{tag}_log10": v.clamp_min(1e-300).log10() for tag, v in list(values.items())}
        )
        log_histograms(writers, values, step=step)
        if self.top_k == 0:
            return
        top = torch.argsort(scores.weight_si, descending=True, stable=True)[: self.top_k]
        rows = [
            (
                r + 1,
                int(scores.indices[i]),
                scores.labels[i].item(),
                int(scores.predicted[i]),
                float(scores.weight_si[i]),
                float(scores.functional_si[i]),
            )
            for r, i in enumerate(top.tolist())
        ]
        header = ["rank", "index", "label", "predicted", "weight SI (nats)", "functional SI (nats)"]
        log_text_table(writers, "sui/top_k", header, rows, step=step)
        is_image = (
            self.image_shape is not None or (x.ndim == 4 and x.shape[1] in (1, 3)) or x.ndim == 3
        )
        if is_image:
            bottom = torch.argsort(scores.weight_si, descending=False, stable=True)[: self.top_k]
            shape = self.image_shape
            log_image_grid(writers, "sui/most_informative", x[top], step=step, image_shape=shape)
            log_image_grid(
                writers, "sui/least_informative", x[bottom], step=step, image_shape=shape
            )


def _kernel(phi_a: Tensor, phi_b: Tensor, kernel: str) -> Tensor:
    """NTK block from (N, K, d) features, accumulated in float64 (as ``empirical_ntk`` does)."""
    a, b = phi_a.double(), phi_b.double()
    if kernel == "trace":
        return a.flatten(1) @ b.flatten(1).T
    return a.flatten(0, 1) @ b.flatten(0, 1).T
