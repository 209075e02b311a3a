"""OverfittingEarlyStopping: the rule on written curves, and real digits runs with its callback.

The rule's expectations are derived here from its documented definition, never from its output:
with a score, best = first maximum of the score, stop after ``patience`` evaluations with neither a
new best score nor a new DSMI maximum, or after ``info_patience`` evaluations below
``(1 - info_drop)`` times the running maximum of DSMI; without a score, the kept epoch is the last
one within ``info_tolerance`` of the running maximum and only the DSMI drop stops. The callback's
restore is checked against the weights recorded at every epoch of the same run.
"""

from __future__ import annotations

import math
import pickle
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor, OverfittingEarlyStopping
from lightning_info.callbacks.early_stopping import StopRule
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split


def _reference(scores, infos, patience, info_drop, info_patience, info_tolerance=0.05):
    """The documented rule, written out: (stop index or None, kept index)."""
    best, kept, wait, top, low = -math.inf, None, 0, -math.inf, 0
    for i, (s, info) in enumerate(zip(scores, infos)):
        new_top = info > top
        top = max(top, info)
        low = low + 1 if (info_drop is not None and info < (1 - info_drop) * top) else 0
        if s is not None:  # a validation score picks the epoch; DSMI growth is progress too
            if s > best:
                best, kept = s, i
            wait = 0 if (kept == i or new_top) else wait + 1
            if (info_drop is not None and low >= info_patience) or wait >= patience:
                return i, kept
        else:  # information only: the end of the plateau, and only the drop stops
            if info >= (1 - info_tolerance) * top:
                kept = i
            if info_drop is not None and low >= info_patience:
                return i, kept
    return None, kept


def _replay(rule, scores, infos):
    for i, (s, info) in enumerate(zip(scores, infos)):
        stop, _ = rule.update(i, s, info)
        if stop:
            return i, rule.best_epoch
    return None, rule.best_epoch


CURVES = {
    # noisy labels: accuracy and DSMI peak early, then memorization erodes both
    "memorizing": (
        [0.5, 0.7, 0.8, 0.82, 0.81, 0.79, 0.75, 0.7, 0.66, 0.6, 0.58, 0.57],
        [0.6, 1.0, 1.2, 1.25, 1.2, 1.1, 0.95, 0.9, 0.8, 0.75, 0.7, 0.7],
    ),
    # clean labels: accuracy creeps up on a plateau, DSMI holds
    "clean": (
        [0.6, 0.8, 0.9, 0.92, 0.93, 0.93, 0.935, 0.934, 0.936, 0.935, 0.934, 0.933, 0.932],
        [0.8, 1.2, 1.3, 1.33, 1.32, 1.31, 1.31, 1.3, 1.3, 1.29, 1.29, 1.28, 1.28],
    ),
    # a validation metric that only improves late, while DSMI dips and recovers
    "late": (
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.7, 0.71, 0.72, 0.73, 0.74, 0.75],
        [1.0, 1.1, 0.8, 0.85, 1.0, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1, 1.1],
    ),
    # a slow start on very noisy labels: accuracy flat for 8 evaluations while DSMI grows
    "slow start": (
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.3, 0.5, 0.55, 0.5, 0.4, 0.3, 0.25, 0.2],
        [0.70, 0.71, 0.73, 0.75, 0.78, 0.8, 0.83, 0.86, 0.95, 1.0, 0.98, 0.9, 0.8, 0.75, 0.7, 0.6],
    ),
}


@pytest.mark.parametrize("name", list(CURVES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"patience": 2},
        {"info_drop": None},
        {"info_drop": 0.1, "info_patience": 1},
        {"info_drop": 0.3, "info_patience": 3},
    ],
    ids=["defaults", "patience2", "no-info", "drop0.1", "drop0.3x3"],
)
def test_rule_follows_its_definition(name, options):
    scores, infos = CURVES[name]
    rule = StopRule(**options)
    expected = _reference(scores, infos, rule.patience, rule.info_drop, rule.info_patience)
    assert _replay(rule, scores, infos) == expected
    label_free = StopRule(**options)
    expected = _reference(
        [None] * len(infos), infos, rule.patience, rule.info_drop, rule.info_patience
    )
    assert _replay(label_free, [None] * len(infos), infos) == expected


def test_growing_information_is_progress_and_information_only_keeps_the_plateau_end():
    scores, infos = CURVES["slow start"]
    stop, kept = _replay(StopRule(), scores, infos)
    assert kept == 10  # the accuracy peak, reached because DSMI growth kept the run going
    plain = StopRule(info_drop=None)
    assert _replay(plain, [0.1] * 8, infos[:8])[0] is None  # DSMI still rising: no stop
    stop, kept = _replay(StopRule(), [None] * len(infos), infos)
    assert kept == 10  # last evaluation within 5 % of the DSMI maximum (0.98 >= 0.95)
    assert stop == 14  # the second evaluation below 0.8 x 1.0 (0.75, then 0.7)


def test_rule_stops_memorizing_runs_early_and_keeps_the_best_epoch():
    scores, infos = CURVES["memorizing"]
    stop, best = _replay(StopRule(), scores, infos)
    assert best == 3  # the accuracy peak
    assert stop is not None
    assert stop < 3 + StopRule().patience  # the DSMI drop stops before patience runs out
    assert _replay(StopRule(), *CURVES["clean"])[0] is None  # a clean plateau trains on


def test_rule_skips_non_finite_values_and_roundtrips_its_state():
    rule = StopRule(patience=3)
    rule.update(0, 0.5, 1.0)
    rule.update(1, math.nan, math.nan)  # never a best, never a DSMI drop
    assert (rule.best_epoch, rule.wait, rule.info_low) == (0, 1, 0)
    copy = StopRule(patience=3)
    copy.load_state_dict(rule.state_dict())
    assert repr(copy) == repr(rule)  # repr: NaN entries compare equal
    assert repr(pickle.loads(pickle.dumps(rule))) == repr(rule)


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="info_drop"):
        OverfittingEarlyStopping(info_drop=1.5)
    with pytest.raises(ValueError, match="patience"):
        OverfittingEarlyStopping(patience=0)
    with pytest.raises(ValueError, match="score_mode"):
        OverfittingEarlyStopping(score_monitor="val_f1", score_mode="up")
    with pytest.raises(TypeError, match="score_monitor"):
        OverfittingEarlyStopping(score_monitor=3)
    assert isinstance(OverfittingEarlyStopping(), EarlyStopping)
    assert (
        OverfittingEarlyStopping().state_key
        != OverfittingEarlyStopping(score_monitor=None).state_key
    )


# ------------------------------------------------------------------------------------------
# real runs on digits with the callback
# ------------------------------------------------------------------------------------------
class _Weights(pl.Callback):
    """The model's weights and logged values at the end of every epoch (before any restore)."""

    def __init__(self):
        self.states, self.logged = {}, {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = {
            k: v.clone() for k, v in pl_module.state_dict().items()
        }
        self.logged[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items()
        }


def _fit(tmp_path, stopper, *, permute: bool, epochs: int, monitor: bool = True):
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    tr = tr[:400]  # a small training set is memorised within a few epochs
    ytr = ds.targets[tr]
    if permute:
        ytr, _ = corrupt_labels(ytr, fraction=0.6, num_classes=10, seed=0, mode="flip")
    torch.manual_seed(0)

    class NoNumClasses(MLPClassifier):  # most users' modules have no `num_classes`
        def __init__(self):
            super().__init__(64, 10, hidden=(256, 128), lr=1e-2)
            del self.num_classes

    recorder = _Weights()
    callbacks = [DiffusionSpectralEntropyMonitor(max_samples=200)] if monitor else []
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        callbacks=[*callbacks, recorder, stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        deterministic=True,
    )
    model = NoNumClasses()
    trainer.fit(
        model,
        make_loader(ds.inputs[tr], ytr, batch_size=32, shuffle=True, seed=0),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=256),
    )
    return trainer, model, recorder


def test_zero_arguments_on_noisy_labels_stop_and_restore_the_best_epoch(tmp_path):
    stopper = OverfittingEarlyStopping()
    trainer, model, recorder = _fit(tmp_path, stopper, permute=True, epochs=40)
    assert trainer.should_stop
    assert 0 < stopper.stopped_epoch < 39
    # the best epoch is the first with the highest logged val_acc among the evaluated epochs
    seen = {e: recorder.logged[e]["val_acc"] for e in recorder.logged if e <= stopper.stopped_epoch}
    best = max(seen, key=lambda e: (seen[e], -e))
    assert stopper.best_epoch == best
    # the weights the user ends up with are that epoch's
    for key, value in model.state_dict().items():
        assert torch.equal(value, recorder.states[best][key]), key
    assert [h[0] for h in stopper.rule.history] == list(range(stopper.stopped_epoch + 1))


def test_missing_monitor_key_is_warned_at_the_first_evaluation(tmp_path):
    stopper = OverfittingEarlyStopping()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, stopper, permute=False, epochs=2, monitor=False)
    missing = [w for w in caught if "is not logged" in str(w.message)]
    assert len(missing) == 1
    assert "val_acc" in str(missing[0].message)  # the keys that are logged are listed
    assert stopper.stopped_epoch == 0


def test_label_free_mode_and_resume_state(tmp_path):
    stopper = OverfittingEarlyStopping(score_monitor=None)
    _, model, recorder = _fit(tmp_path, stopper, permute=False, epochs=3)
    key = "info/dsmi_y/penultimate"
    seen = {e: recorder.logged[e][key] for e in recorder.logged}
    # information only: the last epoch within info_tolerance of the running maximum
    kept = [e for e in sorted(seen) if seen[e] >= 0.95 * max(seen[j] for j in seen if j <= e)]
    assert stopper.best_epoch == kept[-1]
    state = stopper.state_dict()
    assert set(state["best_state"]) == set(model.state_dict())
    torch.save(state, tmp_path / "state.pt")
    resumed = OverfittingEarlyStopping(score_monitor=None)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert repr(resumed.rule) == repr(stopper.rule)
    assert resumed.best_epoch == stopper.best_epoch
