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
    better; or None) and an *information* value :math:`I_k` (held-out DSMI), with running
    maximum :math:`M_k = \max_{j \le k} I_j`.

    **With a score** (labelled validation data):

    * **best epoch**: the first evaluation with the highest score (any gain counts);
    * **patience stop**: ``patience`` evaluations in a row with neither a new best score nor a
      new information maximum (a run whose held-out label information still grows is still
      learning, even while its validation accuracy sits on a plateau, e.g. at the start of
      training on very noisy labels);
    * **memorization stop**: :math:`I_k < (1 - \text{info\_drop})\, M_k` for ``info_patience``
      evaluations in a row: the held-out representation has lost a fraction ``info_drop`` of the
      label information it once had, which is what memorizing noisy labels does (a clean run
      keeps it).

    **Without a score** (information only, e.g. the label-free ``dsmi_z``):

    * **kept epoch**: the last evaluation with :math:`I_k \ge (1 - \text{info\_tolerance})\,
      M_k`, the end of the information plateau (the information signals peak a little before
      the best test accuracy; the plateau's end is closer to it than the peak);
    * **memorization stop** as above; no patience stop (the information can stay flat for a long
      time while a clean run still improves), so a run that never loses its information trains
      to the end and keeps its last plateau epoch.

    Args:
        patience: evaluations without progress before stopping (with a score), >= 1.
        info_drop: relative drop from the running maximum that counts as memorization, in
            (0, 1), or None to disable the memorization stop.
        info_patience: consecutive evaluations below that level before stopping, >= 1.
        info_tolerance: without a score, how far below the running maximum an evaluation may be
            and still be kept, in [0, 1).

    Example:
        >>> rule = StopRule(patience=3, info_drop=0.2, info_patience=2)
        >>> for epoch, (acc, dsmi) in enumerate([(0.8, 1.0), (0.9, 1.2), (0.85, 0.9), (0.84, 0.8)]):
        ...     stop, best = rule.update(epoch, acc, dsmi)
        >>> stop, rule.best_epoch, rule.reason
        (True, 1, 'memorization')
    """

    patience: int = 10
    info_drop: float | None = 0.2
    info_patience: int = 2
    info_tolerance: float = 0.05
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
            ``(stop, best)``: whether to stop now, and whether this evaluation's weights are the
            ones to keep from now on.
        """
        finite_info = info is not None and math.isfinite(info)
        new_max = finite_info and info > self.info_max
        if finite_info:
            self.info_max = max(self.info_max, info)
            low = self.info_drop is not None and info < (1.0 - self.info_drop) * self.info_max
            self.info_low = self.info_low + 1 if low else 0
        if score is not None:
            best = math.isfinite(score) and score > self.best_score
            if best:
                self.best_score, self.best_epoch = float(score), int(epoch)
            self.wait = 0 if best or new_max else self.wait + 1
        else:
            best = finite_info and info >= (1.0 - self.info_tolerance) * self.info_max
            if best:
                self.best_score, self.best_epoch = float(info), int(epoch)
            self.wait = 0 if new_max else self.wait + 1
        self.history.append(
            (
                int(epoch),
                math.nan if score is None else float(score),
                math.nan if info is None else float(info),
            )
        )
        if self.info_drop is not None and self.info_low >= self.info_patience:
            self.reason = "memorization"
        elif score is not None and self.wait >= self.patience:
            self.reason = "patience"
        return self.reason is not None, bool(best)

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


def _check_fraction(value: Any, name: str) -> float:
    """A number in [0, 1).

    Returns:
        ``value`` as a float.

    Raises:
        ValueError: outside [0, 1).
    """
    value = _check_positive(value, name, allow_zero=True)
    if value >= 1:
        raise ValueError(f"`{name}` must be in [0, 1); got {value}.")
    return value


class OverfittingEarlyStopping(EarlyStopping):
    r"""Stop a run once it is past its best held-out epoch and restore that epoch's weights.

    Reads, at every evaluation, held-out DSMI(Z;Y) from
    :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor` (``monitor``) and, when the
    module logs one, a validation metric (``score_monitor``), and applies :class:`StopRule`:

    * the **best epoch** is the one with the best validation metric (the first one, on ties);
    * training **stops** after ``patience`` evaluations with neither a new best validation
      metric nor a new DSMI maximum, or as soon as DSMI has stayed ``info_drop`` below its
      running maximum for ``info_patience`` evaluations (a network memorizing noisy labels loses
      held-out label information; a clean run keeps it);
    * the weights of the best epoch are kept in memory and **restored** when training stops and
      at fit end (Keras' ``restore_best_weights``); ``best_epoch`` says which epoch that was.

    **Without labelled validation data** (``score_monitor=None``, or no validation metric
    logged) the information alone decides: the kept epoch is the last one whose information is
    within ``info_tolerance`` of its running maximum (the end of the plateau) and only the
    information drop stops the run. With ``monitor="info/dsmi_z/penultimate"`` (add ``"dsmi_z"``
    to the monitor's ``quantities``) no label is needed at all: DSMI with k-means clusters of the
    held-out features (:meth:`label_free`).

    Works with zero arguments on any module that is monitored by the DSE monitor (no
    ``num_classes`` needed). At the first evaluation it warns if ``monitor`` is not logged
    (naming the keys that are), and reports which validation metric it uses.

    Measured in ``benchmarks/overfitting.py`` (``benchmarks/RESULTS.md`` section 8: 60 runs on
    MNIST and digits, an MLP with Adam and a CNN with SGD + momentum, 0-80 % flipped labels),
    against ``EarlyStopping`` + best-checkpoint restore on the same runs: mean test-accuracy
    regret 0.37 pp (MNIST) and 0.86 pp (digits) against 0.36 / 5.46 pp for
    ``EarlyStopping("val_acc", patience=5)`` and 0.37 / 2.69 pp at ``patience=10``. The DSMI
    progress term is what closes the gap: very noisy runs sit at chance validation accuracy for
    several epochs while their DSMI already grows. The defaults come from there (``patience=5``
    gives 0.36 / 1.01 pp). The label-free mode: 1.24 / 2.81 pp (``EarlyStopping`` on RankMe:
    20.2 / 49.5 pp).

    Args:
        monitor: key of held-out DSMI(Z;Y). Default ``"info/dsmi_y/penultimate"``.
        score_monitor: validation metric that picks the best epoch: ``"auto"`` (the first of
            ``val_acc``, ``val_accuracy``, ``val/acc``, ``val/accuracy``, ``valid_acc`` (max) or
            ``val_loss``, ``val/loss``, ``valid_loss`` (min) that is logged), a key (then give
            ``score_mode``), or None to use DSMI alone (no labelled validation metric needed).
        score_mode: ``"max"`` or ``"min"`` for an explicit ``score_monitor``.
        patience: evaluations without progress (a new best validation metric or a new DSMI
            maximum) before stopping, >= 1; not used without a validation metric.
        info_drop: relative DSMI drop from its maximum that stops the run, in (0, 1), or None.
        info_patience: consecutive evaluations at that drop before stopping, >= 1.
        info_tolerance: without a validation metric, how far below its running maximum the
            information of a kept epoch may be, in [0, 1).
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
        ('info/dsmi_y/penultimate', 10)
    """

    def __init__(
        self,
        monitor: str = "info/dsmi_y/penultimate",
        *,
        score_monitor: str | None = "auto",
        score_mode: str = "max",
        patience: int = 10,
        info_drop: float | None = 0.2,
        info_patience: int = 2,
        info_tolerance: float = 0.05,
        restore_best_weights: bool = True,
        verbose: bool = False,
        log_rank_zero_only: bool = False,
    ) -> None:
        """Validate the options and build the rule (the arguments are in the class docstring).

        Raises:
            TypeError: if ``monitor`` is not a string or ``score_monitor`` neither a string nor None.
            ValueError: on an invalid ``score_mode``, ``patience``, ``info_drop``, ``info_patience``
                or ``info_tolerance``.
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
            info_tolerance=_check_fraction(info_tolerance, "info_tolerance"),
        )
        self._score_key: tuple[str, str] | None = None
        self._best_state: dict[str, Tensor] | None = None
        self._checked_keys = False

    @classmethod
    def label_free(cls, layer: str = "penultimate", **kwargs: Any) -> OverfittingEarlyStopping:
        """The stop for runs without labelled held-out data: held-out inputs only.

        Watches ``info/dsmi_z/<layer>``, DSMI with k-means clusters of the held-out features,
        which needs no label; the monitor must log it::

            DiffusionSpectralEntropyMonitor(quantities=("dse", "dsmi_z"))
            OverfittingEarlyStopping.label_free()

        Args:
            layer: the monitored layer's logged name.
            **kwargs: other options of the constructor (``score_monitor`` is None).

        Returns:
            The callback.
        """
        return cls(f"info/dsmi_z/{layer}", score_monitor=None, **kwargs)

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
