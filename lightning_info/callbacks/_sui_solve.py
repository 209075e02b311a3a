"""The scoring stage of the SUI callback: where its Jacobians are built and its solve runs.

The pipeline itself (outputs at the linearization point, the replayed run resolved from the
training recipe, the kernels or features, the plan and the solve) is
:func:`~lightning_info.functional.sui.score_model`, the same code as
:func:`~lightning_info.functional.smooth_unique_information`. This module only gives it the
callback's :class:`~lightning_info.functional.sui.Linearization`: under DDP each rank computes
the Jacobian features of its shard and rank 0 forms the kernels and solves
(:mod:`~lightning_info.callbacks._sui_ddp`), with the progress display of
:mod:`~lightning_info.callbacks._sui_progress`, and every process-alone stage is a
``collective_stage``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_info.callbacks._sui_ddp import (
    collective_stage,
    gather_all_features,
    is_distributed,
    kernels_of,
    solve_on_rank_zero,
)
from lightning_info.callbacks._sui_progress import (
    ScoringProgress,
    expected_jacobian_samples,
    progress_enabled,
)
from lightning_info.functional.sui import (
    EngineCall,
    JacobianRequest,
    ScoringRun,
    SUIOptions,
    UniqueInformation,
    score_model,
)
from lightning_info.functional.training_recipe import TrainingRecipe

__all__ = ["CallbackLinearization", "solve"]


class CallbackLinearization:
    """The callback's :class:`~lightning_info.functional.sui.Linearization`: DDP and progress.

    Args:
        trainer: the trainer (its process group under DDP), or None.
        progress: the progress display.
    """

    def __init__(self, trainer: pl.Trainer | None, progress: ScoringProgress) -> None:
        self.trainer = trainer
        self.progress = progress

    def stage(self) -> AbstractContextManager[None]:
        """Under DDP, a failure of this stage on any rank is raised on every rank.

        Returns:
            The collective stage.
        """
        return collective_stage(self.trainer)

    def solve(self, request: JacobianRequest, solve: EngineCall) -> UniqueInformation:
        """Build locally, or shard the Jacobians and solve on rank 0 (result broadcast).

        Returns:
            ``solve``'s result, the same on every rank.
        """
        hook = self.progress.hook
        if not is_distributed(self.trainer):
            built = request.build_locally(progress=hook)
            with self.progress.solving():
                return solve(*built)
        jac_kw = {**request.jacobian_options, "progress": hook}
        x, x_val = request.inputs, request.heldout_inputs
        phi, phi_val = gather_all_features(request.model, self.trainer, x, x_val, jac_kw)

        def on_rank_zero() -> UniqueInformation:
            built = (phi, phi_val)
            if not request.features:
                built = kernels_of(phi, phi_val, request.ntk, hook)
            with self.progress.solving():
                return solve(*built)

        return solve_on_rank_zero(self.trainer, on_rank_zero)


def solve(
    pl_module: nn.Module,
    trainer: pl.Trainer | None,
    data: tuple[Tensor, Tensor, Tensor | None],
    recipe: TrainingRecipe,
    options: SUIOptions,
) -> tuple[UniqueInformation, ScoringRun]:
    """:func:`~lightning_info.functional.sui.score_model` with the callback's linearization.

    Args:
        pl_module: the module, its parameters set to the linearization point.
        trainer: the trainer (DDP, progress bar) or None.
        data: ``(x, y, x_val)``: the scored inputs, their targets, the held-out inputs or None.
        recipe: the training run to replay.
        options: the callback's options.

    Returns:
        ``(scores, run)``: the result (the same on every rank) and the resolved run.
    """
    x, y, x_val = data
    num_heldout = 0 if x_val is None else len(x_val)
    progress = ScoringProgress(
        progress_enabled(trainer),
        expected_jacobian_samples(
            len(x), num_heldout, getattr(trainer, "world_size", 1), is_distributed(trainer)
        ),
    )

    def announce(run: ScoringRun) -> None:
        rank_zero_info(
            f"SmoothUniqueInformation: scoring {run.num_samples} samples ({num_heldout} "
            f"held-out), lr={run.learning_rate:g}, steps={run.num_steps}, "
            f"wd={run.weight_decay}, ntk={run.ntk}."
        )

    try:
        return score_model(
            pl_module,
            x,
            y,
            x_val,
            options,
            recipe=recipe,
            linearization=CallbackLinearization(trainer, progress),
            announce=announce,
        )
    finally:
        progress.close()
