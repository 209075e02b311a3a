"""OverfittingEarlyStopping across the life of real fits: reuse, resume, divergence, interrupts.

Short digits runs. The expected weights are always the ones a recorder callback copied at the end
of the expected epoch of the same run (before any restore); the expected epochs are derived from
the values that run logged, with the documented rule written out here.
"""

from __future__ import annotations

import math
import pickle
import signal
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.callbacks.early_stopping import EarlyStoppingReason

from lightning_info.callbacks import (
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
    SmoothUniqueInformation,
)
from lightning_info.callbacks.early_stopping import StopReason
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split

DSMI = "info/dsmi_y/penultimate"


class _Weights(pl.Callback):
    """The model's weights and logged values at the end of every epoch (before any restore)."""

    def __init__(self):
        self.states, self.logged = {}, {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()
        }
        self.logged[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items()
        }


class _Net(MLPClassifier):
    """An MLP whose training can be made to diverge or fail at a chosen epoch."""

    def __init__(self, hidden=(128, 64)):
        super().__init__(64, 10, hidden=hidden, lr=1e-2)
        # set after construction: not hyperparameters (a checkpoint stays weights-only loadable)
        self.nan_from = self.fail_at = None
        self.error = RuntimeError

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and (self.current_epoch, batch_idx) == self.fail_at:
            raise self.error("interrupted")
        loss = super().training_step(batch, batch_idx)
        if self.nan_from is not None and self.current_epoch >= self.nan_from:
            loss = loss * math.nan  # a diverged run: NaN gradients, then NaN weights
        return loss


def _net(hidden=(128, 64), **failure):
    net = _Net(hidden)
    for key, value in failure.items():
        setattr(net, key, value)
    return net


def _data(permute):
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    tr = tr[:400]
    ytr = ds.targets[tr]
    if permute:
        ytr, _ = corrupt_labels(ytr, fraction=0.6, num_classes=10, seed=0, mode="flip")
    train = make_loader(ds.inputs[tr], ytr, batch_size=32, shuffle=True, seed=0)
    return train, make_loader(ds.inputs[va], ds.targets[va], batch_size=256)


def _trainer(tmp_path, callbacks, epochs, **kwargs):
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def _fit(tmp_path, stopper, *, epochs, permute=True, monitor=False, seed=0, **net):
    torch.manual_seed(seed)
    model = _net(**net)
    recorder = _Weights()
    extra = [DiffusionSpectralEntropyMonitor(max_samples=200)] if monitor else []
    trainer = _trainer(tmp_path, [*extra, recorder, stopper], epochs)
    trainer.fit(model, *_data(permute))
    return trainer, model, recorder


def _first_best(values):
    return max(range(len(values)), key=lambda e: (values[e], -e))


def _assert_weights(model, state):
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------------------------------
# reuse across fits (a cross-validation loop) and resume from a checkpoint
# ------------------------------------------------------------------------------------------
def test_the_same_stopper_on_a_second_fit_starts_afresh(tmp_path):
    stopper = OverfittingEarlyStopping()
    trainer, first, _ = _fit(tmp_path / "a", stopper, epochs=40, monitor=True)
    assert trainer.should_stop  # the first fit stopped and left its state behind
    first_state = {k: v.clone() for k, v in first.state_dict().items()}
    # a second fold: another model (other initial weights), clean labels, 4 epochs
    trainer, second, recorder = _fit(
        tmp_path / "b", stopper, epochs=4, monitor=True, permute=False, seed=1
    )
    assert not trainer.should_stop  # no false stop carried over from the first fit
    assert trainer.current_epoch == 4
    assert stopper.stopped_epoch == 0
    assert stopper.stop_reason is None
    assert stopper.stopping_reason is EarlyStoppingReason.NOT_STOPPED
    assert [h[0] for h in stopper.rule.history] == [0, 1, 2, 3]
    acc = [recorder.logged[e]["val_acc"] for e in range(4)]
    assert stopper.best_epoch == _first_best(acc)
    _assert_weights(second, recorder.states[stopper.best_epoch])  # its own weights
    assert any(not torch.equal(v, first_state[k]) for k, v in second.state_dict().items())
    copy = pickle.loads(pickle.dumps(stopper))  # as for spawned DDP workers
    assert (copy.best_epoch, copy.rule.history) == (stopper.best_epoch, stopper.rule.history)


class _FailingSetup(pl.Callback):
    def setup(self, trainer, pl_module, stage):
        raise RuntimeError("setup failed")


def test_a_fit_failing_before_its_setup_never_gets_the_previous_fits_weights(tmp_path):
    stopper = OverfittingEarlyStopping()
    _fit(tmp_path / "a", stopper, epochs=3)
    assert stopper.best_epoch is not None  # it holds the first model's kept weights
    torch.manual_seed(1)
    second = _net()
    before = {k: v.clone() for k, v in second.state_dict().items()}
    trainer = _trainer(tmp_path / "b", [_FailingSetup(), stopper], 3)  # fails before its setup
    with pytest.raises(RuntimeError, match="setup failed"):
        trainer.fit(second, *_data(permute=True))
    _assert_weights(second, before)  # on_exception left the new model alone


@pytest.mark.parametrize("same_instance", [True, False], ids=["same-instance", "new-instance"])
def test_resume_continues_the_checkpointed_state(tmp_path, same_instance):
    train, val = _data(permute=True)
    stopper = OverfittingEarlyStopping(patience=30)
    recorder = _Weights()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    torch.manual_seed(0)
    trainer = _trainer(tmp_path, [recorder, stopper, checkpoint], 4, enable_checkpointing=True)
    trainer.fit(_Net(), train, val)
    assert [h[0] for h in stopper.rule.history] == [0, 1, 2, 3]
    resumed = stopper if same_instance else OverfittingEarlyStopping(patience=30)
    later = _Weights()
    trainer = _trainer(tmp_path, [later, resumed], 7, enable_checkpointing=False)
    model = _Net()
    trainer.fit(model, train, val, ckpt_path=str(tmp_path / "last.ckpt"))
    # the resumed fit continued the first one's evaluations instead of starting afresh
    assert [h[0] for h in resumed.rule.history] == list(range(7))
    logged = {**recorder.logged, **later.logged}
    states = {**recorder.states, **later.states}
    acc = [logged[e]["val_acc"] for e in range(7)]
    assert resumed.best_epoch == _first_best(acc)
    _assert_weights(model, states[resumed.best_epoch])


# ------------------------------------------------------------------------------------------
# a diverged run, an exception, Ctrl-C
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("monitor", "options"),
    [(True, {}), (False, {}), (False, {"score_monitor": "val_loss", "score_mode": "min"})],
    ids=["monitor+val_acc", "val_acc-alone", "val_loss-alone"],
)
def test_nan_loss_stops_the_run_and_restores_the_kept_weights(tmp_path, monitor, options):
    stopper = OverfittingEarlyStopping(**options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the monitor warns about the NaN activations
        trainer, model, recorder = _fit(tmp_path, stopper, epochs=12, monitor=monitor, nan_from=3)
    assert trainer.should_stop
    assert stopper.stopped_epoch == 3  # the first evaluation of the diverged weights
    assert trainer.current_epoch == 4
    assert stopper.stop_reason is StopReason.NON_FINITE
    assert stopper.stopping_reason is EarlyStoppingReason.NON_FINITE_METRIC
    assert "not finite" in stopper.stopping_reason_message
    key, sign = ("val_loss", -1) if options else ("val_acc", 1)
    values = [sign * recorder.logged[e][key] for e in range(3)]
    assert stopper.best_epoch == _first_best(values)
    _assert_weights(model, recorder.states[stopper.best_epoch])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_exception_and_ctrl_c_mid_fit_leave_the_kept_weights(tmp_path):
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT after a Ctrl-C
    try:
        for error, expected in [(RuntimeError, RuntimeError), (KeyboardInterrupt, SystemExit)]:
            stopper = OverfittingEarlyStopping()
            recorder = _Weights()
            torch.manual_seed(0)
            model = _net(fail_at=(3, 5), error=error)
            monitor = DiffusionSpectralEntropyMonitor(max_samples=200)
            trainer = _trainer(tmp_path, [monitor, recorder, stopper], 10)
            with pytest.raises(expected):
                trainer.fit(model, *_data(permute=True))
            acc = [recorder.logged[e]["val_acc"] for e in range(3)]
            assert stopper.best_epoch == _first_best(acc)
            _assert_weights(model, recorder.states[stopper.best_epoch])  # not mid-epoch 3
    finally:
        signal.signal(signal.SIGINT, handler)


# ------------------------------------------------------------------------------------------
# the restore comes before any on_fit_end: SUI(linearize_at="final") sees it in either order
# ------------------------------------------------------------------------------------------
EPOCHS = 10


def _sui_run(tmp_path, stop_first):
    # never stops: the weights are restored at the end of training, not at a stop
    stopper = OverfittingEarlyStopping(patience=50, info_drop=None)
    sui = SmoothUniqueInformation(
        linearize_at="final", max_samples=40, max_heldout=20, dirpath=tmp_path
    )
    recorder = _Weights()
    monitor = DiffusionSpectralEntropyMonitor(max_samples=200)
    callbacks = [recorder, stopper, sui] if stop_first else [recorder, sui, stopper]
    callbacks.insert(0, monitor)
    torch.manual_seed(0)
    model = _Net()
    trainer = _trainer(tmp_path, callbacks, EPOCHS)
    trainer.fit(model, *_data(permute=True))
    return trainer, model, recorder, stopper, sui


def test_sui_at_fit_end_sees_the_restored_weights_in_either_callback_order(tmp_path):
    runs = [_sui_run(tmp_path / str(order), order) for order in (True, False)]
    for trainer, model, recorder, stopper, sui in runs:
        assert not trainer.should_stop
        assert stopper.best_epoch < EPOCHS - 1  # the precondition: the kept epoch is not the last
        _assert_weights(model, recorder.states[stopper.best_epoch])
        assert sui.scores_ is not None
    first, second = runs[0][4].scores_, runs[1][4].scores_
    torch.testing.assert_close(first.weight_si, second.weight_si, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(first.predicted, second.predicted)
    # and they are the scores of the restored weights
    trainer, model, _, _, sui = runs[1]
    again = sui.score(model, trainer=trainer, write=False)
    torch.testing.assert_close(again.weight_si, second.weight_si, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------------
# where it evaluates: once per validation when validation is not once per epoch
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"check_val_every_n_epoch": 2}, [1, 3, 5]),
        ({"val_check_interval": 0.5}, [0, 0, 1, 1, 2, 2]),
        ({}, [0, 1, 2]),
    ],
    ids=["every-2-epochs", "twice-per-epoch", "every-epoch"],
)
def test_one_evaluation_per_validation(tmp_path, schedule, expected):
    stopper = OverfittingEarlyStopping(patience=50)
    validations = []

    class Count(pl.Callback):
        def on_validation_end(self, trainer, pl_module):
            validations.append((trainer.current_epoch, float(trainer.callback_metrics["val_acc"])))

    torch.manual_seed(0)
    epochs = max(expected) + 1
    trainer = _trainer(tmp_path, [Count(), stopper], epochs, **schedule)
    trainer.fit(_net(), *_data(permute=False))
    assert [h[0] for h in stopper.rule.history] == expected
    assert [h[1] for h in stopper.rule.history] == [acc for _, acc in validations]
