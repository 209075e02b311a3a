r"""The training recipe that smooth unique information replays, and the one rule that reads it.

A frozen :class:`TrainingRecipe` (optimizer, learning rate, weight decay, momentum, steps taken)
is read either from a live ``Trainer`` (the callback, at fit start and fit end; any object with
``optimizers``, ``global_step`` and ``lr_scheduler_configs``) or from a saved checkpoint
(``lightning-info score``). One function, :meth:`TrainingRecipe.replay`, resolves every sentinel
of the replayed run (``learning_rate`` None, ``num_steps`` ``"auto"`` / ``"converged"`` / None,
``weight_decay`` ``"auto"`` / ``"optimizer"`` / None / ``"loo"``) into the learning rate,
weight decay and horizon of the linearized gradient descent (``docs/sui.md`` §10); the
functional :func:`~lightning_info.functional.smooth_unique_information` uses it with an empty
recipe, so both entry points resolve the same way:

* plain SGD: its learning rate for the optimizer steps taken since the linearization point's
  snapshot (``global_step`` minus the snapshot's step);
* SGD with momentum and adaptive optimizers (Adam, AdamW, RMSprop, ...): their steps are not
  gradient-descent steps, so the converged solution (``num_steps=None``) is scored, with the
  weight decay chosen by leave-one-out cross-validation. Replaying a momentum run as GD at the
  heavy-ball rate :math:`lr/(1-\beta)` for its steps is still what an explicit ``num_steps=``
  gets; why it is not the default is measured in ``benchmarks/RESULTS.md`` sections 9-10.

Two numbers are computed later, where the kernel is known: ``"loo"`` becomes
:func:`~lightning_info.functional.loo_weight_decay` of the kernel, and a weight decay of 0 at
t = ∞ on a singular kernel becomes the jitter of
:func:`~lightning_info.functional.gd_plan.solve_planned`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lightning_info.utilities.checks import _check_int, _check_positive

__all__ = [
    "AUTO",
    "CONVERGED",
    "LOO",
    "OPTIMIZER",
    "Horizon",
    "TrainingRecipe",
    "WeightDecay",
    "check_horizon",
    "check_weight_decay",
]

#: ``num_steps`` sentinel: read the horizon from the training run (the default).
AUTO = "auto"
#: ``num_steps`` sentinel (same as None): the converged solution, t = ∞.
CONVERGED = "converged"
#: A horizon request: a step count, ``"auto"``, or ``"converged"`` / None.
Horizon = int | Literal["auto", "converged"] | None
#: ``weight_decay`` sentinel: the training run's optimizer's weight decay.
OPTIMIZER = "optimizer"
#: ``weight_decay`` sentinel: chosen by leave-one-out cross-validation of the converged run.
LOO = "loo"
#: A weight-decay request: a number, ``"auto"``, ``"loo"``, ``"optimizer"`` (None: the optimizer's).
WeightDecay = float | Literal["auto", "loo", "optimizer"] | None


@dataclass(frozen=True)
class TrainingRecipe:
    """What the training run did, as far as the closed form can replay it.

    Attributes:
        optimizer: class name of the first optimizer (None when unknown).
        learning_rate: lr of its first parameter group (None when unknown).
        weight_decay: its weight decay (0 when unknown).
        momentum: its momentum (0 for optimizers without one).
        nesterov: whether Nesterov momentum is on.
        steps_taken: optimizer steps since the snapshot of the linearization point.
        num_optimizers: number of optimizers.
        num_param_groups: parameter groups of the first optimizer.
        has_scheduler: whether a learning-rate scheduler is configured.
    """

    optimizer: str | None = None
    learning_rate: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.0
    nesterov: bool = False
    steps_taken: int = 0
    num_optimizers: int = 0
    num_param_groups: int = 0
    has_scheduler: bool = False

    @property
    def adaptive(self) -> bool:
        """Whether the optimizer is adaptive (anything but SGD): no gradient-descent horizon."""
        return self.optimizer is not None and self.optimizer != "SGD"

    @property
    def plain_gradient_descent(self) -> bool:
        """Whether the steps are plain gradient-descent steps (SGD without momentum)."""
        return not self.adaptive and self.momentum == 0 and not self.nesterov

    @staticmethod
    def from_trainer(trainer: Any, snapshot_step: int = 0) -> TrainingRecipe:
        """Read the recipe of a live trainer (its first optimizer's first parameter group).

        Args:
            trainer: a ``Trainer`` of either Lightning package.
            snapshot_step: ``global_step`` at the snapshot of the linearization point.

        Returns:
            The recipe; unknown fields keep their defaults.
        """
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        groups = [g for g in (optimizers[0].param_groups if optimizers else [])]
        return TrainingRecipe._from_group(
            type(optimizers[0]).__name__ if optimizers else None,
            groups,
            num_optimizers=len(optimizers),
            steps_taken=int(getattr(trainer, "global_step", 0)) - snapshot_step,
            has_scheduler=bool(getattr(trainer, "lr_scheduler_configs", None)),
        )

    @staticmethod
    def from_checkpoint(checkpoint: Mapping[str, Any], snapshot_step: int = 0) -> TrainingRecipe:
        """Read the recipe saved in a Lightning checkpoint (``optimizer_states``, ``global_step``).

        The optimizer class is not stored in a checkpoint; it is inferred from the keys of the
        first parameter group: ``dampening`` -> ``"SGD"``, ``betas`` -> ``"Adam"`` (the Adam
        family), anything else -> ``"adaptive"`` (RMSprop, Adagrad, ...).

        Args:
            checkpoint: the loaded checkpoint dictionary.
            snapshot_step: ``global_step`` at the snapshot of the linearization point.

        Returns:
            The recipe; unknown fields keep their defaults.
        """
        states = list(checkpoint.get("optimizer_states") or [])
        groups = list(states[0].get("param_groups") or []) if states else []
        name = None
        if groups:
            group = groups[0]
            name = "Adam" if "betas" in group else ("SGD" if "dampening" in group else "adaptive")
        return TrainingRecipe._from_group(
            name,
            groups,
            num_optimizers=len(states),
            steps_taken=int(checkpoint.get("global_step", 0)) - snapshot_step,
            has_scheduler=bool(checkpoint.get("lr_schedulers")),
        )

    @staticmethod
    def _from_group(
        name: str | None, groups: list[Mapping[str, Any]], **fields: Any
    ) -> TrainingRecipe:
        group = groups[0] if groups else {}
        lr = group.get("lr")
        return TrainingRecipe(
            optimizer=name,
            learning_rate=None if lr is None else float(lr),
            weight_decay=float(group.get("weight_decay", 0.0) or 0.0),
            momentum=float(group.get("momentum", 0.0) or 0.0),
            nesterov=bool(group.get("nesterov", False)),
            num_param_groups=len(groups),
            **fields,
        )

    def replay(
        self,
        *,
        learning_rate: float | None = None,
        weight_decay: WeightDecay = AUTO,
        num_steps: Horizon = AUTO,
    ) -> tuple[float, float | str, int | None]:
        """The learning rate, weight decay and horizon of the linearized run (module docstring).

        Args:
            learning_rate: overrides the recipe's (then no momentum correction is applied).
            weight_decay: a number (overrides the recipe's), ``"optimizer"`` (the recipe's),
                ``"loo"`` (chosen by leave-one-out cross-validation of the converged run,
                :func:`~lightning_info.functional.loo_weight_decay`) or ``"auto"``: ``"loo"``
                when the replayed run is the converged one, else ``"optimizer"``.
            num_steps: an int, ``"auto"`` (the rule above), or ``"converged"`` / None (t = ∞).

        Returns:
            ``(learning_rate, weight_decay, num_steps)``; ``num_steps`` None = converged, and at
            least 1 otherwise; ``weight_decay`` a number or ``"loo"``.

        Raises:
            ValueError: when no learning rate is known, or an unknown horizon or weight decay is
                given.
        """
        lr = learning_rate if learning_rate is not None else self.learning_rate
        if lr is None or not math.isfinite(lr) or lr <= 0:
            raise ValueError(
                "the learning rate could not be read from the training run's optimizer; pass "
                "`learning_rate=`."
            )
        if learning_rate is None and 0.0 < self.momentum < 1.0:
            lr = lr / (1.0 - self.momentum)  # heavy ball: the long-time dynamics of GD at lr/(1-β)
        steps = self._horizon(num_steps)
        weight_decay = check_weight_decay(weight_decay)
        if weight_decay == OPTIMIZER:
            return float(lr), self.weight_decay, steps
        if weight_decay == AUTO:
            return float(lr), (LOO if steps is None else self.weight_decay), steps
        return float(lr), weight_decay, steps

    def _horizon(self, num_steps: Horizon) -> int | None:
        steps = check_horizon(num_steps)
        if steps != AUTO:
            return steps
        if not self.plain_gradient_descent:
            return None  # momentum / adaptive steps are not GD steps: the converged solution
        return max(1, self.steps_taken)

    def assumption_notes(self) -> list[tuple[str, str]]:
        """``(key, message)`` for each way the recipe departs from the closed form's assumptions.

        Returns:
            The notes (empty for plain full-batch SGD with one parameter group).
        """
        notes = []
        if self.adaptive:
            notes.append(
                (
                    "optimizer",
                    f"the optimizer is {self.optimizer}, not plain SGD; the closed form assumes "
                    "gradient descent and adaptive steps have no GD horizon, so unless `num_steps=` is "
                    "given the converged linearized solution (num_steps=None) is scored; at the "
                    "initial weights (linearize_at='init') it does not depend on how long the "
                    "network trains (linearize_at='final' gives scores that follow the run). Scores "
                    "are still computed.",
                )
            )
        elif self.momentum > 0 or self.nesterov:
            lr = self.learning_rate or float("nan")
            notes.append(
                (
                    "momentum",
                    f"SGD uses momentum={self.momentum:g}; the closed form assumes plain gradient "
                    "descent, so unless `num_steps=` is given the converged linearized solution "
                    "(num_steps=None) is scored (at the initial weights it does not depend on how "
                    "long the network trains); with `num_steps=`, GD at the heavy-ball effective "
                    f"learning rate lr/(1-momentum) = {lr / max(1e-12, 1 - self.momentum):g} "
                    "unless `learning_rate=` is given. Scores are still computed.",
                )
            )
        if self.num_optimizers > 1 or self.num_param_groups > 1:
            notes.append(
                (
                    "groups",
                    "several optimizers or parameter groups; the learning rate and weight decay of the "
                    "first group of the first optimizer are used.",
                )
            )
        if self.has_scheduler:
            notes.append(
                (
                    "scheduler",
                    "a learning-rate scheduler is configured; the learning rate at fit start is used "
                    "for the whole horizon.",
                )
            )
        return notes


def check_weight_decay(weight_decay: Any) -> WeightDecay:
    """``"auto"``, ``"loo"``, ``"optimizer"`` (None: the same), or a number >= 0.

    Returns:
        The validated value.

    Raises:
        ValueError: for another string or a negative number.
    """
    if weight_decay is None or weight_decay == OPTIMIZER:
        return OPTIMIZER
    if weight_decay in (AUTO, LOO):
        return weight_decay
    if isinstance(weight_decay, str):
        raise ValueError(
            f"`weight_decay` must be a number >= 0, 'auto', 'loo' or 'optimizer'; got {weight_decay!r}."
        )
    return _check_positive(weight_decay, "weight_decay", allow_zero=True)


def check_horizon(num_steps: Any) -> Horizon:
    """``"auto"``, ``"converged"`` / None, or an int >= 1.

    Returns:
        ``AUTO``, None (converged) or the number of steps.

    Raises:
        ValueError: for another string.
    """  # noqa: DOC502 (the int check raises through _check_int)
    if num_steps == AUTO:
        return AUTO
    if num_steps is None or num_steps == CONVERGED:
        return None
    if isinstance(num_steps, str):
        raise ValueError(
            f"`num_steps` must be an int >= 1, 'auto' or 'converged' (or None); got {num_steps!r}."
        )
    return _check_int(num_steps, "num_steps", minimum=1)
