"""Checkpoint loading for `lightning-info score`: safe by default, full unpickling only on request."""

from __future__ import annotations

import pickle

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_info import (
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
    SmoothUniqueInformation,
)
from lightning_info.cli import main
from lightning_info.models import MLPClassifier
from lightning_info.scoring import CheckpointError, load_checkpoint
from lightning_info.utilities.data import load_dataset


class _Payload:
    """Unpickling this runs code: it writes ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.fixture
def malicious_ckpt(tmp_path):
    marker = tmp_path / "pwned.txt"
    model = MLPClassifier(64, 10, hidden=(8,))
    ckpt = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "global_step": 3,
        "extra": _Payload(str(marker)),
    }
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


def test_untrusted_checkpoint_executes_nothing(malicious_ckpt, tmp_path, capsys):
    path, marker = malicious_ckpt
    with pytest.raises(CheckpointError, match="trust-checkpoint") as info:
        load_checkpoint(path)
    assert info.value.needs_trust
    assert "builtins.exec" in str(info.value) or "exec" in str(info.value)  # names the object
    assert not marker.exists()
    # the command line refuses it too, before any model is built, in one line
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "score", "--model", "lightning_info.models:MLPClassifier", "--ckpt", str(path),
                "--dataset", "digits", "--out", str(tmp_path / "out"),
            ]
        )  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert "would run code" in err
    assert "--trust-checkpoint" in err
    assert not marker.exists()


def test_trusted_checkpoint_is_unpickled_in_full(malicious_ckpt):
    # positive control: the payload is real, and the opt-in does run it
    path, marker = malicious_ckpt
    checkpoint = load_checkpoint(path, trust_checkpoint=True)
    assert marker.read_text() == "code ran"
    assert checkpoint["global_step"] == 3
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_checkpoint_with_all_three_callbacks_loads_weights_only(tmp_path):
    ds = load_dataset("digits")
    x, y = ds.inputs[:160], ds.targets[:160]
    pl.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = pl.Trainer(
        max_epochs=2,
        callbacks=[
            DiffusionSpectralEntropyMonitor(max_samples=40),
            OverfittingEarlyStopping(),
            SmoothUniqueInformation(max_samples=30, max_heldout=20),
            ckpt,
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(
        MLPClassifier(64, 10, hidden=(8,)),
        DataLoader(TensorDataset(x[:120], y[:120]), batch_size=40),
        DataLoader(TensorDataset(x[120:], y[120:]), batch_size=40),
    )
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    states = checkpoint["callbacks"]
    names = {key.split("{")[0] for key in states}
    assert {
        "DiffusionSpectralEntropyMonitor",
        "OverfittingEarlyStopping",
        "SmoothUniqueInformation",
    } <= names
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == checkpoint["global_step"]
