"""The monitor's probe size has one source, and its memory guard fires at train start (issues 20/21).

Before: ``max_samples`` existed twice on the monitor's path (the probe, default 500, and the metric
template's subsample, default 2048) and the smaller silently won; a probe too large for the exact
eigensolve was only found when the first evaluation ran out of memory.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor
from lightning_info.functional import diffusion_spectral_entropy
from lightning_info.metrics import DiffusionSpectralEntropy, DiffusionSpectralMutualInformation
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader, train_val_split
from lightning_info.utilities.exceptions import MemoryBudgetError


@pytest.mark.parametrize(
    ("probe", "template", "which"),
    [
        (500, {"metric": DiffusionSpectralEntropy(max_samples=300)}, "metric"),
        (None, {"metric": DiffusionSpectralEntropy()}, "metric"),  # the template's default 2048
        (500, {"mi_metric": DiffusionSpectralMutualInformation(max_samples=100)}, "mi_metric"),
    ],
)
def test_template_max_samples_below_the_probe_fails_at_construction(probe, template, which):
    with pytest.raises(ValueError, match="max_samples") as info:
        DiffusionSpectralEntropyMonitor(max_samples=probe, **template)
    message = str(info.value)
    assert f"`{which}` has max_samples=" in message
    assert (str(probe) if probe else "whole dataset") in message


@pytest.mark.parametrize("cap", [None, 500, 2048])
def test_template_max_samples_at_or_above_the_probe_is_accepted(cap):
    monitor = DiffusionSpectralEntropyMonitor(
        max_samples=500, metric=DiffusionSpectralEntropy(max_samples=cap)
    )
    assert monitor.max_samples == 500


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    return ds.inputs[tr], ds.targets[tr], ds.inputs[va], ds.targets[va]


def _fit(monitor, digits, tmp_path, spy=None):
    xtr, ytr, xva, yva = digits
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(32, 16), lr=3e-3)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        callbacks=[monitor, *([spy] if spy else [])],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        limit_train_batches=3,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, make_loader(xtr, ytr, batch_size=64), make_loader(xva, yva, batch_size=128))
    return model, trainer


def test_whole_dataset_probe_is_never_subsampled_again(tmp_path, digits):
    """``max_samples=None``: every validation sample is in the probe and in the value."""
    monitor = DiffusionSpectralEntropyMonitor(
        max_samples=None,
        quantities=("dse",),
        metric=DiffusionSpectralEntropy(sigma="median", max_samples=None),
    )
    model, trainer = _fit(monitor, digits, tmp_path)
    _, _, xva, _ = digits
    idx = monitor.state_dict()["probe_indices"]
    assert idx.numel() == len(xva)
    model.eval()
    with torch.no_grad():
        z = model.net[:4](xva[idx])
    expected = diffusion_spectral_entropy(z, sigma="median")
    got = float(trainer.callback_metrics["info/dse/penultimate"])
    assert got == pytest.approx(expected.item(), abs=1e-5)


def test_probe_too_large_for_the_budget_is_refused_at_train_start(tmp_path, digits):
    steps = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, *args):
            steps.append(1)

    monitor = DiffusionSpectralEntropyMonitor(
        max_samples=200, metric=DiffusionSpectralEntropy(sigma="median", memory_limit_bytes=10**5)
    )
    with pytest.raises(MemoryBudgetError, match='solver="lanczos"') as info:
        _fit(monitor, digits, tmp_path, spy=Steps())
    assert "N = 200" in str(info.value)
    assert steps == []  # refused before the first training step, not at the first evaluation
