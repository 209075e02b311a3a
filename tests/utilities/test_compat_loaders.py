"""utilities/compat.py: the validation loaders of a fit, with both Lightning packages.

Each case records, at ``on_fit_start`` (before the loops have set up their data, where
Lightning's public ``trainer.val_dataloaders`` is still None) and at ``on_fit_end`` (also when
validation never ran in the fit), which dataset :func:`fit_val_dataloaders` finds, and compares
it with the dataset the test gave to ``fit``.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks._loaders import first_loader
from lightning_info.utilities.compat import LIGHTNING_AVAILABLE, fit_val_dataloaders

PACKAGES = ["pytorch_lightning"] + (["lightning.pytorch"] if LIGHTNING_AVAILABLE else [])


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g))


TRAIN, VAL = _data(8, 0), _data(6, 1)


def _classes(package: str):
    pl = importlib.import_module(package)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(3, 2)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch, batch_idx):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class ModuleWithLoaders(Module):
        def train_dataloader(self):
            return DataLoader(TRAIN, batch_size=4)

        def val_dataloader(self):
            return DataLoader(VAL, batch_size=4)

    class DataModule(pl.LightningDataModule):
        def train_dataloader(self):
            return DataLoader(TRAIN, batch_size=4)

        def val_dataloader(self):
            return DataLoader(VAL, batch_size=4)

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.seen = {}

        def _record(self, trainer, when):
            self.seen[f"public_{when}"] = trainer.val_dataloaders
            loader = first_loader(fit_val_dataloaders(trainer))
            self.seen[when] = None if loader is None else loader.dataset

        def on_fit_start(self, trainer, pl_module):
            self._record(trainer, "fit_start")

        def on_fit_end(self, trainer, pl_module):
            self._record(trainer, "fit_end")

    return pl, Module, ModuleWithLoaders, DataModule, Record


@pytest.mark.parametrize("package", PACKAGES)
@pytest.mark.parametrize(
    "how",
    ["fit_arguments", "validation_never_due", "datamodule", "module_hooks", "no_validation"],
)
def test_fit_val_dataloaders_before_and_after_validation(tmp_path, package, how):
    pl, module, module_with_loaders, datamodule, record_cls = _classes(package)
    record = record_cls()
    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=5 if how == "validation_never_due" else 1,
        default_root_dir=str(tmp_path),
    )
    if how in ("fit_arguments", "validation_never_due"):
        trainer.fit(module(), DataLoader(TRAIN, batch_size=4), DataLoader(VAL, batch_size=4))
    elif how == "datamodule":
        trainer.fit(module(), datamodule=datamodule())
    elif how == "module_hooks":
        trainer.fit(module_with_loaders())
    else:
        trainer.fit(module(), DataLoader(TRAIN, batch_size=4))
    expected = None if how == "no_validation" else VAL
    assert record.seen["public_fit_start"] is None  # why the fallbacks exist
    assert record.seen["fit_start"] is expected
    assert record.seen["fit_end"] is expected
    if how == "validation_never_due":  # only the documented private fallback finds it
        assert record.seen["public_fit_end"] is None
