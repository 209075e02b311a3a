"""The SmoothUniqueInformation callback's result and its score file columns."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_info.functional.sui import UniqueInformation
from lightning_info.functional.training_recipe import TrainingRecipe
from lightning_info.reporting import rank_descending

__all__ = ["SUIScores"]


@dataclass(frozen=True, kw_only=True)
class SUIScores(UniqueInformation):
    """The callback's scores: :class:`~lightning_info.functional.UniqueInformation` of dataset rows.

    Every per-sample field is in dataset order (ascending ``indices``); ``functional_si`` and
    ``function_change_sq`` are None without held-out data (the CSV then leaves them empty).

    Attributes:
        indices: (N,) int64 dataset indices of the scored samples.
        labels: (N,) labels as stored in the dataset (argmax of multi-output targets).
        predicted: (N,) predicted labels of the final model (argmax of the outputs; for a single
            output ``output > 0.5``, the MSE-on-0/1 convention of the engine).
        recipe: the training recipe that was replayed.
        linearize_at: ``"init"`` or ``"final"``: the linearization point.
        ntk: ``"full"`` or ``"trace"``: the NTK used.
        num_heldout: held-out samples behind functional SI.
        projection_dim: projection dimension of the Jacobians, or None.
        noise_scale: smoothing noise scale σ.
        snapshot_step: global step of the weights linearized at (None: not known).
        weight_decay_rule: how the weight decay was chosen: ``"loo"`` (leave-one-out
            cross-validation of the converged run), ``"optimizer"`` (the training run's) or
            ``"given"`` (the ``weight_decay=`` number).
        horizon_rule: how the horizon was chosen: ``"auto"`` (from the training run),
            ``"given"`` (``num_steps=`` an int) or ``"converged"`` (asked for).
        training_loss: the training loss as declared (``loss=``) or detected
            (``"cross_entropy"``), or ``"unknown"``; the closed form assumes MSE in any case.
    """

    indices: Tensor
    labels: Tensor
    predicted: Tensor
    recipe: TrainingRecipe | None = None
    linearize_at: str = "init"
    ntk: str = "full"
    num_heldout: int = 0
    projection_dim: int | None = None
    noise_scale: float = 1.0
    snapshot_step: int | None = None
    weight_decay_rule: str = "optimizer"
    horizon_rule: str = "auto"
    training_loss: str = "unknown"

    def describe(self) -> list[str]:
        """The recipe behind the scores, in words: one sentence per line.

        Written as the score file's comment preamble and as the TensorBoard text ``sui/recipe``.

        Returns:
            The lines (linearization point, replayed run, weight decay, loss assumption and,
            for a converged solution at the initial weights, why the scores do not follow the
            training run and how to get scores that do).
        """
        recipe = self.recipe or TrainingRecipe()
        lines = [
            "Smooth unique information (Harutyunyan et al., ICLR 2021, arXiv:2101.06640) of each "
            "training sample, in nats: weight_si = how much the weights, functional_si = how much "
            "the held-out predictions depend on that sample (higher = more informative).",
            _linearization_line(self.linearize_at, self.snapshot_step),
            _run_line(self, recipe),
            _weight_decay_line(self),
            _loss_line(self.training_loss),
            f"Kernel: the {self.ntk} empirical NTK"
            + ("" if self.projection_dim is None else f", projected to {self.projection_dim} dims")
            + f"; {self.num_heldout} held-out samples; noise scale sigma = {self.noise_scale:g}.",
        ]
        plan = self.plan
        if plan is not None and plan.num_steps is None and self.linearize_at == "init":
            lines.append(_converged_at_init_line(recipe))
        return lines

    @property
    def settings(self) -> dict[str, Any]:
        """The replayed run as a flat dict (learning rate, steps, weight decay, ntk, ...)."""
        plan, recipe = self.plan, self.recipe or TrainingRecipe()
        out: dict[str, Any] = {
            "linearize_at": self.linearize_at,
            "ntk": self.ntk,
            "num_samples": len(self),
            "num_heldout": self.num_heldout,
            "projection_dim": self.projection_dim,
            "noise_scale": self.noise_scale,
            "optimizer": recipe.optimizer,
            "momentum": recipe.momentum,
        }
        if plan is not None:
            out.update(
                learning_rate=plan.learning_rate,
                num_steps=plan.num_steps,
                weight_decay=plan.weight_decay,
                method=plan.method,
            )
            if plan.rescaled:
                out.update(
                    learning_rate_given=plan.learning_rate_given,
                    num_steps_given=plan.num_steps_given,
                )
        return out

    def columns(self) -> dict[str, Tensor]:
        """Columns of the score file, in order (one row per scored sample).

        Returns:
            ``{name: (N,) tensor}``; missing functional SI is written as NaN.
        """
        nan = torch.full_like(self.weight_si, float("nan"))
        fsi = nan if self.functional_si is None else self.functional_si
        return {
            "index": self.indices,
            "label": self.labels,
            "predicted": self.predicted,
            "weight_si": self.weight_si,
            "functional_si": fsi,
            "weight_change_sq": self.weight_change_sq,
            "function_change_sq": nan
            if self.function_change_sq is None
            else self.function_change_sq,
            "loo_error": self.loo_error,
            "weight_si_rank": rank_descending(self.weight_si),
            "functional_si_rank": rank_descending(torch.nan_to_num(fsi, nan=-1.0)),
        }


@contextlib.contextmanager
def parameters_set_to(module: nn.Module, values: Mapping[str, Tensor] | None) -> Iterator[None]:
    """Temporarily copy ``values`` into the module's parameters and buffers; restore after.

    Buffers are BatchNorm's running statistics, for example; None is a no-op.
    """
    if values is None:
        yield
        return
    params = {**dict(module.named_buffers()), **dict(module.named_parameters())}
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


def _linearization_line(linearize_at: str, snapshot_step: int | None) -> str:
    if linearize_at == "init":
        at = "" if snapshot_step is None else f" (global step {snapshot_step})"
        return (
            f"Linearization point: the weights snapshotted at fit start{at}; the network is "
            "linearized there and its training is replayed in closed form."
        )
    return (
        "Linearization point: the final (current) weights; the network is linearized there and "
        "the training run is replayed from them in closed form."
    )


def _run_line(scores: SUIScores, recipe: TrainingRecipe) -> str:
    plan = scores.plan
    optimizer = recipe.optimizer or "unknown"
    trained = f"Training run: optimizer {optimizer}" + (
        f" with momentum {recipe.momentum:g}" if recipe.momentum else ""
    )
    if plan is None:
        return trained + "."
    lr = f"learning rate {plan.learning_rate:g}"
    if plan.rescaled:
        lr += f" (lowered from {plan.learning_rate_given:g} to the linearized stability limit)"
    if plan.num_steps is None:
        why = {
            "auto": f"the {optimizer} steps are not plain gradient-descent steps",
            "converged": "asked for (num_steps=None)",
        }.get(scores.horizon_rule, "asked for")
        return (
            f"{trained}. Replayed: the converged solution (t = infinity) of full-batch gradient "
            f"descent on the mean MSE loss of the linearized network ({why}; {lr})."
        )
    taken = (
        "the optimizer steps taken since the linearization point"
        if scores.linearize_at == "init"
        else "the optimizer steps of the whole training run"
    )
    since = {
        "auto": taken,
        "given": "num_steps= as given",
    }.get(scores.horizon_rule, "as asked")
    return (
        f"{trained}. Replayed: {plan.num_steps} steps of full-batch gradient descent on the mean "
        f"MSE loss of the linearized network ({since}; {lr}; "
        f"{'replayed exactly' if plan.method == 'replay' else 'by its ridge equivalent'})."
    )


def _weight_decay_line(scores: SUIScores) -> str:
    plan = scores.plan
    value = "unknown" if plan is None else f"{plan.weight_decay:g}"
    rule = {
        "loo": "chosen by leave-one-out cross-validation of the linearized converged run",
        "given": "as given (weight_decay=)",
        "optimizer": "the training optimizer's",
    }.get(scores.weight_decay_rule, scores.weight_decay_rule)
    return f"Weight decay (L2 pull toward the linearization point): {value}, {rule}."


def _loss_line(training_loss: str) -> str:
    base = (
        "Loss: the closed form assumes the mean squared error on the raw outputs with one-hot "
        "targets"
    )
    if training_loss == "cross_entropy":
        return (
            f"{base}; the training loss is cross-entropy, so the scores describe an MSE-trained "
            "linearized network."
        )
    if training_loss == "mse":
        return f"{base}; the training loss is MSE (as declared)."
    return (
        f"{base}, whatever loss trained the network (the training loss was not identified; "
        "only `hparams.loss` and loss submodules are inspected)."
    )


def _converged_at_init_line(recipe: TrainingRecipe) -> str:
    return (
        "The converged solution at the initial weights does not depend on how long the network "
        "trained (only the `predicted` column does): runs of different lengths from the same "
        "initialization get the same scores. For scores that follow the run, use "
        "linearize_at='final' (linearized at the trained weights)"
        + (
            " or train with plain SGD without momentum (its steps are replayed)."
            if not recipe.plain_gradient_descent
            else "."
        )
    )
