"""Stop a run that memorises: held-out DSMI(Z;Y) with clean vs randomly permuted training labels.

The same MLP is trained twice on scikit-learn's digits: once with the true labels and once with
the training labels randomly permuted (the "wronglabel" experiment of Liao, Liu et al. 2023,
arXiv 2312.04823). ``DiffusionSpectralEntropyMonitor`` logs DSE and DSMI(Z;Y) of the penultimate
features on a fixed held-out probe after every epoch, and ``OverfittingEarlyStopping`` (default
settings) stops the permuted run while the clean one trains on. Both curves are printed.

    python examples/dse_early_stopping.py            # ~1-3 min on 2 CPU cores
    python examples/dse_early_stopping.py --quick    # seconds: smaller training set, fewer epochs
"""

from __future__ import annotations

import argparse
import warnings

import pytorch_lightning as pl
import torch

from lightning_info import (
    DiffusionSpectralEntropy,
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
)
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split


class CurveRecorder(pl.Callback):
    """Keeps the monitor's values per epoch (read after the monitor has logged them)."""

    def __init__(self) -> None:
        self.curve: dict[int, dict[str, float]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.curve[trainer.current_epoch] = {
            key: float(value) for key, value in trainer.callback_metrics.items()
        }


def train(
    *, permute: bool, quick: bool, seed: int = 0
) -> tuple[CurveRecorder, OverfittingEarlyStopping]:
    """Train the MLP on clean or permuted digits labels; return its curves and the stopper."""
    ds = load_dataset("digits")
    train_idx, val_idx = train_val_split(len(ds.targets), val_fraction=0.25, seed=seed)
    if quick:
        train_idx = train_idx[:400]  # memorised within a few epochs
    y_train = ds.targets[train_idx]
    if permute:
        y_train, _ = corrupt_labels(
            y_train, fraction=1.0, num_classes=10, seed=seed, mode="permute"
        )
    torch.manual_seed(seed)
    model = MLPClassifier(64, 10, hidden=(256, 128), lr=1e-2 if quick else 3e-3)
    recorder = CurveRecorder()
    stopper = OverfittingEarlyStopping()  # monitors "info/dsmi_y/penultimate" and "train_loss"
    monitor = DiffusionSpectralEntropyMonitor(
        quantities=("dse", "dsmi_y"),
        max_samples=200 if quick else 1000,
        log_histogram=False,
        metric=DiffusionSpectralEntropy(sigma=10.0),  # the paper's fixed width
    )
    trainer = pl.Trainer(
        max_epochs=6 if quick else 30,
        callbacks=[monitor, recorder, stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(
        model,
        make_loader(
            ds.inputs[train_idx], y_train, batch_size=32 if quick else 64, shuffle=True, seed=seed
        ),
        make_loader(ds.inputs[val_idx], ds.targets[val_idx], batch_size=256),
    )
    return recorder, stopper


def main(
    argv: list[str] | None = None,
) -> dict[str, tuple[CurveRecorder, OverfittingEarlyStopping]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of minutes")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    pl.seed_everything(0, verbose=False)
    runs = {
        name: train(permute=name == "permuted", quick=args.quick) for name in ("clean", "permuted")
    }

    print("\nHeld-out DSE and DSMI(Z;Y) of the penultimate features (bits), per epoch")
    print(
        f"{'epoch':>5} | {'clean DSE':>9} {'clean DSMI':>10} {'val_acc':>7} | "
        f"{'permuted DSE':>12} {'permuted DSMI':>13} {'val_acc':>7}"
    )
    epochs = max(max(rec.curve) for rec, _ in runs.values()) + 1
    for epoch in range(epochs):
        cells = []
        for name, width in (("clean", (9, 10)), ("permuted", (12, 13))):
            row = runs[name][0].curve.get(epoch)
            if row is None:
                cells.append(f"{'stopped':>{width[0]}} {'':>{width[1]}} {'':>7}")
            else:
                cells.append(
                    f"{row['info/dse/penultimate']:>{width[0]}.3f} "
                    f"{row['info/dsmi_y/penultimate']:>{width[1]}.3f} {row['val_acc']:>7.3f}"
                )
        print(f"{epoch:>5} | {cells[0]} | {cells[1]}")
    for name, (rec, stopper) in runs.items():
        if stopper.stopped_epoch:
            print(
                f"{name}: stopped by OverfittingEarlyStopping after epoch {stopper.stopped_epoch}"
            )
        else:
            print(f"{name}: trained all {len(rec.curve)} epochs (not stopped)")
    return runs


if __name__ == "__main__":
    main()
