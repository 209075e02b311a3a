"""OverfittingEarlyStopping: the rule on written curves, and real digits runs with its callback.

The rule's expectations are derived here from its documented definition, never from its output:
with a score, best = first maximum of the score, stop after ``patience`` evaluations with neither a
new best score nor a new DSMI maximum (and, only when ``info_drop`` is a number, after
``info_patience`` evaluations below ``(1 - info_drop)`` times the running maximum of DSMI); without
a score, the kept epoch is the last one within ``info_tolerance`` of the running maximum and only
the DSMI drop (``info_drop="auto"``: 0.2) stops. A property test compares the default rule with a
score against a brute-force window rule on random curves. The callback's restore is checked
against the weights recorded at every epoch of the same run.
"""

from __future__ import annotations

import ast
import math
import pickle
import re
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

import lightning_info.callbacks.early_stopping as early_stopping_module
from lightning_info.callbacks import DiffusionSpectralEntropyMonitor, OverfittingEarlyStopping
from lightning_info.callbacks.early_stopping import StopReason, StopRule
from lightning_info.models import MLPClassifier
from lightning_info.utilities.compat import callback_state_key
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split


def _reference(scores, infos, patience, info_drop, info_patience, info_tolerance=0.05):
    """The documented rule, written out: (stop index or None, kept index)."""
    best, kept, wait, top, low = -math.inf, None, 0, -math.inf, 0
    for i, (s, info) in enumerate(zip(scores, infos)):
        drop = (None if s is not None else 0.2) if info_drop == "auto" else info_drop
        new_top = info > top
        top = max(top, info)
        low = low + 1 if (drop is not None and info < (1 - drop) * top) else 0
        if s is not None:  # a validation score picks the epoch; DSMI growth is progress too
            if s > best:
                best, kept = s, i
            wait = 0 if (kept == i or new_top) else wait + 1
            if (drop is not None and low >= info_patience) or wait >= patience:
                return i, kept
        else:  # information only: the end of the plateau, and only the drop stops
            if info >= (1 - info_tolerance) * top:
                kept = i
            if drop is not None and low >= info_patience:
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
    # held-out DSMI falls from the start while the validation metric still climbs (issue 19's
    # held-out task): the memorization stop would end it at evaluation 2
    "dsmi falls while learning": (
        [0.24, 0.28, 0.31, 0.34, 0.37, 0.39, 0.41, 0.42, 0.43, 0.43, 0.42, 0.42],
        [0.72, 0.70, 0.56, 0.55, 0.55, 0.54, 0.53, 0.52, 0.51, 0.50, 0.50, 0.49],
    ),
}


@pytest.mark.parametrize("name", list(CURVES))
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"patience": 2},
        {"info_drop": None},
        {"info_drop": 0.2},
        {"info_drop": 0.1, "info_patience": 1},
        {"info_drop": 0.3, "info_patience": 3},
    ],
    ids=["defaults", "patience2", "no-info", "drop0.2", "drop0.1", "drop0.3x3"],
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


def _window_rule(scores, infos, patience):
    """EarlyStopping on the score, extended by new information maxima, as a sliding window.

    Written independently of the rule's counters: the run stops at the first evaluation i whose
    last ``patience`` evaluations (i - patience + 1 .. i, none of them the first) all brought
    neither a score above every earlier score nor (with information) an information value above
    every earlier one; the kept evaluation is the first argmax of the score up to the stop.
    """

    def progress(j):
        if scores[j] > max(scores[:j]):
            return True
        return infos is not None and infos[j] > max(infos[:j])

    stop = next(
        (
            i
            for i in range(len(scores))
            if i >= patience and not any(progress(j) for j in range(i - patience + 1, i + 1))
        ),
        None,
    )
    seen = scores[: len(scores) if stop is None else stop + 1]
    return stop, seen.index(max(seen))


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data())
def test_default_rule_with_a_score_never_stops_while_the_score_improves(data):
    n = data.draw(st.integers(1, 40), label="n")
    patience = data.draw(st.integers(1, 6), label="patience")
    # coarse values: ties and plateaus are frequent, as with accuracies on a small set
    scores = [v / 8 for v in data.draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))]
    infos = data.draw(
        st.one_of(
            st.none(),
            st.lists(st.integers(0, 12), min_size=n, max_size=n).map(lambda v: [x / 6 for x in v]),
        ),
        label="infos",
    )
    rule = StopRule(patience=patience)  # the default info_drop="auto"
    stop, kept = _replay(rule, scores, [None] * n if infos is None else infos)
    assert (stop, kept) == _window_rule(scores, infos, patience)
    if stop is not None:  # the score did not improve in the last `patience` evaluations
        assert all(scores[j] <= max(scores[:j]) for j in range(stop - patience + 1, stop + 1))
        assert rule.reason is StopReason.PATIENCE
    seen = scores[: n if stop is None else stop + 1]
    assert kept == seen.index(max(seen))  # the kept epoch is the first argmax of the score


def test_growing_information_is_progress_and_information_only_keeps_the_plateau_end():
    scores, infos = CURVES["slow start"]
    stop, kept = _replay(StopRule(), scores, infos)
    assert kept == 10  # the accuracy peak, reached because DSMI growth kept the run going
    plain = StopRule(info_drop=None)
    assert _replay(plain, [0.1] * 8, infos[:8])[0] is None  # DSMI still rising: no stop
    stop, kept = _replay(StopRule(), [None] * len(infos), infos)
    assert kept == 10  # last evaluation within 5 % of the DSMI maximum (0.98 >= 0.95)
    assert stop == 14  # the second evaluation below 0.8 x 1.0 (0.75, then 0.7)


def test_memorization_stop_is_opt_in_with_a_score():
    scores, infos = CURVES["memorizing"]
    stop, best = _replay(StopRule(), scores, infos)
    assert (stop, best) == (None, 3)  # by default the score decides: 8 < 10 evaluations since
    stop, best = _replay(StopRule(info_drop=0.2), scores, infos)
    assert best == 3  # the accuracy peak
    assert stop is not None
    assert stop < 3 + StopRule().patience  # the DSMI drop stops before patience runs out
    assert _replay(StopRule(info_drop=0.2), *CURVES["clean"])[0] is None  # a clean plateau
    # the held-out task of issue 19: DSMI falls while accuracy climbs until evaluation 8
    scores, infos = CURVES["dsmi falls while learning"]
    assert _replay(StopRule(info_drop=0.2), scores, infos) == (3, 3)  # the opt-in stop cuts it
    assert _replay(StopRule(), scores, infos) == (None, 8)  # the default keeps the best epoch


def test_rule_stops_on_non_finite_values_and_roundtrips_its_state(tmp_path):
    lenient = StopRule(patience=3, check_finite=False)
    lenient.update(0, 0.5, 1.0)
    assert lenient.update(1, math.nan, math.nan) == (False, False)  # only no progress
    assert (lenient.best_epoch, lenient.wait, lenient.info_low) == (0, 1, 0)
    for score, info in [(math.nan, 1.1), (0.6, math.inf), (None, math.nan)]:
        rule = StopRule(patience=3)
        rule.update(0, 0.5, 1.0)
        assert rule.update(1, score, info) == (True, False)
        assert rule.reason is StopReason.NON_FINITE
        assert rule.best_epoch == 0  # a NaN is never the epoch to keep
    copy = StopRule(patience=3)
    copy.load_state_dict(rule.state_dict())
    assert repr(copy) == repr(rule)  # repr: NaN entries compare equal
    assert repr(pickle.loads(pickle.dumps(rule))) == repr(rule)
    torch.save(rule.state_dict(), tmp_path / "rule.pt")
    loaded = StopRule(patience=3)
    loaded.load_state_dict(torch.load(tmp_path / "rule.pt", weights_only=True))
    assert loaded.reason is StopReason.NON_FINITE
    loaded.reset()
    assert repr(loaded) == repr(StopRule(patience=3))


def test_stop_reasons_map_to_lightning_reasons():
    assert StopReason.MEMORIZATION.lightning_reason is EarlyStoppingReason.DIVERGENCE_THRESHOLD
    assert StopReason.PATIENCE.lightning_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert StopReason.NON_FINITE.lightning_reason is EarlyStoppingReason.NON_FINITE_METRIC
    assert StopReason("memorization") is StopReason.MEMORIZATION
    assert str(StopReason.NON_FINITE) == "non_finite"


def test_bad_options_name_the_argument():
    with pytest.raises(ValueError, match="info_drop"):
        OverfittingEarlyStopping(info_drop=1.5)
    with pytest.raises(ValueError, match=r"info_drop.*'auto'"):
        OverfittingEarlyStopping(info_drop="always")
    with pytest.raises(ValueError, match="patience"):
        OverfittingEarlyStopping(patience=0)
    with pytest.raises(ValueError, match="score_mode"):
        OverfittingEarlyStopping(score_monitor="val_f1", score_mode="up")
    with pytest.raises(TypeError, match="score_monitor"):
        OverfittingEarlyStopping(score_monitor=3)
    with pytest.raises(TypeError, match="prefix"):
        OverfittingEarlyStopping.label_free(prefix=None)
    assert isinstance(OverfittingEarlyStopping(), EarlyStopping)
    assert (
        OverfittingEarlyStopping().state_key
        != OverfittingEarlyStopping(score_monitor=None).state_key
    )


def test_label_free_takes_the_monitors_prefix():
    assert OverfittingEarlyStopping.label_free().monitor == "info/dsmi_z/penultimate"
    stopper = OverfittingEarlyStopping.label_free("net.2", prefix="probe/", patience=3)
    assert (stopper.monitor, stopper.score_monitor) == ("probe/dsmi_z/net.2", None)
    monitor = DiffusionSpectralEntropyMonitor(quantities=("dsmi_z",), log_key_prefix="probe/")
    assert stopper.monitor in monitor.keys_for("net.2")  # the key the monitor logs


def test_state_key_matches_lightnings_format():
    stopper = OverfittingEarlyStopping()
    expected = (
        "OverfittingEarlyStopping{'monitor': 'info/dsmi_y/penultimate', 'score_monitor': 'auto'}"
    )
    assert stopper.state_key == expected  # checkpoints of earlier versions stay readable

    class Bare:  # no Lightning method: the same format, built by the fallback
        pass

    assert callback_state_key(Bare(), a=1) == Bare.__qualname__ + "{'a': 1}"
    assert callback_state_key(pl.Callback(), a=1) == pl.Callback()._generate_state_key(a=1)


def test_no_access_to_lightning_privates():
    """Every `x._name` in the module is one of its own: defined or assigned in the module."""
    path = Path(early_stopping_module.__file__)
    tree = ast.parse(path.read_text())
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own |= {
        t.attr
        for n in ast.walk(tree)
        if isinstance(n, (ast.Assign, ast.AnnAssign))
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        for t in ([t] if not isinstance(t, ast.Tuple) else t.elts)
        if isinstance(t, ast.Attribute)
    }
    private = {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
    }
    dunder = {a for a in private if re.fullmatch(r"__\w+__", a)}
    assert private - dunder - own == set()
    assert "_run_early_stopping_check" not in own  # no override of Lightning's private check
    assert "_log_info" not in path.read_text()


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


class NoNumClasses(MLPClassifier):  # most users' modules have no `num_classes`
    def __init__(self):
        super().__init__(64, 10, hidden=(256, 128), lr=1e-2)
        del self.num_classes


class F1Only(NoNumClasses):
    """Logs only a validation metric that ``score_monitor="auto"`` does not know."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("valid_f1_macro", (self(x).argmax(1) == y).float().mean())


def _fit(
    tmp_path, stopper, *, permute: bool, epochs: int, monitor: bool = True, model=None, seed=0
):
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    tr = tr[:400]  # a small training set is memorised within a few epochs
    ytr = ds.targets[tr]
    if permute:
        ytr, _ = corrupt_labels(ytr, fraction=0.6, num_classes=10, seed=0, mode="flip")
    torch.manual_seed(seed)
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
    model = NoNumClasses() if model is None else model()
    trainer.fit(
        model,
        make_loader(ds.inputs[tr], ytr, batch_size=32, shuffle=True, seed=0),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=256),
    )
    return trainer, model, recorder


def _early_stopping(values, patience):
    """Lightning's EarlyStopping (max mode) + best restore, written out: (stop, best) epochs."""
    best = 0
    for e in range(1, len(values)):
        if values[e] > values[best]:
            best = e
        if e - best >= patience:
            return e, best
    return None, best


def _assert_weights(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_zero_arguments_on_noisy_labels_stop_and_restore_the_best_epoch(tmp_path):
    stopper = OverfittingEarlyStopping()
    trainer, model, recorder = _fit(tmp_path, stopper, permute=True, epochs=40)
    assert trainer.should_stop
    assert 0 < stopper.stopped_epoch < 39
    assert stopper.stop_reason is StopReason.PATIENCE  # no memorization stop by default
    assert stopper.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED
    # the best epoch is the first with the highest logged val_acc among the evaluated epochs
    seen = {e: recorder.logged[e]["val_acc"] for e in recorder.logged if e <= stopper.stopped_epoch}
    best = max(seen, key=lambda e: (seen[e], -e))
    assert stopper.best_epoch == best
    # it stopped `patience` evaluations after the last progress (best val_acc or DSMI maximum)
    dsmi = [recorder.logged[e]["info/dsmi_y/penultimate"] for e in sorted(seen)]
    last = max(
        e
        for e in seen
        if e == 0 or seen[e] > max(seen[j] for j in range(e)) or dsmi[e] > max(dsmi[:e])
    )
    assert stopper.stopped_epoch == last + stopper.rule.patience
    _assert_weights(model, recorder.states[best])  # the weights the user ends up with
    assert [h[0] for h in stopper.rule.history] == list(range(stopper.stopped_epoch + 1))


def test_works_alone_as_early_stopping_with_best_restore(tmp_path):
    stopper = OverfittingEarlyStopping(patience=4)
    trainer, model, recorder = _fit(tmp_path, stopper, permute=True, epochs=40, monitor=False)
    acc = [recorder.logged[e]["val_acc"] for e in sorted(recorder.logged)]
    stop, best = _early_stopping(acc, patience=4)
    assert stop is not None  # the precondition of this test: the baseline stops
    assert (stopper.stopped_epoch, stopper.best_epoch) == (stop, best)
    assert trainer.current_epoch == stop + 1  # the trainer stopped there
    _assert_weights(model, recorder.states[best])


def test_nothing_logged_to_decide_on_is_warned_once(tmp_path):
    stopper = OverfittingEarlyStopping(score_monitor=None)  # and no monitor attached
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, stopper, permute=False, epochs=2, monitor=False)
    missing = [w for w in caught if "nothing is stopped" in str(w.message)]
    assert len(missing) == 1
    assert "val_acc" in str(missing[0].message)  # the keys that are logged are listed
    assert stopper.stopped_epoch == 0
    assert stopper.best_epoch is None


def test_unrecognised_validation_metric_is_warned_once_and_dsmi_decides(tmp_path):
    stopper = OverfittingEarlyStopping()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, recorder = _fit(tmp_path, stopper, permute=False, epochs=3, model=F1Only)
    named = [w for w in caught if "valid_f1_macro" in str(w.message)]
    assert len(named) == 1
    assert "score_monitor=" in str(named[0].message)
    # information only: the last epoch within info_tolerance of the running maximum
    key = "info/dsmi_y/penultimate"
    seen = {e: recorder.logged[e][key] for e in recorder.logged}
    kept = [e for e in sorted(seen) if seen[e] >= 0.95 * max(seen[j] for j in seen if j <= e)]
    assert stopper.best_epoch == kept[-1]
    assert [h[0] for h in stopper.rule.history] == [0, 1, 2]


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


# ------------------------------------------------------------------------------------------
# the label-free check: the kept epoch's share of the training-loss decrease
# ------------------------------------------------------------------------------------------
def test_kept_loss_fraction_is_the_share_of_the_decrease_made_by_the_kept_epoch():
    losses = {0: 2.0, 1: 1.5, 2: 0.5, 3: 0.25, 4: 0.0}
    for kept, want in [(0, 0.0), (1, 0.25), (2, 0.75), (3, 0.875), (4, 1.0)]:
        assert early_stopping_module.kept_loss_fraction(losses, kept) == pytest.approx(want)
    # the first and last *recorded* epochs bound the decrease (a resumed run starts later)
    assert early_stopping_module.kept_loss_fraction({3: 1.0, 5: 0.5, 9: 0.0}, 5) == 0.5
    for bad_losses, kept in [
        (losses, None),  # nothing kept yet
        (losses, 7),  # the kept epoch's loss was not recorded
        ({0: 1.0, 1: 1.0}, 0),  # no decrease: undefined
        ({0: 1.0, 1: 2.0}, 0),  # the loss rose
        ({0: 1.0, 1: math.nan, 2: 0.5}, 1),  # non-finite
    ]:
        assert early_stopping_module.kept_loss_fraction(bad_losses, kept) is None


def _scripted_signal(values, log_train_loss=True):
    """A module that logs ``values[epoch]`` as the label-free DSMI (no monitor needed)."""

    class Scripted(NoNumClasses):
        def on_validation_epoch_end(self):
            self.log("info/dsmi_z/penultimate", float(values[self.current_epoch]))

        def training_step(self, batch, batch_idx):
            if log_train_loss:
                return super().training_step(batch, batch_idx)
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

    return Scripted


def _label_free_fit(tmp_path, values, log_train_loss=True, **kwargs):
    stopper = OverfittingEarlyStopping.label_free(**kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer, _, recorder = _fit(
            tmp_path,
            stopper,
            permute=False,
            epochs=len(values),
            monitor=False,
            model=_scripted_signal(values, log_train_loss),
        )
    return stopper, recorder, [str(w.message) for w in caught]


def test_label_free_stop_warns_when_it_keeps_a_barely_trained_epoch(tmp_path):
    # the signal peaks at the first epoch and falls 20 % by epoch 3: the stop keeps epoch 0
    stopper, recorder, messages = _label_free_fit(tmp_path, [1.0, 0.9, 0.85, 0.75, 0.7, 0.6])
    assert (stopper.stopped_epoch, stopper.best_epoch) == (4, 0)
    loss = {e: recorder.logged[e]["train_loss"] for e in recorder.logged}
    share = (loss[0] - loss[0]) / (loss[0] - loss[4])  # the kept epoch is the first one
    warned = [m for m in messages if "may not track learning" in m]
    assert len(warned) == 1
    assert warned[0] == stopper.signal_warning
    assert f"made {share:.0%} of the training-loss decrease" in warned[0]
    assert "kept epoch 0" in warned[0]
    assert "by epoch 4" in warned[0]


def test_label_free_stop_is_silent_when_the_kept_epoch_made_most_of_the_decrease(tmp_path):
    # a rising signal: the stop keeps the last epoch, which made all of the decrease
    stopper, _recorder, messages = _label_free_fit(tmp_path, [0.5, 0.6, 0.7, 0.8])
    assert stopper.best_epoch == 3
    assert stopper.stopped_epoch == 0
    assert stopper.signal_warning is None
    assert not [m for m in messages if "may not track" in m or "check is off" in m]


def test_label_free_check_without_a_training_loss_says_it_is_off(tmp_path):
    values = [1.0, 0.9, 0.85, 0.75, 0.7, 0.6]
    stopper, _, messages = _label_free_fit(tmp_path, values, log_train_loss=False)
    off = [m for m in messages if "check is off" in m]
    assert len(off) == 1
    assert "train_monitor=" in off[0]
    assert "info/dsmi_z/penultimate" in off[0]
    assert stopper.best_epoch == 0
    assert stopper.signal_warning is None
    # and it is silent when the user turns the check off
    quiet, _, messages = _label_free_fit(tmp_path, values, False, train_monitor=None)
    assert not [m for m in messages if "check is off" in m or "may not track" in m]
    assert quiet.best_epoch == 0


def test_label_free_check_state_survives_a_resume(tmp_path):
    stopper, recorder, _ = _label_free_fit(tmp_path, [1.0, 0.9, 0.85, 0.75, 0.7, 0.6])
    state = stopper.state_dict()
    torch.save(state, tmp_path / "state.pt")
    resumed = OverfittingEarlyStopping.label_free()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    logged = {e: recorder.logged[e]["train_loss"] for e in recorder.logged if e <= 4}
    assert resumed._train_losses == pytest.approx(logged)
