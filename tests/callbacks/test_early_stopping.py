"""OverfittingEarlyStopping: the rule on synthetic curves, and real digits runs (clean vs permuted)."""

from __future__ import annotations

import math
import pickle
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor, OverfittingEarlyStopping
from lightning_info.metrics import DiffusionSpectralEntropy
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split


def _run_rule(curve, **kwargs):
    stopper = OverfittingEarlyStopping(num_classes=10, **kwargs)
    for epoch, (loss, dsmi) in enumerate(curve):
        if stopper.observe(epoch, loss, dsmi):
            return stopper.stopped_epoch, stopper
    return None, stopper


# The reference trial of issue 3 (held-out DSMI creeping 0.02 -> 0.25 bit at 0.01-0.04 bit/epoch
# while memorising): the training loss falls ~3 %/epoch.
CREEP_DSMI = [0.02, 0.03, 0.07, 0.08, 0.10, 0.12, 0.13, 0.16, 0.17, 0.19, 0.21, 0.25]
CREEP = [(2.30 * 0.97**e, i) for e, i in enumerate(CREEP_DSMI)]


def test_creeping_memorisation_is_stopped_where_plain_early_stopping_never_fires():
    stopped, stopper = _run_rule(CREEP)
    # evaluations 3 and 4 are the first two with a full window and both are suspicious
    assert stopped == 4
    assert [h[3] for h in stopper.history] == [False, False, False, True, True]
    assert "kept falling" in stopper.stopping_reason_message

    plain = EarlyStopping(monitor="dsmi", mode="max", min_delta=0.02, patience=3)
    fired = [plain._evaluate_stopping_criteria(torch.tensor(i))[0] for i in CREEP_DSMI]
    assert not any(fired)


def test_healthy_run_trains_on_even_when_dsmi_saturates():
    # fast rise to a high level, then a plateau with slightly falling DSMI while the loss -> 0
    dsmi = [0.3, 1.0, 1.4, 1.6, 1.7, 1.72, 1.73, 1.72, 1.71, 1.70, 1.69, 1.68]
    curve = [(2.2 * 0.6**e, i) for e, i in enumerate(dsmi)]
    assert _run_rule(curve)[0] is None


def test_slow_early_learning_from_a_low_level_is_not_stopped():
    # loss falls but DSMI gains >= 5 % of log2(10) per window: information follows the fit
    curve = [(2.3 - 0.1 * e, 0.02 + 0.07 * e) for e in range(12)]
    assert _run_rule(curve)[0] is None


def test_flat_loss_is_not_memorisation():
    curve = [(2.30 - 0.001 * e, 0.02 + 0.001 * e) for e in range(15)]
    assert _run_rule(curve)[0] is None


def test_suspicion_must_be_consecutive():
    # suspicious at 3, then a burst of held-out information at 4 resets the count
    curve = CREEP[:4] + [(CREEP[4][0], 0.6)] + [(2.0 * 0.97**e, 0.6 + 0.001 * e) for e in range(3)]
    stopped, stopper = _run_rule(curve)
    flags = [h[3] for h in stopper.history]
    assert flags[3] is True
    assert flags[4] is False
    assert stopped is None or stopped >= 6


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [("patience", 3, 5), ("window", 2, 3), ("max_info_fraction", 0.02, None)],
    ids=["patience3", "window2", "low_level_cap"],
)
def test_options_move_the_stop_as_documented(option, value, expected):
    assert _run_rule(CREEP, **{option: value})[0] == expected


def test_non_finite_values_are_never_suspicious():
    curve = [*CREEP[:3], (math.nan, 0.08), (2.0, math.nan)]
    stopped, stopper = _run_rule(curve)
    assert stopped is None
    assert [h[3] for h in stopper.history][3:] == [False, False]


def test_state_roundtrip_and_pickle():
    _, stopper = _run_rule(CREEP[:4])
    fresh = OverfittingEarlyStopping(num_classes=10)
    fresh.load_state_dict(stopper.state_dict())
    assert fresh.history == stopper.history
    assert fresh.wait_count == stopper.wait_count
    assert pickle.loads(pickle.dumps(stopper)).history == stopper.history
    assert fresh.state_key != OverfittingEarlyStopping(loss_monitor="loss").state_key


def test_bad_options_and_missing_num_classes():
    with pytest.raises(ValueError, match="min_loss_drop"):
        OverfittingEarlyStopping(min_loss_drop=0)
    with pytest.raises(ValueError, match="window"):
        OverfittingEarlyStopping(window=0)
    with pytest.raises(ValueError, match="num_classes"):
        OverfittingEarlyStopping(num_classes=1)
    trainer = SimpleNamespace(val_check_interval=1.0, check_val_every_n_epoch=1)
    stopper = OverfittingEarlyStopping()
    with pytest.raises(ValueError, match="num_classes"):
        stopper.setup(trainer, pl.LightningModule(), "fit")
    stopper.setup(trainer, MLPClassifier(64, 7), "fit")
    assert stopper.num_classes == 7


# ------------------------------------------------------------------------------------------
# real runs on digits: the same network, clean vs permuted training labels
# ------------------------------------------------------------------------------------------
def _fit(permute: bool, max_epochs: int, tmp_path):
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    tr = tr[:400]  # a small training set is memorised within a few epochs
    ytr = ds.targets[tr]
    if permute:
        ytr, _ = corrupt_labels(ytr, fraction=1.0, num_classes=10, seed=0, mode="permute")
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(256, 128), lr=1e-2)
    stopper = OverfittingEarlyStopping()  # defaults
    monitor = DiffusionSpectralEntropyMonitor(
        quantities=("dsmi_y",),
        max_samples=200,
        log_histogram=False,
        metric=DiffusionSpectralEntropy(sigma=10.0),  # the width the rule was calibrated at
    )
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        callbacks=[monitor, stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(
        model,
        make_loader(ds.inputs[tr], ytr, batch_size=32, shuffle=True, seed=0),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=256),
    )
    return trainer, stopper


def test_permuted_labels_are_stopped_early(tmp_path):
    trainer, stopper = _fit(permute=True, max_epochs=12, tmp_path=tmp_path)
    assert 0 < stopper.stopped_epoch < 10
    assert trainer.current_epoch == stopper.stopped_epoch + 1
    assert max(h[2] for h in stopper.history) < 0.25 * math.log2(10)


def test_clean_labels_train_on(tmp_path):
    trainer, stopper = _fit(permute=False, max_epochs=7, tmp_path=tmp_path)
    assert stopper.stopped_epoch == 0
    assert trainer.current_epoch == 7
    assert stopper.history[-1][2] > 1.0  # held-out DSMI(Z;Y) well above the permuted run's
