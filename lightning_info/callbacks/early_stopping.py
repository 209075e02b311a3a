r"""Stop a run once it has passed its best held-out epoch, and keep that epoch's weights.

Fed by :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor` (held-out DSMI) and,
when the module logs it, a validation metric. The decision is a small replayable rule,
:class:`StopRule`, that ``benchmarks/overfitting.py`` replays on recorded curves to measure it
against ``EarlyStopping`` with a best-checkpoint restore (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_info.utilities.checks import _check_int, _check_positive
from lightning_info.utilities.compat import EarlyStopping

__all__ = ["OverfittingEarlyStopping", "StopRule"]

#: Validation metrics tried, in order, by ``score_monitor="auto"`` (name, mode).
SCORE_KEYS: tuple[tuple[str, str], ...] = (
    ("val_acc", "max"),
    ("val_accuracy", "max"),
    ("val/acc", "max"),
    ("val/accuracy", "max"),
    ("valid_acc", "max"),
    ("val_loss", "min"),
    ("val/loss", "min"),
    ("valid_loss", "min"),
)


@dataclass
class StopRule:
    r"""The decision of :class:`OverfittingEarlyStopping`, one evaluation at a time.

    Each evaluation brings a held-out *score* (a validation metric, oriented so that higher is
    better; or None) and an *information* value :math:`I_k` (held-out DSMI). The score that
    picks the best epoch is the validation metric when there is one, else :math:`I_k`.

    * **best epoch**: the first evaluation with the highest score (``min_delta`` = 0: any gain);
    * **patience stop**: ``patience`` evaluations in a row without a new best;
    * **memorization stop**: :math:`I_k < (1 - \text{info\_drop}) \max_{j \le k} I_j` for
      ``info_patience`` evaluations in a row: the held-out representation has lost a fraction
      ``info_drop`` of the label information it once had, which is what memorizing noisy labels
      does (a clean run keeps it).

    Args:
        patience: evaluations without a new best score before stopping, >= 1.
        info_drop: relative DSMI drop from its running maximum that counts as memorization, in
            (0, 1), or None to disable the memorization stop.
        info_patience: consecutive evaluations below that level before stopping, >= 1.

    Example:
        >>> rule = StopRule(patience=3, info_drop=0.2, info_patience=2)
        >>> for epoch, (acc, dsmi) in enumerate([(0.8, 1.0), (0.9, 1.2), (0.85, 0.9), (0.84, 0.8)]):
        ...     stop, best = rule.update(epoch, acc, dsmi)
        >>> stop, rule.best_epoch, rule.reason
        (True, 1, 'memorization')
    """

    patience: int = 5
    info_drop: float | None = 0.2
    info_patience: int = 2
    best_score: float = -math.inf
    best_epoch: int | None = None
    wait: int = 0
    info_max: float = -math.inf
    info_low: int = 0
    reason: str | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def update(self, epoch: int, score: float | None, info: float | None) -> tuple[bool, bool]:
        """Record one evaluation.

        Args:
            epoch: the epoch of the evaluation.
            score: the validation metric, higher = better (negate a loss), or None.
            info: held-out DSMI, or None.

        Returns:
            ``(stop, best)``: whether to stop now, and whether this evaluation is the new best.
        """
        value = score if score is not None else info
        finite = value is not None and math.isfinite(value)
        best = finite and value > self.best_score
        if best:
            self.best_score, self.best_epoch, self.wait = float(value), int(epoch), 0
        else:
            self.wait += 1
        if info is not None and math.isfinite(info):
            self.info_max = max(self.info_max, info)
            low = self.info_drop is not None and info < (1.0 - self.info_drop) * self.info_max
            self.info_low = self.info_low + 1 if low else 0
        self.history.append(
            (
                int(epoch),
                math.nan if score is None else float(score),
                math.nan if info is None else float(info),
            )
        )
        if self.info_drop is not None and self.info_low >= self.info_patience:
            self.reason = "memorization"
        elif self.wait >= self.patience:
            self.reason = "patience"
        return self.reason is not None, best

    def state_dict(self) -> dict[str, Any]:
        """The rule's state: numbers and lists only.

        Returns:
            The state.
        """
        return {
            k: getattr(self, k)
            for k in (
                "best_score",
                "best_epoch",
                "wait",
                "info_max",
                "info_low",
                "reason",
                "history",
            )
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for key, value in state.items():
            setattr(self, key, list(map(tuple, value)) if key == "history" else value)


class OverfittingEarlyStopping(EarlyStopping):
    r"""Stop a run once it is past its best held-out epoch and restore that epoch's weights.

    Reads, at every evaluation, held-out DSMI(Z;Y) from
    :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor` (``monitor``) and, when the
    module logs one, a validation metric (``score_monitor``), and applies :class:`StopRule`:

    * the **best epoch** is the one with the best validation metric (the first one, on ties), or,
      without a validation metric, the one with the highest DSMI;
    * training **stops** after ``patience`` evaluations without a new best, or as soon as DSMI has
      stayed ``info_drop`` below its running maximum for ``info_patience`` evaluations (a
      network memorizing noisy labels loses held-out label information; a clean run keeps it);
    * the weights of the best epoch are kept in memory and **restored** when training stops and
      at fit end (Keras' ``restore_best_weights``); ``best_epoch`` says which epoch that was.

    Works with zero arguments on any module that is monitored by the DSE monitor (no
    ``num_classes`` needed). At the first evaluation it warns if ``monitor`` is not logged
    (naming the keys that are), and reports which validation metric it uses.

    Measured in ``benchmarks/overfitting.py`` (``benchmarks/RESULTS.md``), against
    ``EarlyStopping`` + best-checkpoint restore on the same runs.

    Args:
        monitor: key of held-out DSMI(Z;Y). Default ``"info/dsmi_y/penultimate"``.
        score_monitor: validation metric that picks the best epoch: ``"auto"`` (the first of
            ``val_acc``, ``val_accuracy``, ``val/acc``, ``val/accuracy``, ``valid_acc`` (max) or
            ``val_loss``, ``val/loss``, ``valid_loss`` (min) that is logged), a key (then give
            ``score_mode``), or None to use DSMI alone (no labelled validation metric needed).
        score_mode: ``"max"`` or ``"min"`` for an explicit ``score_monitor``.
        patience: evaluations without a new best before stopping, >= 1.
        info_drop: relative DSMI drop from its maximum that stops the run, in (0, 1), or None.
        info_patience: consecutive evaluations at that drop before stopping, >= 1.
        restore_best_weights: restore the best epoch's weights on stop and at fit end.
        verbose: log the decision at every evaluation.
        log_rank_zero_only: log only on rank 0.

    Attributes:
        rule: the :class:`StopRule` (its ``history``: ``(epoch, score, dsmi)`` per evaluation).
        best_epoch: epoch whose weights are kept (None before the first evaluation).
        stopped_epoch: the epoch at which training was stopped (0 if it was not).

    Distributed: the rule runs on rank 0 and its decision (stop, new best) is broadcast, so every
    rank stops at the same epoch and keeps the same weights.

    Raises:
        ValueError: on invalid options.
        TypeError: on options of the wrong type.

    Example:
        >>> stopper = OverfittingEarlyStopping()
        >>> stopper.monitor, stopper.rule.patience
        ('info/dsmi_y/penultimate', 5)
    """

    def __init__(
        self,
        monitor: str = "info/dsmi_y/penultimate",
        *,
        score_monitor: str | None = "auto",
        score_mode: str = "max",
        patience: int = 5,
        info_drop: float | None = 0.2,
        info_patience: int = 2,
        restore_best_weights: bool = True,
        verbose: bool = False,
        log_rank_zero_only: bool = False,
    ) -> None:
        """Validate the options and build the rule (the arguments are in the class docstring).

        Raises:
            TypeError: if ``monitor`` is not a string or ``score_monitor`` neither a string nor None.
            ValueError: on an invalid ``score_mode``, ``patience``, ``info_drop`` or ``info_patience``.
        """
        if not isinstance(monitor, str) or not (
            score_monitor is None or isinstance(score_monitor, str)
        ):
            raise TypeError(
                f"`monitor` must be a string and `score_monitor` a string or None; got {monitor!r}, "
                f"{score_monitor!r}."
            )
        patience = _check_int(patience, "patience", minimum=1)
        super().__init__(
            monitor=monitor,
            mode="max",
            patience=patience,
            strict=False,
            check_finite=False,
            verbose=verbose,
            log_rank_zero_only=log_rank_zero_only,
        )
        if score_mode not in ("max", "min"):
            raise ValueError(f"`score_mode` must be 'max' or 'min'; got {score_mode!r}.")
        if info_drop is not None:
            info_drop = _check_positive(info_drop, "info_drop")
            if info_drop >= 1:
                raise ValueError(f"`info_drop` must be in (0, 1) or None; got {info_drop}.")
        self.score_monitor = score_monitor
        self.score_mode = score_mode
        self.restore_best_weights = bool(restore_best_weights)
        self.rule = StopRule(
            patience=patience,
            info_drop=info_drop,
            info_patience=_check_int(info_patience, "info_patience", minimum=1),
        )
        self._score_key: tuple[str, str] | None = None
        self._best_state: dict[str, Tensor] | None = None
        self._checked_keys = False

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights are kept (the best one seen)."""
        return self.rule.best_epoch

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, score_monitor=self.score_monitor)

    @override
    def state_dict(self) -> dict[str, Any]:
        """EarlyStopping's state, the rule's and the best weights (tensors: ``weights_only``).

        Returns:
            The state dictionary.
        """
        return {
            **super().state_dict(),
            "rule": self.rule.state_dict(),
            "score_key": None if self._score_key is None else list(self._score_key),
            "best_state": self._best_state,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run keeps its best epoch and weights)."""
        super().load_state_dict(state_dict)
        self.rule.load_state_dict(state_dict.get("rule", {}))
        key = state_dict.get("score_key")
        self._score_key = None if key is None else (key[0], key[1])
        self._best_state = state_dict.get("best_state")
        self._checked_keys = bool(self.rule.history)

    # ------------------------------------------------------------------------------ hooks
    @override
    def _run_early_stopping_check(self, trainer: pl.Trainer) -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run:
            return
        if not self._checked_keys:
            self._check_keys(logs)
        if self.monitor not in logs or (
            self.rule.history and self.rule.history[-1][0] == trainer.current_epoch
        ):
            return  # no evaluation this epoch (or already counted)
        info = float(logs[self.monitor].detach().float().mean())
        score = self._score(logs)
        stop, best = (
            self.rule.update(trainer.current_epoch, score, info)
            if trainer.is_global_zero
            else (False, False)
        )
        # rank 0 decides for all: every rank gets its decision and its rule's state
        stop, best, state = trainer.strategy.broadcast((stop, best, self.rule.state_dict()), src=0)
        self.rule.load_state_dict(state)
        pl_module = trainer.lightning_module
        if best and self.restore_best_weights:
            self._best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }
        if best:
            self.best_score = torch.tensor(self.rule.best_score)
        self._report(trainer, stop)
        if stop:
            self.stopped_epoch = trainer.current_epoch
            trainer.should_stop = True
            self._restore(pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the best epoch's weights (also when no stop fired)."""
        self._restore(pl_module)

    # ------------------------------------------------------------------------------ helpers
    def _check_keys(self, logs: Mapping[str, Any]) -> None:
        self._checked_keys = True
        if self.monitor not in logs:
            rank_zero_warn(
                f"{type(self).__name__}: `{self.monitor}` is not logged, so nothing is stopped. "
                "Attach DiffusionSpectralEntropyMonitor (with validation targets) or pass the "
                f"logged key as `monitor`. Logged: {sorted(logs)}.",
                category=RuntimeWarning,
            )
        if self.score_monitor == "auto":
            self._score_key = next(((k, m) for k, m in SCORE_KEYS if k in logs), None)
        elif self.score_monitor is not None:
            self._score_key = (self.score_monitor, self.score_mode)
            if self.score_monitor not in logs:
                rank_zero_warn(
                    f"{type(self).__name__}: `score_monitor={self.score_monitor!r}` is not logged; "
                    f"the best epoch is picked by DSMI until it is. Logged: {sorted(logs)}.",
                    category=RuntimeWarning,
                )
        what = (
            "DSMI" if self._score_key is None else f"`{self._score_key[0]}` ({self._score_key[1]})"
        )
        rank_zero_info(f"{type(self).__name__}: the best epoch is the one with the best {what}.")

    def _score(self, logs: Mapping[str, Any]) -> float | None:
        if self._score_key is None or self._score_key[0] not in logs:
            return None
        value = float(logs[self._score_key[0]].detach().float().mean())
        return value if self._score_key[1] == "max" else -value

    def _restore(self, pl_module: pl.LightningModule) -> None:
        if self.restore_best_weights and self._best_state is not None:
            pl_module.load_state_dict(self._best_state)

    def _report(self, trainer: pl.Trainer, stop: bool) -> None:
        epoch, score, info = self.rule.history[-1]
        if stop:
            self.stopping_reason = EarlyStoppingReason.PATIENCE_EXHAUSTED
            why = (
                f"held-out `{self.monitor}` stayed below {1 - (self.rule.info_drop or 0):.0%} of its "
                f"maximum {self.rule.info_max:.3f} for {self.rule.info_patience} evaluations (memorization)"
                if self.rule.reason == "memorization"
                else f"no better held-out score for {self.rule.patience} evaluations"
            )
            self.stopping_reason_message = (
                f"{type(self).__name__}: {why}; stopping at epoch {epoch} and keeping the weights of "
                f"epoch {self.rule.best_epoch}."
            )
        if self.verbose or stop:
            message = (
                self.stopping_reason_message
                if stop
                else (
                    f"{type(self).__name__}: epoch {epoch} score {score:.4f} dsmi {info:.3f} best epoch "
                    f"{self.rule.best_epoch} ({self.rule.wait}/{self.rule.patience})"
                )
            )
            self._log_info(trainer, message or "", self.log_rank_zero_only)
