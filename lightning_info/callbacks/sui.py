r"""Score every training sample's smooth unique information when ``fit`` ends.

Harutyunyan, Achille, Paolini et al., *Estimating informativeness of samples with Smooth Unique
Information*, ICLR 2021, arXiv:2101.06640. This module is state, hooks and reports; the scoring
itself is the pipeline of :func:`~lightning_info.functional.smooth_unique_information`
(:func:`lightning_info.functional.sui.score_model`). Each stage has its own home: the training
recipe (:mod:`lightning_info.functional.training_recipe`), the model checks
(:mod:`~lightning_info.callbacks._sui_recipe`), the samples
(:mod:`~lightning_info.callbacks._sui_data`), the linearization and kernels
(:mod:`lightning_info.functional.jacobian`), the replayed run
(:mod:`lightning_info.functional.gd_plan`), the solve (:mod:`lightning_info.functional.sui`, with
the callback's DDP-sharded Jacobians from :mod:`~lightning_info.callbacks._sui_solve` and
:mod:`~lightning_info.callbacks._sui_ddp`) and the reports (:mod:`lightning_info.reporting`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_info.callbacks._sui_data import ScoringData, label_vector
from lightning_info.callbacks._sui_ddp import collective_stage
from lightning_info.callbacks._sui_recipe import augmentation_note, model_notes, training_loss
from lightning_info.callbacks._sui_results import SUIScores, parameters_set_to
from lightning_info.callbacks._sui_solve import solve
from lightning_info.functional.gd_plan import DEFAULT_MAX_REPLAY_COST
from lightning_info.functional.jacobian import model_outputs
from lightning_info.functional.sui import SUIOptions, UniqueInformation
from lightning_info.functional.training_recipe import AUTO, Horizon, TrainingRecipe, WeightDecay
from lightning_info.reporting import (
    tensorboard_writers,
    write_csv_atomic,
    write_sui_summaries,
)
from lightning_info.utilities.batch import default_input_fn, default_target_fn
from lightning_info.utilities.checks import (
    _check_choice,
    _check_filename,
    _check_image_shape,
    _check_int,
)
from lightning_info.utilities.compat import Callback, callback_state_key
from lightning_info.utilities.enums import SUIMethod
from lightning_info.utilities.rng import preserved_global_rng

__all__ = ["SUIScores", "SmoothUniqueInformation"]

LinearizeAt = Literal["init", "final"]


class SmoothUniqueInformation(Callback):
    r"""Score every training sample by its smooth unique information when ``fit`` ends.

    Harutyunyan et al. (ICLR 2021, arXiv:2101.06640): the network is linearized at :math:`w_0`
    and trained in closed form by full-batch gradient descent on the mean MSE loss; leaving
    sample :math:`i` out changes the weights and the held-out predictions (``docs/sui.md``):

    .. math::

        \mathrm{SI}_i = \frac{\lVert w_S - w_{S\setminus i} \rVert^2}{2\sigma^2}, \qquad
        \text{F-SI}_i = \frac{1}{2\sigma^2}\,\mathrm{mean}_{x \in X_\mathrm{val}}
            \lVert f_S(x) - f_{S\setminus i}(x) \rVert^2 \quad\text{(nats; higher = more informative).}

    **Linearization point** (``linearize_at``): ``"init"`` (default) linearizes at the weights
    snapshotted in ``on_fit_start`` and replays the training run (the paper's setting);
    ``"final"`` linearizes at the trained weights, where the residuals of fitted (e.g.
    mislabeled) samples vanish (measured in ``benchmarks/RESULTS.md`` section 10). The snapshot
    is kept in the checkpoint state, so resuming keeps the true initial weights.

    **Training run replayed** (``docs/sui.md`` §10): the learning rate and weight decay of the
    first optimizer's first group, read at fit start; plain SGD replays the optimizer steps taken
    since the snapshot; SGD with momentum and adaptive optimizers (Adam, ...) score the converged
    solution (an explicit ``num_steps=`` replays GD for that many steps, for momentum
    :math:`\beta` at the heavy-ball rate :math:`lr/(1-\beta)`). The weight decay
    (``weight_decay="auto"``): for the converged solution, the one that minimizes the exact
    leave-one-out error of the linearized run
    (:func:`~lightning_info.functional.loo_weight_decay`): without it (Adam's weight decay, 0)
    the converged run interpolates every label and flipped ones hide in the kernel's small
    eigendirections; for a replayed plain-SGD horizon the optimizer's, since the horizon already
    regularizes (early-stopped GD behaves like ridge). Why momentum runs score the converged
    solution rather than a heavy-ball replay, and the measurements behind each default:
    ``benchmarks/RESULTS.md`` sections 9 and 10. A learning rate beyond the
    linearized stability limit, and singular kernels, are handled by
    :func:`~lightning_info.functional.gd_plan.plan_gradient_descent`.
    Departures from the closed form's assumptions (non-SGD optimizers, a cross-entropy loss when
    detected, BatchNorm, augmentation) are warned about once; the scores are still computed, as
    in the paper. The recipe used (linearization point, converged or replayed and for how many
    steps, weight decay and its rule, the MSE assumption) is stated in words in the score file's
    ``# `` preamble and the TensorBoard text ``sui/recipe`` (:meth:`SUIScores.describe`).

    **Samples**: the training dataset (or ``dataset=``) through a sequential loader with the
    same ``collate_fn``, a seeded subset of at most ``max_samples``, in dataset order; F-SI
    averages over at most ``max_heldout`` validation samples (NaN-free None without them).
    ``ntk="auto"`` uses the full NK x NK kernel when N·K <= ``full_ntk_max`` (or K = 1),
    else the trace kernel (the full kernel costs K^3 more to solve).
    The algebra always runs in the N·K sample space (``space="kernel"`` of
    :func:`~lightning_info.functional.smooth_unique_information`, the same pipeline): the default
    weight decay of a converged run (``"loo"``) is chosen on the N·K kernel's eigendecomposition,
    and under DDP rank 0 holds every sample's features anyway, so the d-dimensional feature
    space would save little here.

    **Progress**: while scoring, rank 0 shows a ``tqdm`` bar on stderr with the stage
    (Jacobians, kernel, solve) and an ETA when the trainer's progress bar is enabled
    (``trainer.progress_bar_callback is not None``), and nothing otherwise.

    **Distributed**: each rank computes the Jacobian features of its shard, rank 0 solves, every
    rank ends with the same ``scores_``; only rank 0 writes files and summaries.

    Outputs: ``scores_`` (:class:`SUIScores`); ``<log_dir>/sui_scores.csv`` (one row per scored
    sample, written atomically; a re-run replaces it); TensorBoard histograms, a top-k table and
    image grids under ``sui/`` (:func:`~lightning_info.reporting.write_sui_summaries`). Nothing is
    logged through ``pl_module.log`` (Lightning forbids it in ``on_fit_end``). A failure at fit
    end is reported as a warning: a failure to score leaves ``scores_`` None (call :meth:`score`
    to retry; it raises), a failure to write the reports (an unwritable folder) keeps the
    computed ``scores_``; a finished training run is never turned into an error.

    Args:
        linearize_at: ``"init"`` (weights at fit start) or ``"final"`` (weights at fit end).
        dataset: dataset to score instead of the training loader's dataset.
        val_dataset: held-out dataset for F-SI instead of the trainer's validation loader's.
        max_samples: cap on the number of scored training samples (seeded subset); None = all.
        max_heldout: cap on the number of held-out samples for F-SI; None = all.
        learning_rate: lr of the closed-form GD (default: read from the optimizer).
        weight_decay: ``"auto"`` (default: for a converged replay, i.e. Adam and other adaptive
            optimizers, chosen by leave-one-out cross-validation of the linearized run; for a
            replayed SGD horizon, the optimizer's), ``"loo"``, ``"optimizer"``, or a number.
        num_steps: GD steps: ``"auto"`` (default, the rule above), an int, or ``"converged"``
            / None for the converged solution.
        noise_scale: σ of the smoothing noise (only rescales the scores).
        ntk: which NTK, ``"auto"``, ``"full"`` or ``"trace"``.
        method: ``"auto"`` (the finite horizon replayed exactly when its estimated cost is at
            most ``replay_max_cost`` flops, else the ridge equivalent), ``"replay"`` or
            ``"ridge"``.
        params: which parameters to linearize (None = all trainable; a prefix or list of names).
        projection_dim: random-projection dimension of the Jacobians (None = exact kernel).
        projection: the random projection: ``"gaussian"`` (default), ``"rademacher"`` or
            ``"kronecker"`` (each ``nn.Conv2d`` / ``nn.Linear`` weight projected with A ⊗ B,
            never forming its per-sample Jacobian block: the choice for ResNet-sized networks;
            noisier at the same ``projection_dim``, ``benchmarks/RESULTS.md`` section 11.1).
        chunk_size: samples per Jacobian ``vmap`` call.
        loss: the training loss, for the reports and the assumption warning: ``"auto"``
            (best-effort: read from ``hparams.loss`` or a loss submodule; a loss computed with
            ``F.cross_entropy`` in ``training_step`` is not detected), ``"mse"`` or
            ``"cross_entropy"``. The scores always assume MSE, as the reports say.
        input_fn: extracts the inputs from a batch (default: ``batch[0]`` / common dict keys).
        target_fn: extracts the targets from a batch (default: ``batch[1]`` / common dict keys).
        output_fn: maps the model's output to the (B, K) tensor to score (default: the output
            itself, a tuple's first element, or a dict's ``logits``, with a notice).
        batch_size: batch size of the scoring pass.
        full_ntk_max: largest N·K for which ``ntk="auto"`` uses the full NTK.
        replay_max_cost: flop budget of the finite-horizon replay under ``method="auto"``.
        seed: seed of the subsets and the projection (identical on every rank).
        dirpath: directory of the score file (default: ``trainer.log_dir``).
        filename: name of the score file.
        top_k: rows of the TensorBoard text table and images per grid.
        image_shape: shape of one image for flat inputs, e.g. ``(8, 8)``, to log image grids.

    Raises:
        ValueError: invalid options (at construction), or, at fit start, a scoring dataset or
            model output that cannot be used (naming the argument to pass).
        TypeError: options of the wrong type.

    Example:
        >>> import pytorch_lightning as pl, torch
        >>> from lightning_info.models import MLPClassifier
        >>> from lightning_info.utilities.data import make_loader
        >>> _ = torch.manual_seed(0)
        >>> x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
        >>> model = MLPClassifier(5, 3, hidden=(8,), loss="mse", optimizer="sgd", lr=0.1)
        >>> sui = SmoothUniqueInformation()
        >>> trainer = pl.Trainer(max_epochs=2, callbacks=[sui], logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        ...     default_root_dir=__import__("tempfile").mkdtemp())
        >>> trainer.fit(model, make_loader(x, y, batch_size=10))
        >>> len(sui.scores_), sui.scores_.settings["num_steps"], sui.scores_.settings["ntk"]
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
        weight_decay: WeightDecay = AUTO,
        num_steps: Horizon = AUTO,
        noise_scale: float = 1.0,
        ntk: Literal["auto", "full", "trace"] | str = "auto",
        method: SUIMethod | str = "auto",
        params: str | Sequence[str] | None = None,
        projection_dim: int | None = None,
        projection: Literal["gaussian", "rademacher", "kronecker"] | str = "gaussian",
        chunk_size: int | None = None,
        loss: Literal["auto", "mse", "cross_entropy"] | str = "auto",
        input_fn: Callable[[Any], Tensor] | None = None,
        target_fn: Callable[[Any], Tensor] | None = None,
        output_fn: Callable[[Any], Tensor] | None = None,
        batch_size: int = 256,
        full_ntk_max: int = 2000,
        replay_max_cost: float = DEFAULT_MAX_REPLAY_COST,
        seed: int = 0,
        dirpath: str | os.PathLike[str] | None = None,
        filename: str = "sui_scores.csv",
        top_k: int = 16,
        image_shape: Sequence[int] | None = None,
    ) -> None:
        """Validate the options (documented in the class docstring); nothing is read yet."""
        super().__init__()
        self.linearize_at = _check_choice(linearize_at, "linearize_at", ("init", "final"))
        self.batch_size = int(_check_int(batch_size, "batch_size", minimum=1))
        self.options = SUIOptions(
            learning_rate=learning_rate,
            num_steps=num_steps,
            weight_decay=weight_decay,
            method=method,
            noise_scale=noise_scale,
            replay_max_cost=replay_max_cost,
            ntk=ntk,
            full_ntk_max=full_ntk_max,
            space="kernel",  # see the class docstring: the weight-decay rule needs the kernel
            params=params,
            projection_dim=projection_dim,
            projection=projection,
            seed=seed,
            chunk_size=chunk_size,
            output_batch_size=self.batch_size,
        ).validated()
        self._set_reports(dirpath, filename, top_k, image_shape)
        self.loss = _check_choice(loss, "loss", ("auto", "mse", "cross_entropy"))
        self.output_fn = output_fn
        self.seed = int(_check_int(seed, "seed"))
        self.data = ScoringData(
            dataset=dataset,
            val_dataset=val_dataset,
            max_samples=_check_int(max_samples, "max_samples", minimum=2, allow_none=True),
            max_heldout=_check_int(max_heldout, "max_heldout", minimum=1, allow_none=True),
            seed=self.seed,
            batch_size=self.batch_size,
            input_fn=input_fn or default_input_fn,
            target_fn=target_fn or default_target_fn,
        )
        self._init_fit_state()

    def _set_reports(
        self,
        dirpath: str | os.PathLike[str] | None,
        filename: str,
        top_k: int,
        image_shape: Sequence[int] | None,
    ) -> None:
        """Where the score file goes and what the summaries show."""
        self.dirpath = dirpath
        self.filename = _check_filename(filename)
        self.top_k = int(_check_int(top_k, "top_k", minimum=0))
        self.image_shape = _check_image_shape(image_shape)

    def _init_fit_state(self) -> None:
        """The state filled by the hooks: the snapshot, the recipe, the scores."""
        self.scores_: SUIScores | None = None
        self.csv_path_: Path | None = None
        self._scored_inputs: Tensor | None = None
        self._init_params: dict[str, Tensor] | None = None
        self._init_step = 0
        self._restored = False
        self._step_pending = False
        self._recipe = TrainingRecipe()
        self._output_fn = self.output_fn
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------ state
    @property
    def max_samples(self) -> int | None:
        """Cap on the number of scored training samples."""
        return self.data.max_samples

    @property
    def max_heldout(self) -> int | None:
        """Cap on the number of held-out samples."""
        return self.data.max_heldout

    @property
    def dataset(self) -> Dataset | None:
        """The dataset to score instead of the trainer's (None: the trainer's)."""
        return self.data.dataset

    @property
    def val_dataset(self) -> Dataset | None:
        """The held-out dataset instead of the trainer's (None: the trainer's)."""
        return self.data.val_dataset

    @property
    @override
    def state_key(self) -> str:
        """Key of this callback's checkpoint state (depends on the linearization point)."""
        return callback_state_key(self, linearize_at=self.linearize_at, filename=self.filename)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Forget the previous fit's results, so a failed fit never shows another fit's scores."""
        if stage == "fit":
            self.scores_ = None
            self.csv_path_ = None

    @override
    def state_dict(self) -> dict[str, Any]:
        """The initial-weight snapshot and its step, so that a resumed run keeps them.

        Returns:
            ``{"init_params": {name: tensor} or None, "init_step": int}``.
        """
        return {"init_params": self._init_params, "init_step": self._init_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the snapshot taken in the original run's ``on_fit_start``."""
        self._init_params = state_dict.get("init_params")
        self._init_step = int(state_dict.get("init_step", 0))
        self._restored = self._init_params is not None

    @staticmethod
    def snapshot_from_checkpoint(
        checkpoint: Mapping[str, Any],
    ) -> tuple[dict[str, Tensor] | None, int]:
        """The initial-weight snapshot a checkpoint holds for this callback, if any.

        Args:
            checkpoint: a loaded Lightning checkpoint.

        Returns:
            ``(parameters or None, global step of the snapshot)``.
        """
        for key, state in (checkpoint.get("callbacks") or {}).items():
            name = key if isinstance(key, str) else getattr(key, "__name__", "")
            ours = name.split("{")[0] == SmoothUniqueInformation.__name__
            if ours and isinstance(state, dict) and state.get("init_params"):
                return state["init_params"], int(state.get("init_step", 0))
        return None, 0

    # ------------------------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Snapshot the weights, read the training recipe and check the scoring data."""
        self._step_pending = self.linearize_at == "init" and not self._restored
        if self._step_pending:
            # the buffers too: a BatchNorm network is linearized with its running statistics
            # of fit start, not with the ones its training ends with
            self._init_params = {
                n: p.detach().to("cpu", copy=True)
                for n, p in (*pl_module.named_buffers(), *pl_module.named_parameters())
            }
            # a resumed run's loop state (its global step) is restored only after this hook:
            # the snapshot's step is read again in `on_train_start`, before the first step
            self._init_step = int(trainer.global_step)
        self._restored = False
        self._recipe = TrainingRecipe.from_trainer(trainer)
        notes = model_notes(pl_module, self.loss, self.data.dataset)
        for key, message in self._recipe.assumption_notes() + notes:
            self._warn_once(key, message)
        with preserved_global_rng():  # reading samples must not shift the run's random stream
            self._output_fn = self.data.check(self.data.dataset, None, pl_module, self.output_fn)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the snapshot's step; check the trainer's training data (known only now)."""
        if self._step_pending:  # resumed: the step of the weights snapshotted at fit start
            self._init_step = int(trainer.global_step)
            self._step_pending = False
        if self.data.dataset is not None:
            return
        with preserved_global_rng():
            dataset, collate = self.data.train_source(trainer)
            note = augmentation_note(
                dataset, "the training dataset", "an un-augmented copy as `dataset=`"
            )
            if note is not None:
                self._warn_once(*note)
            self._output_fn = self.data.check(dataset, collate, pl_module, self._output_fn)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score the training samples and write the reports (a failure only warns).

        A failure to score leaves ``scores_`` None; a failure to write the reports (an output
        folder that is not writable, a full disk) keeps the computed ``scores_``.
        """
        if self._step_pending:  # no training started (e.g. resumed at max_steps): no steps taken
            self._init_step = int(trainer.global_step)
            self._step_pending = False
        try:
            with preserved_global_rng():  # a later fit/test of the user sees the same stream
                self.score(pl_module, trainer=trainer, write=False)
        except Exception as err:  # the model is trained: report, do not fail the whole run
            rank_zero_warn(
                f"SmoothUniqueInformation: scoring at fit end failed, `scores_` is None "
                f"({type(err).__name__}: {err}). Call `.score(...)` to retry with other settings.",
                category=UserWarning,
            )
            self.scores_ = None
            return
        try:
            self._write(trainer, self._scored_inputs)
        except Exception as err:  # nothing computed is lost: the scores stay in memory
            warnings.warn(  # the writing rank's own failure (rank 0 writes)
                f"SmoothUniqueInformation: writing the reports failed ({type(err).__name__}: "
                f"{err}); the scores are kept in `scores_` (`scores_.columns()` holds the CSV "
                "columns). Pass `dirpath=` to write them elsewhere.",
                UserWarning,
                stacklevel=2,
            )
        finally:
            self._scored_inputs = None

    # ------------------------------------------------------------------------------ scoring
    def score(
        self,
        pl_module: pl.LightningModule,
        dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        *,
        trainer: pl.Trainer | None = None,
        init_state: Mapping[str, Tensor] | None = None,
        recipe: TrainingRecipe | None = None,
        write: bool = True,
    ) -> SUIScores:
        """Score the training samples now (called by ``on_fit_end``; usable outside fit).

        Args:
            pl_module: the (trained) module; its parameters are restored after scoring.
            dataset: dataset to score (default: the constructor's or the trainer's).
            val_dataset: held-out dataset for F-SI (default: the constructor's or the trainer's).
            trainer: the trainer: loaders, optimizer steps, loggers, DDP.
            init_state: the initial weights (name -> tensor) for ``linearize_at="init"`` outside
                fit (default: the fit-start snapshot).
            recipe: the training recipe (default: the one read at fit start, with the steps
                taken since the snapshot).
            write: write the CSV and logger summaries (rank 0 only).

        Returns:
            The :class:`SUIScores`, also stored in ``scores_``.

        Raises:
            ValueError: no dataset to score, or a training recipe without a learning rate.
            RuntimeError: under DDP, when scoring failed on any rank (a ``RankFailure`` naming
                the failing rank and its message, raised on every rank).
        """  # noqa: DOC502 (the DDP errors are raised by the collective stages; the contract)
        with collective_stage(trainer):  # under DDP a failure here reaches every rank
            positions, x, y, x_val = self._read_samples(pl_module, trainer, dataset, val_dataset)
            recipe = recipe if recipe is not None else self._fit_recipe(trainer)
            init, linearize_at = self._linearization_point(init_state)
            predicted = self._predictions(pl_module, x)
        options = dataclasses.replace(self.options, output_fn=self._output_fn)
        with parameters_set_to(pl_module, init):
            info, run = solve(pl_module, trainer, (x, y, x_val), recipe, options)
        for kind, message in info.plan.notes if info.plan is not None else ():
            self._warn_once(kind, message)
        self.scores_ = SUIScores(
            **{f.name: getattr(info, f.name) for f in dataclasses.fields(UniqueInformation)},
            indices=positions.long(),
            labels=label_vector(y),
            predicted=predicted,
            recipe=recipe,
            linearize_at=linearize_at,
            ntk=run.ntk,
            num_heldout=0 if x_val is None else int(x_val.shape[0]),
            projection_dim=self.options.projection_dim,
            noise_scale=self.options.noise_scale,
            snapshot_step=self._snapshot_step(trainer, linearize_at, init_state),
            weight_decay_rule=self.options.weight_decay_rule(
                info.plan is not None and info.plan.num_steps is None
            ),
            horizon_rule=self.options.horizon_rule(),
            training_loss=training_loss(pl_module, self.loss),
        )
        self._scored_inputs = x
        if write:
            self._write(trainer, x)
        return self.scores_

    def _read_samples(
        self,
        pl_module: pl.LightningModule,
        trainer: pl.Trainer | None,
        dataset: Dataset | None,
        val_dataset: Dataset | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``(positions, inputs, targets, held-out inputs or None)`` of the samples to score.

        Returns:
            The dataset positions, inputs and targets of the scored samples, and the held-out
            inputs.

        Raises:
            ValueError: when there is no dataset to score.
        """
        train_ds, collate = self.data.train_source(trainer, dataset)
        if train_ds is None:
            raise ValueError(
                "no dataset to score: pass `dataset=` (to the callback or to `score`) or call it "
                "with a trainer that has a training DataLoader."
            )
        if self._output_fn is None:  # outside fit: settle the output (and check the data) now
            self._output_fn = self.data.check(train_ds, collate, pl_module, self.output_fn)
        positions, x, y = self.data.training_samples(train_ds, collate)
        x_val = self.data.heldout_inputs(*self.data.val_source(trainer, val_dataset))
        return positions, x, y, x_val

    def _fit_recipe(self, trainer: pl.Trainer | None) -> TrainingRecipe:
        if trainer is None:
            return self._recipe
        steps = int(trainer.global_step) - (self._init_step if self.linearize_at == "init" else 0)
        if steps < 1 and self.options.num_steps == AUTO and not self._recipe.adaptive:
            self._warn_once(
                "steps",
                f"no optimizer step was taken (global_step={trainer.global_step}); scoring with "
                "num_steps=1.",
            )
        return dataclasses.replace(self._recipe, steps_taken=steps)

    def _snapshot_step(
        self, trainer: pl.Trainer | None, linearize_at: str, init_state: Mapping | None
    ) -> int | None:
        if linearize_at == "init":
            return None if init_state is not None else self._init_step
        return None if trainer is None else int(trainer.global_step)

    def _linearization_point(
        self, init_state: Mapping[str, Tensor] | None
    ) -> tuple[Mapping[str, Tensor] | None, str]:
        init = init_state if init_state is not None else self._init_params
        if self.linearize_at == "final":
            return None, "final"
        if init is None:
            self._warn_once(
                "no_init",
                "linearize_at='init' but no initial weights are known (scoring outside fit "
                "without `init_state=`); linearizing at the current weights instead.",
            )
            return None, "final"
        return init, "init"

    def _predictions(self, pl_module: nn.Module, x: Tensor) -> Tensor:
        device = next(pl_module.parameters()).device
        with torch.no_grad():
            out = model_outputs(
                pl_module, x.to(device), chunk_size=self.batch_size, output_fn=self._output_fn
            ).cpu()
        return (out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0.5)).long()

    # ------------------------------------------------------------------------------ reports
    def _write(self, trainer: pl.Trainer | None, x: Tensor) -> None:
        out_dir = self._output_dir(trainer)  # on every rank: `trainer.log_dir` is a collective
        if trainer is not None and not trainer.is_global_zero:
            return
        self.csv_path_ = write_csv_atomic(
            out_dir / self.filename, self.scores_.columns(), preamble=self.scores_.describe()
        )
        writers = tensorboard_writers(trainer) if trainer is not None else []
        write_sui_summaries(
            writers,
            self.scores_,
            x,
            step=int(trainer.global_step) if trainer is not None else 0,
            top_k=self.top_k,
            image_shape=self.image_shape,
        )

    def _output_dir(self, trainer: pl.Trainer | None) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        if trainer is not None:
            log_dir = trainer.log_dir
            return Path(log_dir if log_dir is not None else trainer.default_root_dir)
        return Path.cwd()

    # ------------------------------------------------------------------------------ notes
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(f"SmoothUniqueInformation: {message}", category=UserWarning)
