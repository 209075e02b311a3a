"""The three callbacks under both Lightning packages: ``pytorch_lightning`` and ``lightning.pytorch``.

Each package gets its own small LightningModule and DataModule (a ``lightning.pytorch.Trainer``
only trains ``lightning.pytorch`` modules) and its own ``TensorBoardLogger``; the callbacks are
the same ``lightning_info`` classes in both. Checked: ``isinstance`` against each package's
``Callback``/``EarlyStopping``, the logged keys, the monitor's spectrum histogram read back from
the TensorBoard event files, SUI scores, and both ``LightningCLI`` front ends (callbacks given
on the command line and in a YAML config).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_info
from lightning_info.utilities.data import load_dataset

PACKAGES = ["pytorch_lightning", "lightning.pytorch"]
DSMI_KEY = "info/dsmi_y/penultimate"


def _package(name: str):
    return importlib.import_module(name)


def _classes(name: str):
    """A classifier and a datamodule subclassing ``name``'s LightningModule/LightningDataModule."""
    pkg = _package(name)

    class Classifier(pkg.LightningModule):
        def __init__(self, hidden: int = 16, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log("val_loss", F.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Digits(pkg.LightningDataModule):
        def __init__(self, n_train: int = 120, n_val: int = 60) -> None:
            super().__init__()
            ds = load_dataset("digits")
            self.train = TensorDataset(ds.inputs[:n_train], ds.targets[:n_train])
            self.val = TensorDataset(
                ds.inputs[n_train : n_train + n_val], ds.targets[n_train : n_train + n_val]
            )

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=30, shuffle=False)

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=60)

    return Classifier, Digits


def _callbacks():
    return [
        lightning_info.DiffusionSpectralEntropyMonitor(quantities=("dse", "dsmi_y")),
        lightning_info.OverfittingEarlyStopping(),
        lightning_info.SmoothUniqueInformation(max_samples=40, max_heldout=20),
    ]


@pytest.mark.parametrize("name", PACKAGES)
def test_isinstance_of_both_packages(name):
    pkg = _package(name)
    monitor, stopper, sui = _callbacks()
    for callback in (monitor, stopper, sui):
        assert isinstance(callback, pkg.Callback)
    assert isinstance(stopper, pkg.callbacks.EarlyStopping)
    assert stopper.monitor == DSMI_KEY  # initialised once, fully
    assert stopper.patience >= 1


@pytest.mark.parametrize("name", PACKAGES)
def test_trainer_with_tensorboard_of_each_package(tmp_path, name):
    pkg = _package(name)
    classifier, digits = _classes(name)
    torch.manual_seed(0)
    callbacks = _callbacks()
    logger = pkg.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = pkg.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(classifier(), datamodule=digits())

    assert trainer.early_stopping_callback is callbacks[1]
    assert [h[0] for h in callbacks[1].rule.history] == [0, 1]  # evaluated at every epoch
    for key in ("info/dse/penultimate", DSMI_KEY):
        assert torch.isfinite(trainer.callback_metrics[key])
    sui = callbacks[2]
    assert sui.scores_ is not None
    assert len(sui.scores_) == 40
    assert Path(sui.csv_path_).is_file()

    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Tags()["histograms"]
    assert (
        "info/spectrum/penultimate" in histograms
    )  # the monitor's spectrum, this package's logger
    assert "sui/weight_si" in histograms  # SUI's summaries, this package's logger
    assert [h.step for h in events.Histograms("info/spectrum/penultimate")] == [0, 1]


def _run_cli(name: str, tmp_path: Path, args: list[str]) -> object:
    cli_module = importlib.import_module(f"{name}.cli")
    classifier, digits = _classes(name)
    torch.manual_seed(0)
    common = [
        "fit",
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger"
        if name == "lightning.pytorch"
        else "--trainer.logger=pytorch_lightning.loggers.TensorBoardLogger",
        f"--trainer.logger.save_dir={tmp_path}",
    ]
    return cli_module.LightningCLI(
        classifier, digits, args=common + args, save_config_callback=None
    )


def _check_cli_run(cli) -> None:
    trainer = cli.trainer
    ours = [c for c in trainer.callbacks if type(c).__module__.startswith("lightning_info")]
    assert {type(c).__name__ for c in ours} == {
        "DiffusionSpectralEntropyMonitor",
        "OverfittingEarlyStopping",
        "SmoothUniqueInformation",
    }
    assert torch.isfinite(trainer.callback_metrics[DSMI_KEY])
    sui = next(c for c in ours if type(c).__name__ == "SmoothUniqueInformation")
    assert sui.scores_ is not None
    assert len(sui.scores_) == 30
    trainer.logger.experiment.flush()
    events = EventAccumulator(trainer.logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert "info/spectrum/penultimate" in events.Tags()["histograms"]


@pytest.mark.parametrize("name", PACKAGES)
def test_lightning_cli_command_line(tmp_path, name):
    cli = _run_cli(
        name,
        tmp_path,
        [
            "--trainer.callbacks+=lightning_info.DiffusionSpectralEntropyMonitor",
            "--trainer.callbacks.quantities=[dse, dsmi_y]",
            "--trainer.callbacks+=lightning_info.OverfittingEarlyStopping",
            "--trainer.callbacks+=lightning_info.SmoothUniqueInformation",
            "--trainer.callbacks.max_samples=30",
            "--trainer.callbacks.max_heldout=20",
        ],
    )
    _check_cli_run(cli)


@pytest.mark.parametrize("name", PACKAGES)
def test_lightning_cli_yaml_config(tmp_path, name):
    config = tmp_path / "config.yaml"
    config.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: lightning_info.DiffusionSpectralEntropyMonitor\n"
        "      init_args:\n"
        "        quantities: [dse, dsmi_y]\n"
        "    - class_path: lightning_info.OverfittingEarlyStopping\n"
        "    - class_path: lightning_info.SmoothUniqueInformation\n"
        "      init_args:\n"
        "        max_samples: 30\n"
        "        max_heldout: 20\n"
    )
    cli = _run_cli(name, tmp_path, [f"--config={config}"])
    _check_cli_run(cli)
