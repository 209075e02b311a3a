r"""Stop a run once it has passed its best held-out epoch, and keep that epoch's weights.

Fed by a validation metric the module logs and, when
:class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor` is attached, held-out DSMI.
The decision is a small replayable rule, :class:`StopRule`, that ``benchmarks/overfitting.py``
replays on recorded curves to measure it against ``EarlyStopping`` with a best-checkpoint
restore; the measurements are in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import logging
import math
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_info.utilities.checks import _check_int, _check_positive
from lightning_info.utilities.compat import EarlyStopping, callback_state_key

__all__ = ["OverfittingEarlyStopping", "StopReason", "StopRule", "kept_loss_fraction"]

_LOG = logging.getLogger(__name__)

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

#: The memorization threshold that ``info_drop="auto"`` uses when no validation metric is logged.
DEFAULT_INFO_DROP = 0.2

#: Training-loss keys tried, in order, by ``train_monitor="auto"`` (the label-free check).
#: An epoch aggregate (``*_epoch``, logged with ``on_step=True, on_epoch=True``) comes first.
TRAIN_LOSS_KEYS: tuple[str, ...] = (
    "train_loss_epoch",
    "train_loss",
    "train/loss_epoch",
    "train/loss",
    "training_loss",
    "loss",
)

#: Without a validation metric, the stop warns when the kept epoch had made less than this
#: fraction of the training-loss decrease seen by the end of the run (:func:`kept_loss_fraction`;
#: chosen on the development families of ``benchmarks/RESULTS.md`` section 13.6).
LABEL_FREE_MIN_LOSS_FRACTION = 0.4

#: A logged key that names a validation metric ("val_f1", "valid/auc", "validation_loss", ...).
_VALIDATION_KEY = re.compile(r"(^|[/_.\-])val(id|idation)?([/_.\-]|$)", re.IGNORECASE)


class StopReason(str, Enum):
    """Why :class:`OverfittingEarlyStopping` (its :class:`StopRule`) stopped a run.

    * ``PATIENCE`` (``"patience"``): ``patience`` evaluations without progress.
    * ``MEMORIZATION`` (``"memorization"``): held-out DSMI stayed a fraction ``info_drop`` below
      its running maximum for ``info_patience`` evaluations.
    * ``NON_FINITE`` (``"non_finite"``): a monitored value (or the model's weights) was NaN/inf.

    Lightning's own ``EarlyStopping.stopping_reason`` is set to the nearest
    ``EarlyStoppingReason`` (:attr:`lightning_reason`).
    """

    PATIENCE = "patience"
    MEMORIZATION = "memorization"
    NON_FINITE = "non_finite"

    def __str__(self) -> str:
        """Return the string value (``"patience"``, ...), as used in messages and states."""
        return self.value

    @property
    def lightning_reason(self) -> EarlyStoppingReason:
        """The nearest ``EarlyStoppingReason``: patience, divergence threshold, non-finite."""
        return _LIGHTNING_REASON[self]


_LIGHTNING_REASON = {
    StopReason.PATIENCE: EarlyStoppingReason.PATIENCE_EXHAUSTED,
    StopReason.MEMORIZATION: EarlyStoppingReason.DIVERGENCE_THRESHOLD,
    StopReason.NON_FINITE: EarlyStoppingReason.NON_FINITE_METRIC,
}

#: The per-fit state of :class:`StopRule` and its initial values.
_RULE_STATE: dict[str, Any] = {
    "best_score": -math.inf,
    "best_epoch": None,
    "wait": 0,
    "info_max": -math.inf,
    "info_low": 0,
    "reason": None,
}


@dataclass
class StopRule:
    r"""The decision of :class:`OverfittingEarlyStopping`, one evaluation at a time.

    Each evaluation brings a held-out *score* (a validation metric, oriented so that higher is
    better; or None) and an *information* value :math:`I_k` (held-out DSMI; or None), with
    running maximum :math:`M_k = \max_{j \le k} I_j`.

    **With a score** (labelled validation data), the default is ``EarlyStopping`` on the score
    with the best weights kept, which the information can only extend:

    * **best epoch**: the first evaluation with the highest score (any gain counts);
    * **patience stop**: ``patience`` evaluations in a row with neither a new best score nor a
      new information maximum. A new DSMI maximum counts as progress (a run whose held-out
      label information still grows is still learning, e.g. a very noisy run whose validation
      accuracy sits at chance for its first epochs), so the run never stops while its score
      improved within the last ``patience`` evaluations;
    * **memorization stop** only when asked for (``info_drop`` a number):
      :math:`I_k < (1 - \text{info\_drop})\, M_k` for ``info_patience`` evaluations in a row.
      It is off by default with a score: held-out DSMI can fall while the validation metric
      still rises (on tasks where it does not track learning), and the stop must never end such
      a run.

    **Without a score** (information only, e.g. the label-free ``dsmi_z``):

    * **kept epoch**: the last evaluation with :math:`I_k \ge (1 - \text{info\_tolerance})\,
      M_k`, the end of the information plateau;
    * **memorization stop** as above, with ``info_drop="auto"`` meaning
      :data:`DEFAULT_INFO_DROP` (0.2); no patience stop (the information can stay flat for a
      long time while a clean run still improves), so a run that never loses its information
      trains to the end and keeps its last plateau epoch.

    **Non-finite values** (``check_finite``): a NaN/inf score or information value stops the run
    at once (reason ``NON_FINITE``), as ``EarlyStopping(check_finite=True)`` does; it is never a
    best epoch. With ``check_finite=False`` it only counts as an evaluation without progress.

    Args:
        patience: evaluations without progress before stopping (with a score), >= 1.
        info_drop: relative drop from the running maximum that counts as memorization, in
            (0, 1); ``"auto"`` (default): :data:`DEFAULT_INFO_DROP` without a score and no
            memorization stop with one; None: never.
        info_patience: consecutive evaluations below that level before stopping, >= 1.
        info_tolerance: without a score, how far below the running maximum an evaluation may be
            and still be kept, in [0, 1).
        check_finite: stop on a NaN/inf score or information value.
        best_score: (state) the best score so far, or without a score the kept information.
        best_epoch: (state) the epoch to keep, None before the first kept evaluation.
        wait: (state) evaluations since the last progress.
        info_max: (state) :math:`M_k`.
        info_low: (state) consecutive evaluations below the memorization level.
        reason: (state) why the rule stopped, None while it has not.
        history: (state) ``(epoch, score, info)`` per evaluation (NaN for None).

    Example:
        >>> rule = StopRule(patience=3)
        >>> for epoch, (acc, dsmi) in enumerate([(0.8, 1.0), (0.9, 1.2), (0.85, 0.9), (0.84, 0.8)]):
        ...     stop, best = rule.update(epoch, acc, dsmi)
        >>> stop, rule.best_epoch, rule.wait  # DSMI fell 33 %, but the score decides
        (False, 1, 2)
        >>> _ = rule.update(4, 0.83, 0.7)
        >>> rule.reason
        <StopReason.PATIENCE: 'patience'>
        >>> rule = StopRule(patience=3, info_drop=0.2)  # the memorization stop, asked for
        >>> for epoch, (acc, dsmi) in enumerate([(0.8, 1.0), (0.9, 1.2), (0.85, 0.9), (0.84, 0.8)]):
        ...     stop, best = rule.update(epoch, acc, dsmi)
        >>> stop, rule.best_epoch, str(rule.reason)
        (True, 1, 'memorization')
    """

    patience: int = 10
    info_drop: float | Literal["auto"] | None = "auto"
    info_patience: int = 2
    info_tolerance: float = 0.05
    check_finite: bool = True
    best_score: float = -math.inf
    best_epoch: int | None = None
    wait: int = 0
    info_max: float = -math.inf
    info_low: int = 0
    reason: StopReason | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def drop_for(self, has_score: bool) -> float | None:
        """The memorization threshold in force for an evaluation with or without a score.

        Args:
            has_score: whether the evaluation has a score.

        Returns:
            ``info_drop``, resolved: ``"auto"`` is :data:`DEFAULT_INFO_DROP` without a score and
            None (no memorization stop) with one.
        """
        if self.info_drop == "auto":
            return None if has_score else DEFAULT_INFO_DROP
        return self.info_drop

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
        self.history.append(
            (
                int(epoch),
                math.nan if score is None else float(score),
                math.nan if info is None else float(info),
            )
        )
        if self.check_finite and any(v is not None and not math.isfinite(v) for v in (score, info)):
            self.reason = self.reason or StopReason.NON_FINITE  # never kept, stops at once
            return True, False
        best = self._record(epoch, score, info)
        if self.reason is None:
            self.reason = self._reason(score is not None)
        return self.reason is not None, best

    def _record(self, epoch: int, score: float | None, info: float | None) -> bool:
        """Update the state with one evaluation (NaN/inf values are no progress).

        Returns:
            Whether this evaluation is the one to keep from now on.
        """
        finite_info = info is not None and math.isfinite(info)
        new_max = finite_info and info > self.info_max
        if finite_info:
            self.info_max = max(self.info_max, info)
            drop = self.drop_for(score is not None)
            low = drop is not None and info < (1.0 - drop) * self.info_max
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
        return bool(best)

    def _reason(self, has_score: bool) -> StopReason | None:
        if self.drop_for(has_score) is not None and self.info_low >= self.info_patience:
            return StopReason.MEMORIZATION
        if has_score and self.wait >= self.patience:
            return StopReason.PATIENCE
        return None

    def reset(self) -> None:
        """Forget every evaluation (a new fit); the options stay."""
        for key, value in _RULE_STATE.items():
            setattr(self, key, value)
        self.history = []

    def state_dict(self) -> dict[str, Any]:
        """The rule's state: numbers, strings and lists only (``torch.load(weights_only=True)``).

        Returns:
            The state.
        """
        state = {key: getattr(self, key) for key in _RULE_STATE}
        state["reason"] = None if self.reason is None else str(self.reason)
        state["history"] = list(self.history)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        for key, value in state.items():
            if key == "history":
                value = list(map(tuple, value))
            elif key == "reason":
                value = None if value is None else StopReason(value)
            setattr(self, key, value)


def kept_loss_fraction(train_losses: Mapping[int, float], kept_epoch: int | None) -> float | None:
    r"""The fraction of the run's training-loss decrease that the kept epoch had made.

    With :math:`L_e` the training loss of epoch :math:`e` (the mean minibatch loss, as
    Lightning aggregates ``self.log("train_loss", ..., on_epoch=True)``), :math:`a` the first
    and :math:`b` the last recorded epoch and :math:`k` the kept one:

    .. math::

        \frac{L_a - L_k}{L_a - L_b}.

    A label-free stop whose kept weights made only a small part of the decrease kept a nearly
    untrained network, or stopped a run that was still learning: on the suite's families the
    label-free stop lost more than 3 pp of test accuracy on most such runs
    (``benchmarks/RESULTS.md`` section 13.6).

    Args:
        train_losses: epoch -> training loss of the epochs recorded so far.
        kept_epoch: the epoch whose weights are kept.

    Returns:
        The fraction, or None when it is undefined: no kept epoch, its loss not recorded, a
        non-finite loss, or no decrease from the first to the last epoch.

    Example:
        >>> kept_loss_fraction({0: 2.0, 1: 1.5, 2: 1.0, 3: 0.0}, kept_epoch=1)  # 0.5 of 2.0
        0.25
    """
    if kept_epoch is None or kept_epoch not in train_losses:
        return None
    first, last = train_losses[min(train_losses)], train_losses[max(train_losses)]
    kept = train_losses[kept_epoch]
    if not all(math.isfinite(v) for v in (first, last, kept)) or not first > last:
        return None
    return (first - kept) / (first - last)


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


def _check_info_drop(info_drop: Any) -> float | str | None:
    """``"auto"``, None or a number in (0, 1).

    Returns:
        ``info_drop`` (a float when a number).

    Raises:
        ValueError: a number outside (0, 1) or another string.
    """
    if info_drop is None or info_drop == "auto":
        return info_drop
    if isinstance(info_drop, str):
        raise ValueError(f"`info_drop` must be 'auto', None or in (0, 1); got {info_drop!r}.")
    info_drop = _check_positive(info_drop, "info_drop")
    if info_drop >= 1:
        raise ValueError(f"`info_drop` must be 'auto', None or in (0, 1); got {info_drop}.")
    return info_drop


def _value(logs: Mapping[str, Any], key: str) -> float | None:
    """A logged value as a float (the mean of a tensor), None when it is not logged.

    Returns:
        The value or None.
    """
    if key not in logs:
        return None
    return float(torch.as_tensor(logs[key]).detach().float().mean())


def _finite_weights(pl_module: pl.LightningModule) -> bool:
    """Whether every parameter of the module is finite (one device synchronisation).

    Returns:
        True when no parameter holds NaN/inf.
    """
    flags = [torch.isfinite(p.detach()).all() for p in pl_module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


class OverfittingEarlyStopping(EarlyStopping):
    r"""Stop a run once it is past its best held-out epoch and restore that epoch's weights.

    Reads, at every evaluation, a validation metric the module logs (``score_monitor``) and,
    when :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor` is attached,
    held-out DSMI(Z;Y) (``monitor``), and applies :class:`StopRule`:

    * the **best epoch** is the one with the best validation metric (the first one, on ties);
    * training **stops** after ``patience`` evaluations with neither a new best validation
      metric nor a new DSMI maximum: ``EarlyStopping`` on the validation metric, which a growing
      DSMI can only extend. It never stops a run whose validation metric improved within the
      last ``patience`` evaluations. Without the monitor it *is* ``EarlyStopping`` on the
      metric with the best weights restored;
    * with ``info_drop`` set to a number, also as soon as DSMI has stayed ``info_drop`` below
      its running maximum for ``info_patience`` evaluations (the memorization stop: a network
      memorizing noisy labels loses held-out label information). Off by default when a
      validation metric is logged: it can end a run while its metric still rises;
    * a NaN/inf validation metric or DSMI, or NaN/inf weights (a diverged run: the monitor then
      skips DSMI), stops the run at once (``check_finite``);
    * the weights of the best epoch are kept in memory and **restored** in ``on_train_end``,
      which Lightning runs for every callback before any ``on_fit_end`` (so a callback that
      reads the model at fit end, e.g. ``SmoothUniqueInformation(linearize_at="final")``, sees
      the restored weights whatever the callback order), and when the fit is interrupted by an
      exception or Ctrl-C (``on_exception``). ``best_epoch`` says which epoch that was.

    **Without labelled validation data** (``score_monitor=None``, or no validation metric
    logged) the information alone decides: the kept epoch is the last one whose information is
    within ``info_tolerance`` of its running maximum (the end of the plateau) and only the
    information drop (``info_drop="auto"``: 20 %) stops the run. With
    ``monitor="info/dsmi_z/penultimate"`` (add ``"dsmi_z"`` to the monitor's ``quantities``) no
    label is needed at all: DSMI with k-means clusters of the held-out features
    (:meth:`label_free`). That signal is unreliable on some tasks (the features of the untrained
    network already cluster, so it peaks in the first epochs), so without a validation metric
    the stop also records the training loss (``train_monitor``) and, at the end of training,
    **warns once** when the kept epoch had made less than 40 % of the run's training-loss
    decrease (:func:`kept_loss_fraction`); ``signal_warning`` holds the message.

    Works with zero arguments, with or without the monitor (no ``num_classes`` needed). At the
    first evaluation of a fit it reports which values it decides on and warns when it has none,
    or when ``score_monitor="auto"`` recognises none of the logged validation metrics (naming
    them). The same instance can be used for several fits (a cross-validation loop): each fit
    starts afresh in ``setup``, except a fit resumed from a checkpoint, which continues with the
    checkpoint's state. Regret against ``EarlyStopping`` + best restore on tasks its defaults
    were not chosen on: ``benchmarks/RESULTS.md`` section 13 (held-out families).

    Args:
        monitor: key of held-out DSMI(Z;Y). Default ``"info/dsmi_y/penultimate"``.
        score_monitor: validation metric that picks the best epoch: ``"auto"`` (the first of
            ``val_acc``, ``val_accuracy``, ``val/acc``, ``val/accuracy``, ``valid_acc`` (max) or
            ``val_loss``, ``val/loss``, ``valid_loss`` (min) that is logged), a key (then give
            ``score_mode``), or None to use DSMI alone (no labelled validation metric needed).
        score_mode: ``"max"`` or ``"min"`` for an explicit ``score_monitor``.
        patience: evaluations without progress (a new best validation metric or a new DSMI
            maximum) before stopping, >= 1; not used without a validation metric.
        info_drop: relative DSMI drop from its maximum that stops the run, in (0, 1); ``"auto"``
            (default): 0.2 without a validation metric, no memorization stop with one; None:
            never.
        info_patience: consecutive evaluations at that drop before stopping, >= 1.
        info_tolerance: without a validation metric, how far below its running maximum the
            information of a kept epoch may be, in [0, 1).
        check_finite: stop when a monitored value or the weights are NaN/inf.
        restore_best_weights: restore the best epoch's weights at train end and on an exception.
        verbose: log the decision at every evaluation.
        log_rank_zero_only: log only on rank 0 (else every rank logs, prefixed with its rank).
        train_monitor: the training-loss key of the label-free check (used only without a
            validation metric): ``"auto"`` (the first of ``train_loss_epoch``, ``train_loss``,
            ``train/loss_epoch``, ``train/loss``, ``training_loss``, ``loss`` that is logged;
            best logged with ``on_epoch=True``), a key, or None (no check).

    Attributes:
        rule: the :class:`StopRule` (its ``history``: ``(epoch, score, dsmi)`` per evaluation).
        best_epoch: epoch whose weights are kept (None before the first evaluation).
        stopped_epoch: the epoch at which training was stopped (0 if it was not).
        stop_reason: why it stopped, a :class:`StopReason` (None if it did not); Lightning's
            ``stopping_reason`` holds the nearest ``EarlyStoppingReason``.
        signal_warning: the label-free check's warning of the last fit, None if it gave none.

    Distributed: the rule runs on rank 0 and its decision (stop, new best) is broadcast, so every
    rank stops at the same epoch and keeps the same weights.

    Raises:
        ValueError: on invalid options.
        TypeError: on options of the wrong type.

    Example:
        >>> stopper = OverfittingEarlyStopping()
        >>> stopper.monitor, stopper.rule.patience, stopper.rule.info_drop
        ('info/dsmi_y/penultimate', 10, 'auto')
    """

    def __init__(
        self,
        monitor: str = "info/dsmi_y/penultimate",
        *,
        score_monitor: str | None = "auto",
        score_mode: str = "max",
        patience: int = 10,
        info_drop: float | Literal["auto"] | None = "auto",
        info_patience: int = 2,
        info_tolerance: float = 0.05,
        check_finite: bool = True,
        restore_best_weights: bool = True,
        verbose: bool = False,
        log_rank_zero_only: bool = False,
        train_monitor: str | None = "auto",
    ) -> None:
        """Validate the options and build the rule (the arguments are in the class docstring).

        Raises:
            TypeError: if ``monitor`` is not a string, or ``score_monitor`` or ``train_monitor``
                neither a string nor None.
            ValueError: on an invalid ``score_mode``, ``patience``, ``info_drop``, ``info_patience``
                or ``info_tolerance``.
        """
        if not isinstance(monitor, str) or not all(
            v is None or isinstance(v, str) for v in (score_monitor, train_monitor)
        ):
            raise TypeError(
                "`monitor` must be a string, `score_monitor` and `train_monitor` strings or None; "
                f"got {monitor!r}, {score_monitor!r}, {train_monitor!r}."
            )
        patience = _check_int(patience, "patience", minimum=1)
        super().__init__(
            monitor=monitor,
            mode="max",
            patience=patience,
            strict=False,
            check_finite=bool(check_finite),
            verbose=verbose,
            log_rank_zero_only=log_rank_zero_only,
        )
        if score_mode not in ("max", "min"):
            raise ValueError(f"`score_mode` must be 'max' or 'min'; got {score_mode!r}.")
        self.score_monitor = score_monitor
        self.score_mode = score_mode
        self.train_monitor = train_monitor
        self.restore_best_weights = bool(restore_best_weights)
        self.rule = StopRule(
            patience=patience,
            info_drop=_check_info_drop(info_drop),
            info_patience=_check_int(info_patience, "info_patience", minimum=1),
            info_tolerance=_check_fraction(info_tolerance, "info_tolerance"),
            check_finite=bool(check_finite),
        )
        self._check_at_epoch_end = True
        self._reset_fit_state()

    @classmethod
    def label_free(
        cls, layer: str = "penultimate", *, prefix: str = "info/", **kwargs: Any
    ) -> OverfittingEarlyStopping:
        """The stop for runs without labelled held-out data: held-out inputs only.

        Watches ``<prefix>dsmi_z/<layer>``, DSMI with k-means clusters of the held-out features,
        which needs no label; the monitor must log it::

            DiffusionSpectralEntropyMonitor(quantities=("dse", "dsmi_z"))
            OverfittingEarlyStopping.label_free()

        It is unfit for some tasks (on the benchmark's held-out families: 2.0-2.5 pp mean regret
        on two, 5-39 pp on a Transformer and a GRU, ``benchmarks/RESULTS.md`` section 13), and it
        warns at train end when the epoch it kept had made less than 40 % of the run's
        training-loss decrease (log the training loss with ``on_epoch=True``; see
        ``train_monitor``), which caught most of the runs where it lost more than 3 pp.

        Args:
            layer: the monitored layer's logged name.
            prefix: the monitor's ``log_key_prefix`` (default ``"info/"``).
            **kwargs: other options of the constructor (``score_monitor`` is None).

        Returns:
            The callback.

        Raises:
            TypeError: if ``prefix`` or ``layer`` is not a string.
        """
        if not isinstance(prefix, str) or not isinstance(layer, str):
            raise TypeError(f"`prefix` and `layer` must be strings; got {prefix!r}, {layer!r}.")
        return cls(f"{prefix}dsmi_z/{layer}", score_monitor=None, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (e.g. for spawned DDP workers) without the reference to the fitted module.

        Returns:
            A copy of ``__dict__`` (the module reference is set again at the next ``setup``).
        """
        return {**self.__dict__, "_module": None}

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights are kept (the best one seen)."""
        return self.rule.best_epoch

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the run was stopped (None while it was not)."""
        return self.rule.reason

    @property
    @override
    def state_key(self) -> str:
        return callback_state_key(self, monitor=self.monitor, score_monitor=self.score_monitor)

    @override
    def state_dict(self) -> dict[str, Any]:
        """EarlyStopping's state, the rule's and the best weights (tensors: ``weights_only``).

        Returns:
            The state dictionary.
        """
        return {
            **super().state_dict(),
            "rule": self.rule.state_dict(),
            "stop_reason": None if self.stop_reason is None else str(self.stop_reason),
            "score_key": None if self._score_key is None else list(self._score_key),
            "best_state": self._best_state,
            "train_losses": [[e, v] for e, v in sorted(self._train_losses.items())],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run keeps its best epoch and weights)."""
        super().load_state_dict(state_dict)
        self.rule.reset()
        self.rule.load_state_dict(state_dict.get("rule", {}))
        key = state_dict.get("score_key")
        self._score_key = None if key is None else (key[0], key[1])
        self._best_state = state_dict.get("best_state")
        self._train_losses = {int(e): float(v) for e, v in state_dict.get("train_losses", [])}
        self._checked_keys = bool(self.rule.history)
        self._restored = False

    # ------------------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Start a new fit afresh (a resumed fit then loads its state from the checkpoint).

        Decides, as ``EarlyStopping`` does, where to evaluate: at each training epoch's end when
        validation runs once per epoch, else after each validation.
        """
        if stage != TrainerFn.FITTING:
            return
        self._reset_fit_state()
        self._module = weakref.ref(pl_module)  # the only module the kept weights may go to
        self._check_at_epoch_end = (
            trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1
        )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate (when validation runs once per epoch, or not at all)."""
        if self._check_at_epoch_end and not _skip(trainer):
            self._check(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate (when validation runs more or less often than once per epoch)."""
        if not self._check_at_epoch_end and not _skip(trainer):
            self._check(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check a label-free run's kept epoch, then restore the best epoch's weights.

        The restore runs before any callback's ``on_fit_end``.
        """
        self._check_label_free(trainer)
        self._restore(pl_module)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Restore the best weights if ``on_train_end`` did not run (a fit with nothing to train)."""
        if not self._restored:
            self._restore(pl_module)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Leave the model with the best epoch's weights when a fit is interrupted."""
        if trainer.state.fn == TrainerFn.FITTING:
            self._restore(pl_module)

    # ------------------------------------------------------------------------------ decision
    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the rule to the values logged now, on rank 0, and share its decision.

        Called by the hooks once per evaluation; every rank reaches the same collective.
        """
        if trainer.fast_dev_run:
            return
        logs = trainer.callback_metrics
        if not self._checked_keys:
            self._check_keys(logs)
        counted, stop, best = False, False, False
        if trainer.is_global_zero:
            counted, stop, best = self._decide(trainer, pl_module, logs)
        # rank 0 decides for all: every rank gets its decision and its rule's state
        counted, stop, best, state, self._non_finite, self._train_losses = (
            trainer.strategy.broadcast(
                (
                    counted,
                    stop,
                    best,
                    self.rule.state_dict(),
                    self._non_finite,
                    self._train_losses,
                ),
                src=0,
            )
        )
        self.rule.load_state_dict(state)
        if not counted:
            return
        if best and self.restore_best_weights:
            self._best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()
            }
        if best:
            self.best_score = torch.tensor(self.rule.best_score)
        self.wait_count = self.rule.wait
        first_stop = stop and self.stopping_reason_message is None
        if first_stop:
            self.stopped_epoch = trainer.current_epoch
        self._report(trainer, first_stop)
        trainer.should_stop = trainer.should_stop or stop

    def _decide(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, logs: Mapping[str, Any]
    ) -> tuple[bool, bool, bool]:
        info = _value(logs, self.monitor)
        score = self._score(logs)
        diverged = self.rule.check_finite and not _finite_weights(pl_module)
        if diverged:
            info = math.nan  # a diverged network: its information is undefined
        if info is None and score is None:
            return False, False, False
        if self.rule.reason is None:
            bad = [f"`{k}` = {v}" for k, v in self._named(score, info) if not math.isfinite(v)]
            self._non_finite = "the model's weights" if diverged else ", ".join(bad) or None
        stop, best = self.rule.update(trainer.current_epoch, score, info)
        if score is None:
            self._record_train_loss(trainer.current_epoch, logs)
        return True, stop, best

    def _named(self, score: float | None, info: float | None) -> list[tuple[str, float]]:
        named = [] if info is None else [(self.monitor, info)]
        if score is not None and self._score_key is not None:
            named.append((self._score_key[0], score if self._score_key[1] == "max" else -score))
        return named

    # ------------------------------------------------------------------------------ helpers
    def _reset_fit_state(self) -> None:
        """The state of one fit, as at construction."""
        self.rule.reset()
        self._score_key: tuple[str, str] | None = None
        self._best_state: dict[str, Tensor] | None = None
        self._checked_keys = False
        self._restored = False
        self._non_finite: str | None = None
        self._train_losses: dict[int, float] = {}
        self._train_key_missing_warned = False
        self.signal_warning: str | None = None
        self._module: weakref.ReferenceType[pl.LightningModule] | None = None
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(-math.inf)
        self.stopping_reason = EarlyStoppingReason.NOT_STOPPED
        self.stopping_reason_message = None

    def _check_keys(self, logs: Mapping[str, Any]) -> None:
        self._checked_keys = True
        self._score_key = self._resolve_score_key(logs)
        name = type(self).__name__
        score_logged = self._score_key is not None and self._score_key[0] in logs
        if self.monitor not in logs and not score_logged:
            rank_zero_warn(
                f"{name}: neither `{self.monitor}` nor a validation metric is logged, so nothing "
                "is stopped. Log a validation metric (e.g. `val_acc`) and/or attach "
                "DiffusionSpectralEntropyMonitor, or pass the logged keys as `monitor=` / "
                f"`score_monitor=`. Logged: {sorted(logs)}.",
                category=RuntimeWarning,
            )
            return
        if self._score_key is None:
            what = f"`{self.monitor}` alone (information only)"
        elif self.monitor in logs:
            what = f"`{self._score_key[0]}` ({self._score_key[1]}), extended by `{self.monitor}`"
        else:
            what = (
                f"`{self._score_key[0]}` ({self._score_key[1]}) alone (`{self.monitor}` is not "
                "logged): EarlyStopping with the best weights restored"
            )
        rank_zero_info(f"{name}: the best epoch is the one with the best {what}.")

    def _resolve_score_key(self, logs: Mapping[str, Any]) -> tuple[str, str] | None:
        name = type(self).__name__
        if self.score_monitor is None:
            return None
        if self.score_monitor != "auto":
            if self.score_monitor not in logs:
                rank_zero_warn(
                    f"{name}: `score_monitor={self.score_monitor!r}` is not logged; the best "
                    f"epoch is picked by `{self.monitor}` until it is. Logged: {sorted(logs)}.",
                    category=RuntimeWarning,
                )
            return (self.score_monitor, self.score_mode)
        key = next(((k, m) for k, m in SCORE_KEYS if k in logs), None)
        unknown = sorted(k for k in logs if _VALIDATION_KEY.search(k))
        if key is None and unknown:
            known = ", ".join(k for k, _ in SCORE_KEYS)
            rank_zero_warn(
                f"{name}: score_monitor='auto' recognises none of the logged validation metrics "
                f"{unknown} (it knows {known}), so the best epoch is picked by `{self.monitor}` "
                f"alone. Pass `score_monitor=<key>, score_mode='max' or 'min'` to decide on one "
                f"of them, or `score_monitor=None` to silence this. Logged: {sorted(logs)}.",
                category=RuntimeWarning,
            )
        return key

    def _score(self, logs: Mapping[str, Any]) -> float | None:
        if self._score_key is None:
            return None
        value = _value(logs, self._score_key[0])
        if value is None:
            return None
        return value if self._score_key[1] == "max" else -value

    def _record_train_loss(self, epoch: int, logs: Mapping[str, Any]) -> None:
        """Keep this epoch's training loss for the label-free check (rank 0)."""
        if self.train_monitor is None:
            return
        keys = TRAIN_LOSS_KEYS if self.train_monitor == "auto" else (self.train_monitor,)
        key = next((k for k in keys if k in logs), None)
        if key is not None:
            self._train_losses[int(epoch)] = _value(logs, key)
        elif not self._train_key_missing_warned:
            self._train_key_missing_warned = True
            rank_zero_warn(
                f"{type(self).__name__}: without a validation metric the stop checks its "
                f"label-free signal `{self.monitor}` against the training loss, but none of "
                f"{list(keys)} is logged, so the check is off. Log it with "
                "`self.log('train_loss', loss, on_epoch=True)`, pass `train_monitor=<key>`, or "
                f"`train_monitor=None` to silence this. Logged: {sorted(logs)}.",
                category=RuntimeWarning,
            )

    def _check_label_free(self, trainer: pl.Trainer) -> None:
        """Warn once when a run decided without a validation metric kept a barely-fit epoch.

        The same on every rank: the losses and the rule's state are rank 0's.
        """
        if self._score_key is not None or not self._train_losses or self.signal_warning:
            return
        kept = self.rule.best_epoch
        fraction = kept_loss_fraction(self._train_losses, kept)
        if fraction is None or fraction >= LABEL_FREE_MIN_LOSS_FRACTION:
            return
        first, last = min(self._train_losses), max(self._train_losses)
        self.signal_warning = (
            f"{type(self).__name__}: `{self.monitor}` may not track learning on this run: the "
            f"kept epoch {kept} had made {fraction:.0%} of the training-loss decrease seen by "
            f"epoch {last} ({self._train_losses[first]:.4g} at epoch {first} -> "
            f"{self._train_losses[kept]:.4g} -> {self._train_losses[last]:.4g}), less than "
            f"{LABEL_FREE_MIN_LOSS_FRACTION:.0%}. On the benchmark runs where this happened the "
            "label-free stop mostly kept weights far from the best test accuracy "
            "(benchmarks/RESULTS.md section 13.6). Check the kept weights on a few labelled "
            "samples, or log a validation metric."
        )
        rank_zero_warn(self.signal_warning, category=RuntimeWarning)

    def _restore(self, pl_module: pl.LightningModule) -> None:
        """Load the kept weights into ``pl_module``, if they are this module's (of this fit)."""
        if self._module is None or self._module() is not pl_module:
            return  # e.g. an exception in another callback's setup, before this fit's setup
        if self.restore_best_weights and self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
            self._restored = True

    def _report(self, trainer: pl.Trainer, stop: bool) -> None:
        """Log the first stop (and every evaluation when verbose)."""
        epoch, score, info = self.rule.history[-1]
        name = type(self).__name__
        if stop:
            reason = self.stop_reason or StopReason.PATIENCE
            self.stopping_reason = reason.lightning_reason
            self.stopping_reason_message = (
                f"{name}: {self._why(reason)}; stopping at epoch {epoch} and keeping the "
                f"weights of epoch {self.rule.best_epoch}."
            )
            self._log(trainer, self.stopping_reason_message)
        elif self.verbose:
            self._log(
                trainer,
                f"{name}: epoch {epoch} score {score:.4f} dsmi {info:.3f} best epoch "
                f"{self.rule.best_epoch} ({self.rule.wait}/{self.rule.patience})",
            )

    def _why(self, reason: StopReason) -> str:
        if reason is StopReason.NON_FINITE:
            return f"{self._non_finite or 'a monitored value'} is not finite (a diverged run)"
        if reason is StopReason.MEMORIZATION:
            drop = self.rule.drop_for(False) or 0.0
            return (
                f"held-out `{self.monitor}` stayed below {1 - drop:.0%} of its maximum "
                f"{self.rule.info_max:.3f} for {self.rule.info_patience} evaluations "
                "(memorization)"
            )
        return f"no better held-out score for {self.rule.patience} evaluations"

    def _log(self, trainer: pl.Trainer, message: str) -> None:
        if trainer.world_size == 1 or self.log_rank_zero_only:
            rank_zero_info(message)
        else:
            _LOG.info(f"[rank: {trainer.global_rank}] {message}")


def _skip(trainer: pl.Trainer) -> bool:
    """Whether an evaluation hook runs outside the fit's own evaluations.

    Returns:
        True outside fitting and in the sanity check.
    """
    return trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking
