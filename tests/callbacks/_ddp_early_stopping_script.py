"""Run by ``test_early_stopping_ddp.py``: a 2-process CPU DDP (gloo) fit with OverfittingEarlyStopping.

60 % flipped training labels (the network memorises), an odd number of training (401) and
validation (301) samples, so the DistributedSampler shards are uneven and padded. The module logs
``val_acc`` per rank (no ``sync_dist``), so the ranks see different validation accuracies; the
callback decides on rank 0 and broadcasts. Each rank writes ``rank<r>.json`` with its rule
history, stop and best epochs, its own logged values per epoch and a checksum of the weights it
ends with. Usage: ``python _ddp_early_stopping_script.py OUT_DIR [label_free]``; ``label_free``
decides without the validation metric (``score_monitor=None``), so the stop also runs its
training-loss check on each rank's own (unsynchronised) ``train_loss``.
"""

from __future__ import annotations

import json
import os
import sys

import pytorch_lightning as pl
import torch
from _ddp_common import Dump

from lightning_info.callbacks import DiffusionSpectralEntropyMonitor, OverfittingEarlyStopping
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split

MAX_EPOCHS = 30


def main(out_dir: str, label_free: bool = False) -> None:
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    tr, va = train_val_split(len(ds.targets), seed=0)
    tr, va = tr[:401], va[:301]  # odd sizes: uneven shards of 201 / 200 and 151 / 150
    ytr, _ = corrupt_labels(ds.targets[tr], fraction=0.6, num_classes=10, seed=0, mode="flip")
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(256, 128), lr=1e-2)
    monitor = DiffusionSpectralEntropyMonitor(
        quantities=("dsmi_y",), max_samples=200, log_histogram=False
    )
    # zero arguments, as in the single-process test; or information only
    stopper = (
        OverfittingEarlyStopping(score_monitor=None) if label_free else OverfittingEarlyStopping()
    )
    dump = Dump(prefixes=("info/", "val_acc", "train_loss"))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=MAX_EPOCHS,
        callbacks=[monitor, stopper, dump],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(
        model,
        make_loader(ds.inputs[tr], ytr, batch_size=32, shuffle=True, seed=0),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=64),
    )
    rank = trainer.global_rank
    result = {
        "rank": rank,
        "world_size": trainer.world_size,
        "history": [list(h) for h in stopper.rule.history],
        "best_epoch": stopper.best_epoch,
        "reason": None if stopper.stop_reason is None else str(stopper.stop_reason),
        "checksum": float(sum(p.double().sum() for p in model.parameters())),
        "stopped_epoch": stopper.stopped_epoch,
        "current_epoch": trainer.current_epoch,
        "should_stop": bool(trainer.should_stop),
        "rows": dump.rows,
        "probe": monitor.state_dict()["probe_indices"].tolist(),
        "signal_warning": stopper.signal_warning,
        "train_losses": stopper.state_dict()["train_losses"],
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main(sys.argv[1], label_free=sys.argv[2:] == ["label_free"])
