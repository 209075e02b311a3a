"""DiffusionSpectralEntropyMonitor on small real training runs (digits, tiny MLP, few epochs)."""

from __future__ import annotations

import glob
import pickle
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor
from lightning_info.callbacks._capture import _ActivationCapture
from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.metrics import DiffusionSpectralEntropy
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader, train_val_split

PROBE = 120
HIDDEN = (32, 16)


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    return ds.inputs[tr], ds.targets[tr], ds.inputs[va], ds.targets[va]


def _loaders(digits, *, val=True, batch_size=64):
    xtr, ytr, xva, yva = digits
    train = make_loader(xtr, ytr, batch_size=batch_size, shuffle=False)
    return (train, make_loader(xva, yva, batch_size=128)) if val else (train,)


def _trainer(tmp_path, callbacks, *, epochs=2, logger=False, **kwargs):
    kwargs.setdefault("limit_train_batches", 5)
    kwargs.setdefault("num_sanity_val_steps", 0)
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def _model(seed=0, cls=MLPClassifier):
    torch.manual_seed(seed)
    return cls(64, 10, hidden=HIDDEN, lr=3e-3)


def _monitor(**kwargs):
    kwargs.setdefault("max_samples", PROBE)
    kwargs.setdefault("metric", DiffusionSpectralEntropy(sigma=2.0))
    return DiffusionSpectralEntropyMonitor(**kwargs)


class _Recorder(pl.Callback):
    """Collects our keys from callback_metrics after every epoch (monitoring callbacks run last)."""

    def __init__(self, prefix="info/"):
        self.prefix, self.rows = prefix, {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.rows[trainer.current_epoch] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(self.prefix)
        }


def _all_hooks(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


# ------------------------------------------------------------------------------------------
def test_keys_logged_tensorboard_histogram_and_hooks_removed(tmp_path, digits):
    monitor = _monitor()
    model = _model()
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = _trainer(tmp_path, [monitor], logger=logger, log_every_n_steps=1)
    trainer.fit(model, *_loaders(digits))

    keys = ["info/dse/penultimate", "info/dsmi_y/penultimate", "info/dsmi_x/penultimate"]
    for key in keys:
        assert key in trainer.callback_metrics
        assert torch.isfinite(trainer.callback_metrics[key])
    assert _all_hooks(model) == 0

    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for key in keys:
        assert key in tags["scalars"]
        assert len(events.Scalars(key)) == 2  # one per epoch
    assert "info/spectrum/penultimate" in tags["histograms"]
    hist = events.Histograms("info/spectrum/penultimate")
    assert [h.step for h in hist] == [0, 1]
    assert hist[-1].histogram_value.num == PROBE  # all N eigenvalues
    assert hist[-1].histogram_value.max == pytest.approx(1.0, abs=1e-6)  # top eigenvalue is 1


def test_values_equal_functional_on_independent_activations(tmp_path, digits):
    monitor = _monitor(layers=["net.2", "net.4:input"])
    model = _model()
    trainer = _trainer(tmp_path, [monitor], epochs=1)
    trainer.fit(model, *_loaders(digits))

    _, _, xva, yva = digits
    idx = monitor.state_dict()["probe_indices"]
    assert idx.numel() == PROBE
    assert idx.unique().numel() == PROBE
    assert int(idx.max()) < len(yva)
    x, y = xva[idx], yva[idx]
    model.eval()
    with torch.no_grad():
        out_2 = model.net[:3](x)  # output of net.2 (second Linear)
        penult = model.net[:4](x)  # input of net.4 (after the ReLU)
    clusters = cluster_reference(x, num_clusters=10, seed=0)
    for name, z in [("net.2", out_2), ("net.4:input", penult)]:
        logged = trainer.callback_metrics
        expected = {
            "dse": diffusion_spectral_entropy(z, sigma=2.0, max_samples=2048),
            "dsmi_y": diffusion_spectral_mutual_information(z, y, sigma=2.0),
            "dsmi_x": diffusion_spectral_mutual_information(z, None, sigma=2.0, clusters=clusters),
        }
        for q, value in expected.items():
            assert float(logged[f"info/{q}/{name}"]) == pytest.approx(value.item(), abs=1e-5), (
                name,
                q,
            )
    # the two layers differ, so a mix-up of hooks would be caught
    assert float(trainer.callback_metrics["info/dse/net.2"]) != pytest.approx(
        float(trainer.callback_metrics["info/dse/net.4:input"]), abs=1e-3
    )


def test_label_free_dsmi_z_equals_dsmi_with_kmeans_of_the_features(tmp_path, digits):
    from sklearn.cluster import KMeans

    monitor = _monitor(
        quantities=("dse", "dsmi_z"), metric=DiffusionSpectralEntropy(sigma="median")
    )
    model = _model()
    trainer = _trainer(tmp_path, [monitor], epochs=1)
    trainer.fit(model, *_loaders(digits))
    logged = trainer.callback_metrics
    assert "info/dsmi_y/penultimate" not in logged  # only what was asked for
    _, _, xva, _ = digits
    x = xva[monitor.state_dict()["probe_indices"]]
    model.eval()
    with torch.no_grad():
        z = model.net[:4](x)
    # the reference: scikit-learn's k-means on the features, then DSMI with those groups
    groups = KMeans(n_clusters=10, n_init=1, random_state=0).fit(z.float().numpy()).labels_
    expected = diffusion_spectral_mutual_information(
        z, None, sigma="median", clusters=torch.as_tensor(groups)
    )
    assert float(logged["info/dsmi_z/penultimate"]) == pytest.approx(expected.item(), abs=1e-5)
    assert expected.item() > 0.1  # trained features have cluster structure worth measuring


def test_sanity_check_skipped_and_one_pass_per_epoch(tmp_path, digits):
    calls = []

    class Spy(DiffusionSpectralEntropyMonitor):
        def _evaluate(self, trainer, pl_module):
            calls.append((trainer.sanity_checking, trainer.current_epoch))
            super()._evaluate(trainer, pl_module)

    monitor = Spy(max_samples=60, quantities=("dse",), metric=DiffusionSpectralEntropy(sigma=2.0))
    trainer = _trainer(tmp_path, [monitor], epochs=2, num_sanity_val_steps=2)
    trainer.fit(_model(), *_loaders(digits))
    assert calls == [(False, 0), (False, 1)]


def test_train_mode_restored_and_no_val_loader_falls_back(tmp_path, digits):
    states = []

    class Check(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            states.append((pl_module.training, pl_module.net[1].training, _all_hooks(pl_module)))

    monitor = _monitor(quantities=("dse", "dsmi_y"))
    trainer = _trainer(tmp_path, [monitor, Check()], epochs=2, limit_val_batches=0)
    with pytest.warns(UserWarning, match="no validation data"):
        trainer.fit(_model(), *_loaders(digits, val=False))
    # without validation the pass runs in on_train_epoch_end, before Check; the model is back
    # in train mode and no hook is left
    assert states == [(True, True, 0), (True, True, 0)]
    assert monitor.state_dict()["probe_source"] == "train"
    assert "info/dsmi_y/penultimate" in trainer.callback_metrics


def test_zero_length_probe_sets(tmp_path, digits):
    """An empty validation set falls back to the training data (warned); a training set too
    small for a probe (1 sample, no validation) fails at fit start, before any training step."""
    xtr, ytr, xva, yva = digits
    empty_val = make_loader(xva[:0], yva[:0], batch_size=8)
    monitor = _monitor(quantities=("dse",))
    trainer = _trainer(tmp_path, [monitor], epochs=1)
    with pytest.warns(UserWarning, match="no validation data"):
        trainer.fit(_model(), make_loader(xtr, ytr, batch_size=64, shuffle=False), empty_val)
    assert monitor.state_dict()["probe_source"] == "train"
    assert torch.isfinite(trainer.callback_metrics["info/dse/penultimate"])

    steps = []

    class Count(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    tiny = make_loader(xtr[:1], ytr[:1], batch_size=1)
    trainer = _trainer(tmp_path, [_monitor(quantities=("dse",)), Count()], limit_val_batches=0)
    with (
        pytest.warns(UserWarning, match="no validation data"),
        pytest.raises(ValueError, match="at least 2 samples; the train dataset has 1"),
    ):
        trainer.fit(_model(), tiny)
    assert steps == []


def test_capture_restores_exact_flags_and_removes_hooks_on_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model stays frozen
    seen = {}

    def failing_pass():
        with _ActivationCapture(model, {"a": (model[0], "output"), "b": (model[2], "input")}) as c:
            model(torch.randn(5, 3))
            seen.update(c.pop())
            seen["training"] = model[0].training
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_pass()
    assert seen["a"].shape == (5, 4)
    assert seen["b"].shape == (5, 4)
    assert seen["training"] is False
    assert _all_hooks(model) == 0
    assert [m.training for m in model] == [True, False, True]


def test_unknown_layer_fails_at_fit_start_listing_names(tmp_path, digits):
    monitor = _monitor(layers=["net.9"])
    trainer = _trainer(tmp_path, [monitor], epochs=1)
    with pytest.raises(ValueError, match=r"net\.9.*Available: `net`, `net\.0`"):
        trainer.fit(_model(), *_loaders(digits))


def test_resume_from_checkpoint_continues_the_same_curves(tmp_path, digits):
    def run(root, epochs, ckpt_path=None):
        rec = _Recorder()
        ckpt = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
        monitor = _monitor(quantities=("dse", "dsmi_y", "dsmi_x"))
        trainer = pl.Trainer(
            default_root_dir=root,
            max_epochs=epochs,
            callbacks=[monitor, rec, ckpt],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_train_batches=4,
            num_sanity_val_steps=0,
            accelerator="cpu",
            deterministic=True,
        )
        trainer.fit(_model(), *_loaders(digits), ckpt_path=ckpt_path)
        return rec.rows, monitor

    full, first = run(tmp_path / "a", 3)
    resumed, second = run(tmp_path / "b", 3, ckpt_path=str(tmp_path / "a" / "epoch=0.ckpt"))
    assert sorted(resumed) == [1, 2]
    for epoch in (1, 2):
        assert resumed[epoch].keys() == full[epoch].keys()
        for key, value in full[epoch].items():
            assert resumed[epoch][key] == pytest.approx(value, abs=1e-6), (epoch, key)
    assert torch.equal(second.state_dict()["probe_indices"], first.state_dict()["probe_indices"])
    for ref in ("x", "y"):  # the reference groups (input clusters, target classes) come back
        assert torch.equal(
            second.state_dict()["probe_groups"][ref], first.state_dict()["probe_groups"][ref]
        )
    saved = torch.load(tmp_path / "a" / "epoch=0.ckpt", weights_only=False)["callbacks"]
    assert torch.equal(saved[first.state_key]["probe_indices"], first.state_dict()["probe_indices"])


class _PoisonedMLP(MLPClassifier):
    """Penultimate activations become NaN in eval mode from epoch 1 on; training is unaffected."""

    def forward(self, x):
        h = self.net[:-1](x.flatten(1))
        if not self.training and self.trainer is not None and self.current_epoch >= 1:
            h = h * float("nan")
        return self.net[-1](h)


def test_nan_activations_warn_once_and_training_continues(tmp_path, digits):
    rec = _Recorder()
    monitor = _monitor(quantities=("dse", "dsmi_y"))
    trainer = _trainer(tmp_path, [monitor, rec], epochs=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_model(cls=_PoisonedMLP), *_loaders(digits))
    ours = [w for w in caught if "NaN/inf activations" in str(w.message)]
    assert len(ours) == 1
    assert trainer.current_epoch == 3  # all epochs ran
    assert "info/dse/penultimate" in rec.rows[0]
    assert "info/dse/penultimate" not in rec.rows[1]  # skipped, and no stale value left
    assert "info/dse/penultimate" not in rec.rows[2]


class _DictDataset(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixels": self.x[i], "digit": self.y[i]}


class _DictMLP(MLPClassifier):
    def training_step(self, batch, batch_idx):
        return super().training_step((batch["pixels"], batch["digit"]), batch_idx)

    def validation_step(self, batch, batch_idx):
        return super().validation_step((batch["pixels"], batch["digit"]), batch_idx)

    def forward(self, x):
        return {"logits": super().forward(x)}  # a dict output does not matter to the hooks

    def _loss(self, logits, y):
        return super()._loss(logits["logits"] if isinstance(logits, dict) else logits, y)


def test_dict_batches_with_extractors(tmp_path, digits):
    xtr, ytr, _, _ = digits
    monitor = _monitor(input_fn=lambda b: b["pixels"], target_fn=lambda b: b["digit"])
    trainer = _trainer(tmp_path, [monitor], epochs=1, limit_val_batches=0)

    class M(_DictMLP):
        def training_step(self, batch, batch_idx):
            out = self(batch["pixels"])["logits"]
            loss = torch.nn.functional.cross_entropy(out, batch["digit"])
            self.log("train_loss", loss, on_epoch=True)
            return loss

    with pytest.warns(UserWarning, match="no validation data"):
        trainer.fit(_model(cls=M), DataLoader(_DictDataset(xtr, ytr), batch_size=64))
    assert "info/dsmi_y/penultimate" in trainer.callback_metrics
    # the default extractors cannot read these batches, and say so
    bad = _monitor()
    with pytest.raises(TypeError, match="input_fn"):
        _trainer(tmp_path, [bad], epochs=1, limit_val_batches=0).fit(
            _model(cls=M), DataLoader(_DictDataset(xtr, ytr), batch_size=64)
        )


def test_plain_early_stopping_on_our_key_stops(tmp_path, digits):
    # min_delta far above any change: the first evaluation sets the best, then patience runs out
    stopper = EarlyStopping(monitor="info/dse/penultimate", mode="max", min_delta=50.0, patience=2)
    monitor = _monitor(quantities=("dse",))
    trainer = _trainer(tmp_path, [monitor, stopper], epochs=10)
    trainer.fit(_model(), *_loaders(digits))
    assert stopper.stopped_epoch == 2
    assert trainer.current_epoch == 3


def test_every_n_epochs_logs_on_evaluation_epochs_and_patience_counts_evaluations(tmp_path, digits):
    rec = _Recorder()
    stopper = EarlyStopping(
        monitor="info/dse/penultimate", mode="max", min_delta=50.0, patience=2, strict=False
    )
    monitor = _monitor(quantities=("dse",), every_n_epochs=2)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(
        tmp_path, [monitor, rec, stopper], epochs=12, limit_train_batches=2, logger=logger
    )
    trainer.fit(_model(), *_loaders(digits))
    assert [e for e, row in rec.rows.items() if "info/dse/penultimate" in row] == [1, 3, 5]
    # evaluations at epochs 1 (best), 3 (wait 1), 5 (wait 2): stale repeats would stop at 3
    assert stopper.stopped_epoch == 5
    metrics_csv = glob.glob(str(tmp_path / "csv" / "*" / "metrics.csv"))[0]
    with open(metrics_csv) as fh:
        header, *lines = [line.strip().split(",") for line in fh]
    col = header.index("info/dse/penultimate")
    epochs = [int(line[header.index("epoch")]) for line in lines if line[col]]
    assert epochs == [1, 3, 5]


def test_state_key_pickle_and_bad_options():
    a = DiffusionSpectralEntropyMonitor(["net.0"])
    b = DiffusionSpectralEntropyMonitor(["net.2"])
    c = DiffusionSpectralEntropyMonitor(["net.0"], stage="train")
    assert len({a.state_key, b.state_key, c.state_key}) == 3
    clone = pickle.loads(pickle.dumps(a))
    assert clone.state_key == a.state_key
    assert clone.metric.sigma == a.metric.sigma
    with pytest.raises(ValueError, match="quantities"):
        DiffusionSpectralEntropyMonitor(quantities=("dse", "mi"))
    with pytest.raises(ValueError, match="stage"):
        DiffusionSpectralEntropyMonitor(stage="test")
    with pytest.raises(ValueError, match="every_n_epochs"):
        DiffusionSpectralEntropyMonitor(every_n_epochs=0)
    with pytest.raises(TypeError, match="metric"):
        DiffusionSpectralEntropyMonitor(metric="dse")
