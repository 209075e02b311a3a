"""The SmoothUniqueInformation callback's result and its score file columns."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_info.callbacks._sui_recipe import TrainingRecipe
from lightning_info.functional.sui import UniqueInformation
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
