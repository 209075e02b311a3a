"""The scoring stage of the SUI callback: kernels at the linearization point, plan and solve.

One function, :func:`solve`, called by
:meth:`~lightning_info.callbacks.sui.SmoothUniqueInformation.score` with the module's parameters
already set to the linearization point: it picks the NTK, turns the training recipe into the
replayed run (:meth:`~lightning_info.callbacks._sui_recipe.TrainingRecipe.replay`), builds the
kernels (on every rank's shard under DDP, :mod:`~lightning_info.callbacks._sui_ddp`) and runs
:func:`~lightning_info.functional.sui.unique_information_with_plan` (on rank 0 under DDP), with
the progress display of :mod:`~lightning_info.callbacks._sui_progress`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from lightning_info.callbacks._sui_recipe import Horizon, TrainingRecipe, WeightDecay
from lightning_info.functional.jacobian import empirical_ntk, model_outputs
from lightning_info.functional.sui import UniqueInformation, unique_information_with_plan

__all__ = ["SolveOptions", "solve"]


@dataclass(frozen=True)
class SolveOptions:
    """The callback's solver options (validated by the callback; documented there)."""

    ntk: str
    full_ntk_max: int
    learning_rate: float | None
    weight_decay: WeightDecay
    num_steps: Horizon
    method: str
    replay_max_cost: float
    noise_scale: float
    params: Any
    projection_dim: int | None
    chunk_size: int | None
    batch_size: int
    seed: int

    def resolve_ntk(self, n: int, k: int) -> str:
        """``ntk="auto"``: the full kernel when N·K <= ``full_ntk_max`` or K = 1, else the trace.

        Returns:
            ``"full"`` or ``"trace"``.
        """
        if self.ntk != "auto":
            return self.ntk
        return "full" if n * k <= self.full_ntk_max or k == 1 else "trace"


def solve(
    pl_module: nn.Module,
    trainer: pl.Trainer | None,
    data: tuple[Tensor, Tensor, Tensor | None],
    recipe: TrainingRecipe,
    options: SolveOptions,
    output_fn: Callable[[Any], Tensor] | None,
    warn_once: Callable[[str, str], None],
) -> tuple[UniqueInformation, str]:
    """Kernels at the module's current (linearization) parameters, the plan, the solve.

    Args:
        pl_module: the module, its parameters set to the linearization point.
        trainer: the trainer (DDP) or None.
        data: ``(x, y, x_val)``: the scored inputs, their targets, the held-out inputs or None.
        recipe: the training run to replay.
        options: the callback's solver options.
        output_fn: maps the model's output to the (B, K) tensor to score.
        warn_once: ``(key, message)`` reporter for the plan's notes (rescale, jitter).

    Returns:
        ``(scores, ntk)``: the result (the same on every rank) and the NTK used.
    """
    x, y, x_val = data
    device = next(pl_module.parameters()).device
    with collective_stage(trainer):  # under DDP a failure here reaches every rank
        f0 = model_outputs(
            pl_module, x.to(device), chunk_size=options.batch_size, output_fn=output_fn
        )
        ntk = options.resolve_ntk(*f0.shape)
        lr, wd, steps = recipe.replay(
            learning_rate=options.learning_rate,
            weight_decay=options.weight_decay,
            num_steps=options.num_steps,
        )
    rank_zero_info(
        f"SmoothUniqueInformation: scoring {f0.shape[0]} samples "
        f"({0 if x_val is None else len(x_val)} held-out), lr={lr:g}, steps={steps}, wd={wd}, "
        f"ntk={ntk}."
    )
    jac_kw = dict(
        params=options.params,
        projection_dim=options.projection_dim,
        seed=options.seed,
        chunk_size=options.chunk_size,
        output_fn=output_fn,
    )

    def engine(theta: Tensor, theta_val: Tensor | None) -> UniqueInformation:
        info = unique_information_with_plan(
            theta,
            theta_val,
            f0,
            y.to(device),
            learning_rate=lr,
            num_steps=steps,
            weight_decay=wd,
            method=options.method,
            max_replay_cost=options.replay_max_cost,
            noise_scale=options.noise_scale,
        )
        for kind, message in info.plan.notes:
            warn_once(kind, message)
        return info

    distributed = is_distributed(trainer)
    progress = ScoringProgress(
        progress_enabled(trainer),
        expected_jacobian_samples(
            len(x),
            0 if x_val is None else len(x_val),
            getattr(trainer, "world_size", 1),
            distributed,
        ),
    )
    jac_kw["progress"] = progress.hook
    try:
        if distributed:
            phi, phi_val = gather_all_features(pl_module, trainer, x, x_val, jac_kw)
            # rank 0 forms the kernels and solves; its failure is broadcast to every rank
            return solve_on_rank_zero(
                trainer,
                lambda: _solved(engine, progress, kernels_of(phi, phi_val, ntk, progress.hook)),
            ), ntk
        theta, theta_val = _local_kernels(pl_module, x.to(device), x_val, ntk, jac_kw)
        with progress.solving():
            return engine(theta, theta_val), ntk
    finally:
        progress.close()


def _solved(
    engine: Callable[[Tensor, Tensor | None], UniqueInformation],
    progress: ScoringProgress,
    kernels: tuple[Tensor, Tensor | None],
) -> UniqueInformation:
    """``engine(*kernels)`` shown as the ``solve`` stage.

    Returns:
        The engine's result.
    """
    with progress.solving():
        return engine(*kernels)


def _local_kernels(
    model: nn.Module, x: Tensor, x_val: Tensor | None, ntk: str, jac_kw: dict[str, Any]
) -> tuple[Tensor, Tensor | None]:
    """The training NTK and the held-out/training NTK (None without held-out inputs).

    Returns:
        ``(theta, theta_val)``.
    """
    theta = empirical_ntk(model, x, ntk=ntk, **jac_kw)
    if x_val is None:
        return theta, None
    return theta, empirical_ntk(model, x_val.to(x.device), x, ntk=ntk, **jac_kw)
