"""``lightning_info.utilities.compat``: public-API replacements, checked under both Lightning packages.

Issue 21: the monitor read ``trainer.fit_loop.epoch_loop.batch_progress`` (loop internals) to tell
the epoch-end validation from one inside the epoch, and called the protected
``Callback._generate_state_key``. Both now use public API only; these tests hold the replacements
to what Lightning itself does, in ``pytorch_lightning`` and ``lightning.pytorch``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor
from lightning_info.metrics import DiffusionSpectralEntropy
from lightning_info.utilities.compat import Callback, callback_state_key

PACKAGES = ["pytorch_lightning", "lightning.pytorch"]


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize(
    "kwargs", [{}, {"layers": ["net.0"], "seed": 3}, {"quantities": ("dse",), "stage": "train"}]
)
def test_callback_state_key_equals_lightnings_own(package, kwargs):
    pkg = importlib.import_module(package)

    class Probe(pkg.Callback):
        pass

    assert callback_state_key(Probe(), **kwargs) == Probe()._generate_state_key(**kwargs)
    monitor = DiffusionSpectralEntropyMonitor(**kwargs)
    assert isinstance(monitor, pkg.Callback)
    assert monitor.state_key == pkg.Callback._generate_state_key(monitor, **_monitor_key(monitor))


def _monitor_key(monitor):
    """The monitor's documented key arguments (layers, quantities, stage, cadence, seed)."""
    return dict(
        layers=None if monitor.layers is None else tuple(monitor.layers),
        quantities=monitor.quantities,
        stage=monitor.stage,
        max_samples=monitor.max_samples,
        every_n_epochs=monitor.every_n_epochs,
        seed=monitor.seed,
        prefix=monitor.log_key_prefix,
    )


def _module(package):
    pkg = importlib.import_module(package)

    class Classifier(pkg.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return pkg, Classifier()


def _loader(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()), batch_size=8)


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize(
    "trainer_kwargs",
    [
        {"val_check_interval": 0.5},  # a validation in the middle of each epoch, one at its end
        {"val_check_interval": 0.5, "limit_train_batches": 4},  # the epoch ends before the data
        {"val_check_interval": 2},  # every 2 batches: three validations per epoch of 6 batches
    ],
)
def test_monitor_evaluates_at_the_epoch_end_validation_only(tmp_path, package, trainer_kwargs):
    calls = []

    class Spy(DiffusionSpectralEntropyMonitor):
        def _evaluate(self, trainer, pl_module):
            calls.append((trainer.current_epoch, self._batches_done, trainer.validating))
            super()._evaluate(trainer, pl_module)

    pkg, model = _module(package)
    monitor = Spy(quantities=("dse",), max_samples=20, metric=DiffusionSpectralEntropy(sigma=1.0))
    trainer = pkg.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(model, _loader(48, 0), _loader(24, 1))  # 6 training batches per epoch
    per_epoch = trainer.num_training_batches
    # one evaluation per epoch, in the validation run after the epoch's last batch
    assert calls == [(0, per_epoch, True), (1, per_epoch, True)]


def test_compat_callback_is_both_packages_callback():
    pkgs = [importlib.import_module(p) for p in PACKAGES]
    assert all(issubclass(Callback, pkg.Callback) for pkg in pkgs)


#: Protected Lightning / torchmetrics names the DSE side used to reach (issue 21).
_PRIVATE = ("fit_loop", "batch_progress", "_generate_state_key", "._computed", "._to_sync")


@pytest.mark.parametrize(
    "path",
    [
        "lightning_info/callbacks/dse.py",
        "lightning_info/callbacks/_probe.py",
        "lightning_info/callbacks/_capture.py",
        "lightning_info/metrics/dse.py",
    ],
)
def test_dse_side_uses_no_protected_lightning_or_metric_api(path):
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / path).read_text()
    found = [name for name in _PRIVATE if name in source]
    assert found == [], f"{path} uses {found}; put a tested fallback in utilities/compat.py"
