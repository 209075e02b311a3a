"""Observing must not change the run: a seeded fit is bit-identical with or without each callback.

The run is built to be sensitive to any disturbance: Dropout (draws from the global torch
generator at every training step), a shuffling training loader without its own generator (draws
its order from the global generator every epoch) and a training dataset that augments with
global-RNG noise in ``__getitem__`` (any extra read shifts the stream; the validation data
augments too, so the monitor's probe reads are exercised). The recorded batches
(data order and augmentation), the per-step losses and the final parameters and buffers are
compared exactly between a bare run and a run with the callback; both runs execute the same
operations on the same machine, so exact equality is the right check here.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_info import (
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
    SmoothUniqueInformation,
)
from lightning_info.utilities.data import load_dataset


class _Augmented(Dataset):
    """Digits with global-RNG pixel noise, as a random augmentation would add."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i] + 0.05 * torch.randn_like(self.x[i]), self.y[i]


class _Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.BatchNorm1d(32), nn.Linear(32, 10)
        )
        self.losses: list[torch.Tensor] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(loss.detach().clone())
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class _BatchRecorder(pl.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append((batch[0].clone(), batch[1].clone()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()
        }


def _run(tmp_path, callbacks):
    ds = load_dataset("digits")
    train = _Augmented(ds.inputs[:200], ds.targets[:200])
    val = _Augmented(ds.inputs[200:300], ds.targets[200:300])
    pl.seed_everything(0, verbose=False)
    model = _Net()
    recorder = _BatchRecorder()
    trainer = pl.Trainer(
        max_epochs=3,
        callbacks=[recorder, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, 50))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stopper = next((c for c in callbacks if isinstance(c, OverfittingEarlyStopping)), None)
    kept = None if stopper is None else stopper.best_epoch
    return recorder, model.losses, state, torch.get_rng_state(), kept


CALLBACKS = {
    "monitor": lambda: [DiffusionSpectralEntropyMonitor()],
    "early_stopping": lambda: [
        DiffusionSpectralEntropyMonitor(),
        OverfittingEarlyStopping(),
    ],
    "sui": lambda: [SmoothUniqueInformation(max_samples=60, max_heldout=30)],
}


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("bare"), [])


@pytest.mark.parametrize("name", list(CALLBACKS))
def test_seeded_run_is_bit_identical_with_the_callback(tmp_path, bare, name):
    recorder, losses, state, rng, kept = _run(tmp_path, CALLBACKS[name]())
    bare_recorder, bare_losses, bare_state, bare_rng, _ = bare
    batches, bare_batches = recorder.batches, bare_recorder.batches
    assert len(batches) == len(bare_batches) == 21  # 7 batches x 3 epochs
    for (x, y), (bx, by) in zip(batches, bare_batches):
        assert torch.equal(y, by)  # data order
        assert torch.equal(x, bx)  # augmentation draws
    assert torch.equal(torch.stack(losses), torch.stack(bare_losses))
    for epoch, epoch_state in recorder.states.items():  # the whole trajectory
        for key, value in epoch_state.items():
            assert torch.equal(value, bare_recorder.states[epoch][key]), (epoch, key)
    # the weights the user ends with: the last epoch's, or, for the early stop, its best epoch's
    expected = bare_state if kept is None else bare_recorder.states[kept]
    assert state.keys() == expected.keys()
    for key, value in state.items():
        assert torch.equal(value, expected[key]), key
    assert torch.equal(rng, bare_rng)  # the global stream after fit (SUI scores at fit end)
