"""Stopping policies of the overfitting benchmark, replayed offline on recorded curves.

Used by ``benchmarks/overfitting.py analyze``. A policy sees, at each epoch e = 1..E (what a
Lightning callback sees after each training epoch; e = 0 is the initialization, never a
candidate), the logged values, decides whether to stop and which epoch's weights the user ends
up with. ``EarlyStopping`` is replayed with Lightning's rule (an improvement is a strict gain
over the best by more than ``min_delta``; stop once ``patience`` evaluations passed without
one); the best-checkpoint restore keeps the first epoch with the best monitored value, as
``ModelCheckpoint(monitor=..., mode=...)`` does. ``OverfittingEarlyStopping`` is replayed with
its own :class:`~lightning_info.callbacks.early_stopping.StopRule`, the code the callback runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lightning_info.callbacks.dse import DEFAULT_MAX_SAMPLES
from lightning_info.callbacks.early_stopping import StopRule


@dataclass(frozen=True)
class Outcome:
    """Where a policy stopped and which epoch's weights it left the user with."""

    stop_epoch: int  # the last epoch trained (E when it never stopped)
    kept_epoch: int  # the epoch whose weights the user ends up with


def no_stop(n_epochs: int) -> Outcome:
    """Train all epochs and keep the last weights."""
    return Outcome(n_epochs, n_epochs)


def early_stopping(
    values: np.ndarray, mode: str, patience: int = 5, restore: bool = True
) -> Outcome:
    """Lightning's ``EarlyStopping`` (+ best restore) on ``values[1:]`` (index = epoch).

    NaN values count as no improvement (Lightning's ``check_finite=False`` behaviour).
    """
    sign = 1.0 if mode == "max" else -1.0
    best, best_epoch, wait = -math.inf, 1, 0
    n_epochs = len(values) - 1
    for e in range(1, n_epochs + 1):
        v = sign * float(values[e])
        if math.isfinite(v) and v > best:
            best, best_epoch, wait = v, e, 0
        else:
            wait += 1
        if wait >= patience:
            return Outcome(e, best_epoch if restore else e)
    return Outcome(n_epochs, best_epoch if restore else n_epochs)


def stop_rule(
    score: np.ndarray | None,
    info: np.ndarray | None,
    *,
    n_epochs: int | None = None,
    **options: float | int | None,
) -> Outcome:
    """``OverfittingEarlyStopping``'s rule (score: higher = better, or None; info: DSMI, or None
    for the rule without its information terms), restoring the epoch the rule keeps."""
    rule = StopRule(**options)
    n_epochs = n_epochs if n_epochs is not None else len(info if info is not None else score) - 1
    for e in range(1, n_epochs + 1):
        stop, _ = rule.update(
            e,
            None if score is None else float(score[e]),
            None if info is None else float(info[e]),
        )
        if stop:
            return Outcome(e, rule.best_epoch if rule.best_epoch is not None else e)
    return Outcome(n_epochs, rule.best_epoch if rule.best_epoch is not None else n_epochs)


def old_overfitting_stop(
    train_loss: np.ndarray,
    dsmi: np.ndarray,
    num_classes: int = 10,
    window: int = 3,
    patience: int = 2,
    min_loss_drop: float = 0.02,
    min_info_gain: float = 0.05,
    max_info_fraction: float = 0.25,
) -> Outcome:
    """The previous ``OverfittingEarlyStopping`` (level + rate thresholds, no restore)."""
    scale = math.log2(num_classes)
    history: list[tuple[float, float]] = []
    wait = 0
    n_epochs = len(dsmi) - 1
    for e in range(1, n_epochs + 1):
        loss, info = float(train_loss[e]), float(dsmi[e])
        suspicious = False
        if len(history) >= window:
            loss_before, info_before = history[-window]
            drop = (loss_before - loss) / abs(loss_before) if loss_before != 0 else 0.0
            suspicious = (
                drop >= min_loss_drop
                and (info - info_before) / scale < min_info_gain
                and info / scale < max_info_fraction
            )
        history.append((loss, info))
        wait = wait + 1 if suspicious else 0
        if wait >= patience:
            return Outcome(e, e)
    return Outcome(n_epochs, n_epochs)


def regret(test_acc: np.ndarray, outcome: Outcome) -> float:
    """Percentage points below the best test accuracy of epochs 1..E."""
    return 100.0 * (float(np.max(test_acc[1:])) - float(test_acc[outcome.kept_epoch]))


# ------------------------------------------------------------------------------------------
# the policies of the tables: name -> (run -> Outcome); a run is a dict with "curves" (val/test
# accuracy and loss, train loss) and "signals" (the monitor's signals and the probes', see
# _overfitting_signals.py), arrays indexed by epoch
# ------------------------------------------------------------------------------------------
def _sig(run: dict, key: str, n: int = DEFAULT_MAX_SAMPLES) -> np.ndarray:
    """A signal at probe size ``n`` (the monitor's default), or at the size closest to it that
    was computed (digits: its 360 validation samples; the fixed width: 1,000 only)."""
    sizes = [int(k.rsplit("/", 1)[1]) for k in run["signals"] if k.rsplit("/", 1)[0] == key]
    if not sizes:
        raise KeyError(key)
    size = min(sizes, key=lambda m: (abs(m - n), -m))
    return run["signals"][f"{key}/{size}"].numpy()


def _curve(run: dict, key: str) -> np.ndarray:
    return run["curves"][key].numpy()


#: The zero-argument OverfittingEarlyStopping (its defaults), on the monitor's default signal.
DSMI_DEFAULT = "dsmi_y/median"
#: The label-free mode's signal: DSMI with k-means clusters of the held-out features.
LABEL_FREE = "dsmi_z/median"

POLICIES = {
    "no stopping": lambda run: no_stop(len(_curve(run, "test_acc")) - 1),
    "EarlyStopping(val_loss) + restore": lambda run: early_stopping(_curve(run, "val_loss"), "min"),
    "EarlyStopping(val_acc) + restore": lambda run: early_stopping(_curve(run, "val_acc"), "max"),
    "EarlyStopping(val_acc, patience=10) + restore": lambda run: early_stopping(
        _curve(run, "val_acc"), "max", patience=10
    ),
    "ours with patience=5": lambda run: stop_rule(
        _curve(run, "val_acc"), _sig(run, DSMI_DEFAULT), patience=5
    ),
    "EarlyStopping(DSMI(Z;Y), sigma=10) + restore": lambda run: early_stopping(
        _sig(run, "dsmi_y/fixed10"), "max"
    ),
    "EarlyStopping(DSMI(Z;Y), median) + restore": lambda run: early_stopping(
        _sig(run, DSMI_DEFAULT), "max"
    ),
    "previous OverfittingEarlyStopping (sigma=10)": lambda run: old_overfitting_stop(
        _curve(run, "train_loss"), _sig(run, "dsmi_y/fixed10")
    ),
    "OverfittingEarlyStopping() (ours)": lambda run: stop_rule(
        _curve(run, "val_acc"), _sig(run, DSMI_DEFAULT)
    ),
    "ours without the DSMI terms (ablation: = EarlyStopping(val_acc, patience=10) + restore)": (
        lambda run: stop_rule(_curve(run, "val_acc"), None)
    ),
    "ours, DSMI(Z;Y) only (score_monitor=None)": lambda run: stop_rule(
        None, _sig(run, DSMI_DEFAULT)
    ),
    "ours, label-free (OverfittingEarlyStopping.label_free(): dsmi_z)": lambda run: stop_rule(
        None, _sig(run, LABEL_FREE)
    ),
    "EarlyStopping(RankMe) + restore (label-free)": lambda run: early_stopping(
        _sig(run, "rankme"), "max"
    ),
    "our information-only rule on RankMe (label-free)": lambda run: stop_rule(
        None, _sig(run, "rankme")
    ),
    "EarlyStopping(DSE, median) + restore (label-free)": lambda run: early_stopping(
        _sig(run, "dse/median"), "max"
    ),
}
