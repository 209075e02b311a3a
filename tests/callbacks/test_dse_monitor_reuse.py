"""One DiffusionSpectralEntropyMonitor used for several fits (issue 20: cross-validation loops).

The monitor's per-fit state (probe, cached reference groups, last evaluated epoch) is reset at
each fit start and its caches are keyed on content: reused on another fold of the same size it
logs what a fresh monitor logs, which is what the functional API computes on the same probe. On
``main`` before the fix the old fold's cached groups were paired with the new features (DSMI(Z;Y)
-0.013 vs 0.993 fresh in the issue's run), silently.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor
from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.metrics import DiffusionSpectralEntropy
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader

PROBE = 100
KEYS = ("info/dse/penultimate", "info/dsmi_y/penultimate", "info/dsmi_x/penultimate")


@pytest.fixture(scope="module")
def folds():
    """Two folds of digits with validation sets of the same size and different samples."""
    ds = load_dataset("digits")
    x, y = ds.inputs, ds.targets
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    size = 300
    out = []
    for k in range(2):
        val = perm[k * size : (k + 1) * size]
        train = torch.cat([perm[: k * size], perm[(k + 1) * size :]])
        out.append((x[train], y[train], x[val], y[val]))
    return out


def _fit(monitor, fold, tmp_path, *, epochs=1, seed=0, ckpt_path=None, callbacks=()):
    xtr, ytr, xva, yva = fold
    torch.manual_seed(seed)
    model = MLPClassifier(64, 10, hidden=(32, 16), lr=3e-3)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        callbacks=[monitor, *callbacks],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        accelerator="cpu",
        deterministic=True,
        limit_train_batches=4,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        model,
        make_loader(xtr, ytr, batch_size=64, shuffle=False),
        make_loader(xva, yva, batch_size=128),
        ckpt_path=ckpt_path,
    )
    logged = trainer.callback_metrics
    return model, {k: float(logged[k]) for k in KEYS if k in logged}


def _monitor():
    return DiffusionSpectralEntropyMonitor(
        max_samples=PROBE, metric=DiffusionSpectralEntropy(sigma="median")
    )


def _functional(model, fold, indices):
    """The three quantities from the functional API on the probe (independent of the monitor)."""
    _, _, xva, yva = fold
    x, y = xva[indices], yva[indices]
    model.eval()
    with torch.no_grad():
        z = model.net[:4](x)  # input of the last Linear: the penultimate features
    clusters = cluster_reference(x, num_clusters=10, seed=0)
    return {
        KEYS[0]: diffusion_spectral_entropy(z, sigma="median").item(),
        KEYS[1]: diffusion_spectral_mutual_information(z, y, sigma="median").item(),
        KEYS[2]: diffusion_spectral_mutual_information(
            z, None, sigma="median", clusters=clusters
        ).item(),
    }


def test_reuse_on_another_fold_equals_a_fresh_monitor_and_the_functional(tmp_path, folds):
    reused = _monitor()
    _fit(reused, folds[0], tmp_path / "a", epochs=2)
    model, second = _fit(reused, folds[1], tmp_path / "b", epochs=2)
    _, fresh = _fit(_monitor(), folds[1], tmp_path / "c", epochs=2)
    expected = _functional(model, folds[1], reused.state_dict()["probe_indices"])
    for key in KEYS:
        assert second[key] == pytest.approx(fresh[key], abs=1e-6), key
        assert second[key] == pytest.approx(expected[key], abs=1e-5), key
    assert expected[KEYS[1]] > 0.5  # a trained layer carries label information worth checking


def test_reuse_evaluates_every_epoch_of_the_second_fit(tmp_path, folds):
    """The last evaluated epoch belongs to one fit: the second fit's epochs are all evaluated."""
    calls = []

    class Spy(DiffusionSpectralEntropyMonitor):
        def _evaluate(self, trainer, pl_module):
            calls.append(trainer.current_epoch)
            super()._evaluate(trainer, pl_module)

    monitor = Spy(
        max_samples=PROBE, quantities=("dse",), metric=DiffusionSpectralEntropy(sigma="median")
    )
    _fit(monitor, folds[0], tmp_path / "a", epochs=1)
    _fit(monitor, folds[1], tmp_path / "b", epochs=2)
    assert calls == [0, 0, 1]  # before the fix, epoch 0 of the second fit counted as done


def test_restored_groups_of_other_content_are_recomputed(tmp_path, folds):
    """A checkpoint's cached groups are keyed on the probe's content, not its size."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    first = _monitor()
    _fit(first, folds[0], tmp_path / "a", callbacks=[ckpt])
    groups_a = first.state_dict()["probe_groups"]["y"]
    # resume that checkpoint on the other fold (same sizes): the restored groups must not be used
    resumed = _monitor()
    with pytest.warns(UserWarning, match="grouping them again"):
        model, values = _fit(
            resumed,
            folds[1],
            tmp_path / "b",
            epochs=2,
            ckpt_path=str(tmp_path / "ck" / "last.ckpt"),
            callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck2")],
        )
    state = resumed.state_dict()
    _, _, _xva, yva = folds[1]
    assert torch.equal(state["probe_groups"]["y"], yva[state["probe_indices"]].long())
    assert not torch.equal(state["probe_groups"]["y"], groups_a)
    expected = _functional(model, folds[1], state["probe_indices"])
    for key in KEYS:
        assert values[key] == pytest.approx(expected[key], abs=1e-5), key


def test_resume_on_the_same_data_keeps_the_restored_groups(tmp_path, folds, monkeypatch):
    """The cache still works: a resume on the same data does not group the probe again."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from lightning_info.callbacks import _probe

    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    _fit(_monitor(), folds[0], tmp_path / "a", callbacks=[ckpt])
    calls = []
    real = _probe._ProbeSet._groups
    monkeypatch.setattr(
        _probe._ProbeSet, "_groups", lambda self, b: calls.append(1) or real(self, b)
    )
    resumed = _monitor()
    _fit(
        resumed,
        folds[0],
        tmp_path / "b",
        epochs=2,
        ckpt_path=str(tmp_path / "ck" / "last.ckpt"),
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ck2")],
    )
    assert calls == []
