"""DiffusionSpectralEntropyMonitor with zero arguments on targets of every shape.

Classification labels, one-hot rows, scalar and vector regression targets, no targets at all
(Lightning's own ``BoringModel``), integer token inputs, and the warning for a fixed kernel width
far from the feature scale. The logged DSMI(Z;Y) is compared with the functional DSMI on the
probe's activations and on groups formed by an independent rule written here.
"""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.demos.boring_classes import BoringModel
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_info import DiffusionSpectralEntropyMonitor
from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_mutual_information,
)
from lightning_info.metrics import DiffusionSpectralEntropy
from lightning_info.utilities.data import load_dataset


class _Regressor(pl.LightningModule):
    """An MLP on digits pixels regressing ``out_dim`` targets with MSE."""

    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, out_dim))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x).reshape(y.shape), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x).reshape(y.shape), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _fit(tmp_path, model, train, val, monitor, epochs=2):
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, train, val)
    return trainer


def _probe_activations(model, monitor, x_val):
    idx = monitor.state_dict()["probe_indices"]
    model.eval()
    with torch.no_grad():
        feats = model.net[1](model.net[0](x_val[idx]))  # input of the last Linear
    return idx, feats.double()


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds.inputs[:300], ds.targets[:300], ds.inputs[300:420], ds.targets[300:420]


@pytest.mark.parametrize("kind", ["vector", "scalar", "one_hot"])
def test_zero_argument_monitor_on_regression_and_one_hot_targets(tmp_path, digits, kind):
    x, labels, xv, labels_v = digits
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(64, 3, generator=gen)
    targets = {
        "vector": lambda xs, _: xs @ proj,  # (N, 3) continuous
        "scalar": lambda xs, _: (xs @ proj)[:, 0],  # (N,) continuous
        "one_hot": lambda _, ys: F.one_hot(ys, 10).float(),  # (N, 10) one-hot rows
    }[kind]
    y, yv = targets(x, labels), targets(xv, labels_v)
    torch.manual_seed(0)
    model = _Regressor(10 if kind == "one_hot" else (3 if kind == "vector" else 1))
    monitor = DiffusionSpectralEntropyMonitor()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = _fit(
            tmp_path,
            model,
            DataLoader(TensorDataset(x, y), batch_size=50),
            DataLoader(TensorDataset(xv, yv), batch_size=50),
            monitor,
        )
    assert not [w for w in caught if "DiffusionSpectralEntropyMonitor" in str(w.message)]
    for q in ("dse", "dsmi_y", "dsmi_x"):
        assert torch.isfinite(trainer.callback_metrics[f"info/{q}/penultimate"])

    idx, z = _probe_activations(model, monitor, xv)
    ref = yv[idx]
    if kind == "vector":  # clustered like DSMI(Z;X): 10 spectral clusters
        groups = cluster_reference(ref.double(), num_clusters=10, seed=0)
    elif kind == "scalar":  # 10 equal-width bins of the min-max scaled values
        scaled = (ref - ref.min()) / (ref.max() - ref.min())
        groups = torch.clamp((scaled * 10).floor().long(), max=9)
    else:  # one-hot rows are classes
        groups = ref.argmax(1)
    expected = diffusion_spectral_mutual_information(z, groups, sigma="median", discrete=True)
    got = float(trainer.callback_metrics["info/dsmi_y/penultimate"])
    assert got == pytest.approx(float(expected), abs=1e-5)


def test_zero_argument_monitor_on_boring_model_without_targets(tmp_path):
    model = BoringModel()  # batches are plain tensors: no targets
    monitor = DiffusionSpectralEntropyMonitor()
    trainer = pl.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=4,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    with pytest.warns(UserWarning, match=r"no targets.*DSMI\(Z;Y\) is not logged"):
        trainer.fit(model)
    assert monitor.active_quantities == ("dse", "dsmi_x")
    assert torch.isfinite(trainer.callback_metrics["info/dse/penultimate"])
    assert torch.isfinite(trainer.callback_metrics["info/dsmi_x/penultimate"])
    assert "info/dsmi_y/penultimate" not in trainer.callback_metrics


def test_given_target_fn_that_fails_is_an_error_at_fit_start(tmp_path):
    monitor = DiffusionSpectralEntropyMonitor(target_fn=lambda batch: batch["labels"])
    with pytest.raises(ValueError, match="`target_fn` failed"):
        pl.Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=2,
            callbacks=[monitor],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=str(tmp_path),
        ).fit(BoringModel())


class _TokenClassifier(pl.LightningModule):
    """Embedding bag over integer token ids: DSMI(Z;X) on the ids would be meaningless."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.EmbeddingBag(50, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens):
        return self.head(self.emb(tokens))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_integer_token_inputs_leave_dsmi_x_out_with_a_warning(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (160, 12), generator=gen)
    labels = (tokens < 25).sum(1).gt(6).long()
    monitor = DiffusionSpectralEntropyMonitor()
    with pytest.warns(UserWarning, match=r"token ids.*DSMI\(Z;X\) is not logged"):
        trainer = _fit(
            tmp_path,
            _TokenClassifier(),
            DataLoader(TensorDataset(tokens[:120], labels[:120]), batch_size=40),
            DataLoader(TensorDataset(tokens[120:], labels[120:]), batch_size=40),
            monitor,
        )
    assert monitor.active_quantities == ("dse", "dsmi_y")
    assert "info/dsmi_x/penultimate" not in trainer.callback_metrics
    assert torch.isfinite(trainer.callback_metrics["info/dsmi_y/penultimate"])


def test_fixed_sigma_far_from_the_feature_scale_is_warned_once(tmp_path, digits):
    x, y, xv, yv = digits
    torch.manual_seed(0)
    model = _Regressor(10)
    small = 1e-3 * x, 1e-3 * xv  # tiny inputs: tiny features next to sigma = 10
    monitor = DiffusionSpectralEntropyMonitor(
        quantities=("dse",), metric=DiffusionSpectralEntropy(sigma=10.0)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(
            tmp_path,
            model,
            DataLoader(TensorDataset(small[0], F.one_hot(y, 10).float()), batch_size=50),
            DataLoader(TensorDataset(small[1], F.one_hot(yv, 10).float()), batch_size=50),
            monitor,
            epochs=3,
        )
    scale = [w for w in caught if "nearly constant" in str(w.message)]
    assert len(scale) == 1  # once, not every epoch
    assert "sigma='median'" in str(scale[0].message)


def test_model_checkpoint_filename_with_the_slash_keys_as_documented(tmp_path, digits):
    # the monitor's keys contain "/": with auto_insert_metric_name=False (the documented way) the
    # value goes into one flat file name instead of nested folders
    from pytorch_lightning.callbacks import ModelCheckpoint

    x, y, xv, yv = digits
    torch.manual_seed(0)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="info/dsmi_y/penultimate",
        mode="max",
        filename="{epoch}-dsmi={info/dsmi_y/penultimate:.3f}",
        auto_insert_metric_name=False,
    )
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[DiffusionSpectralEntropyMonitor(quantities=("dsmi_y",)), ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(
        _Regressor(10),
        DataLoader(TensorDataset(x, F.one_hot(y, 10).float()), batch_size=50),
        DataLoader(TensorDataset(xv, F.one_hot(yv, 10).float()), batch_size=50),
    )
    files = [p.relative_to(tmp_path / "ckpt") for p in (tmp_path / "ckpt").rglob("*.ckpt")]
    assert len(files) == 1
    assert len(files[0].parts) == 1  # no folders from the slashes
    epoch, value = files[0].stem.split("-dsmi=")
    assert int(epoch) in (0, 1)
    assert float(value) == pytest.approx(float(ckpt.best_model_score), abs=5e-4)
