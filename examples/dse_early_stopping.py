"""Stop a run that memorises: held-out DSMI(Z;Y) with clean vs randomly permuted training labels.

The same MLP is trained twice on scikit-learn's digits: once with the true labels and once with
the training labels randomly permuted (the "wronglabel" experiment of Liao, Liu et al. 2023,
arXiv 2312.04823). ``DiffusionSpectralEntropyMonitor`` with its defaults (kernel width: the
median pairwise distance of the probe features) logs DSE and DSMI(Z;Y) of the penultimate
features on a fixed held-out probe after every epoch; a second monitor logs the same at the
paper's fixed sigma = 10 under the prefix ``info_fixed10/`` for comparison. The zero-argument
``OverfittingEarlyStopping`` picks the best epoch by the logged ``val_acc``, stops after 10
evaluations with neither a new best nor a new maximum of the default-width DSMI, and restores the
best epoch's weights. Both curves, the stop / kept epochs and the validation accuracy
of the weights each run ends with are printed; the curves are plotted to
``<out>/dse_early_stopping.png``.

    python examples/dse_early_stopping.py            # ~10-30 s on 2 CPU cores
    python examples/dse_early_stopping.py --quick    # seconds: smaller training set, fewer epochs
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_info import (
    DiffusionSpectralEntropy,
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
)
from lightning_info.callbacks.dse import DEFAULT_SIGMA
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import corrupt_labels, load_dataset, make_loader, train_val_split

#: the paper's fixed kernel width, logged beside the monitor's default under FIXED_PREFIX
SIGMA = 10.0
FIXED_PREFIX = "info_fixed10/"
RUNS = ("clean", "permuted")


class CurveRecorder(pl.Callback):
    """Keeps the monitors' values per epoch (read after the monitors have logged them)."""

    def __init__(self) -> None:
        self.curve: dict[int, dict[str, float]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.curve[trainer.current_epoch] = {
            key: float(value) for key, value in trainer.callback_metrics.items()
        }


class Run:
    """One training run: its curves, the stopper, the model (with the restored weights) and the
    validation accuracy of those weights."""

    def __init__(
        self,
        recorder: CurveRecorder,
        stopper: OverfittingEarlyStopping,
        model: MLPClassifier,
        final_val_acc: float,
        max_epochs: int,
    ) -> None:
        self.recorder, self.stopper, self.model = recorder, stopper, model
        self.final_val_acc, self.max_epochs = final_val_acc, max_epochs

    @property
    def curve(self) -> dict[int, dict[str, float]]:
        return self.recorder.curve


@torch.no_grad()
def accuracy(model: MLPClassifier, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x`` classified as ``y``, in eval mode."""
    was_training = model.training
    model.eval()
    acc = (model(x).argmax(1) == y).float().mean().item()
    model.train(was_training)
    return acc


def train(*, permute: bool, quick: bool, seed: int = 0) -> Run:
    """Train the MLP on clean or permuted digits labels; return its curves, stopper and model."""
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
    # zero arguments: best epoch by the logged val_acc, DSMI(Z;Y) from "info/dsmi_y/penultimate"
    stopper = OverfittingEarlyStopping()
    options = dict(
        quantities=("dse", "dsmi_y"), max_samples=200 if quick else 1000, log_histogram=False
    )
    monitor = DiffusionSpectralEntropyMonitor(**options)  # the default width (median)
    monitor_fixed = DiffusionSpectralEntropyMonitor(
        **options,
        metric=DiffusionSpectralEntropy(sigma=SIGMA),  # the paper's fixed width, for comparison
        log_key_prefix=FIXED_PREFIX,
    )
    max_epochs = 6 if quick else 30
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        callbacks=[monitor, monitor_fixed, recorder, stopper],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        deterministic=True,
    )
    val_x, val_y = ds.inputs[val_idx], ds.targets[val_idx]
    trainer.fit(
        model,
        make_loader(
            ds.inputs[train_idx], y_train, batch_size=32 if quick else 64, shuffle=True, seed=seed
        ),
        make_loader(val_x, val_y, batch_size=256),  # so that the stopper sees val_acc
    )
    # the weights the user ends with: the stopper has restored the best epoch's
    return Run(recorder, stopper, model, accuracy(model, val_x, val_y), max_epochs)


def format_table(runs: dict[str, Run]) -> list[str]:
    """Per-epoch table: default-width DSE / DSMI, fixed-10 DSE / DSMI and val_acc for each run."""
    cols = (
        ("DSE", "info/dse/penultimate"),
        ("DSMI", "info/dsmi_y/penultimate"),
        ("DSE@10", f"{FIXED_PREFIX}dse/penultimate"),
        ("DSMI@10", f"{FIXED_PREFIX}dsmi_y/penultimate"),
        ("val_acc", "val_acc"),
    )
    block = 8 * len(cols) - 1
    lines = [
        f"{'':>5} | " + " | ".join(f"{name + ' labels':^{block}}" for name in runs),
        f"{'epoch':>5} | " + " | ".join(" ".join(f"{c:>7}" for c, _ in cols) for _ in runs),
    ]
    lines.append("-" * len(lines[1]))
    epochs = max(run.max_epochs for run in runs.values())
    for epoch in range(epochs):
        cells = []
        for run in runs.values():
            row = run.curve.get(epoch)
            if row is None:
                cells.append(f"{'stopped':>7}" + " " * (block - 7))
            else:
                cells.append(" ".join(f"{row[key]:>7.3f}" for _, key in cols))
        lines.append(f"{epoch:>5} | {' | '.join(cells)}".rstrip())
    return lines


def outcome_lines(runs: dict[str, Run]) -> list[str]:
    """Per run: where it stopped, which epoch's weights it kept and their val accuracy."""
    lines = []
    for name, run in runs.items():
        stopper = run.stopper
        if stopper.stopped_epoch:
            stop = (
                f"stopped by OverfittingEarlyStopping at epoch {stopper.stopped_epoch} "
                f"({stopper.rule.reason})"
            )
        else:
            stop = f"trained all {len(run.curve)} epochs (not stopped)"
        lines.append(
            f"{name}: {stop}; kept the weights of epoch {stopper.best_epoch}; "
            f"val accuracy of the kept weights {run.final_val_acc:.3f}"
        )
    return lines


def plot(runs: dict[str, Run], png: Path) -> None:
    """DSE, DSMI(Z;Y) at both widths and val_acc per epoch; stop (x) and kept epoch (o) marked."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.9))
    colors = {"clean": "tab:blue", "permuted": "tab:red"}
    panels = (("dse", "held-out DSE (bits)"), ("dsmi_y", "held-out DSMI(Z;Y) (bits)"))
    for ax, (quantity, title) in zip(axes, panels):
        for name, run in runs.items():
            xs = sorted(run.curve)
            for prefix, ls, width in (("info/", "-", DEFAULT_SIGMA), (FIXED_PREFIX, "--", "10")):
                key = f"{prefix}{quantity}/penultimate"
                ax.plot(
                    xs,
                    [run.curve[e][key] for e in xs],
                    ls=ls,
                    marker=".",
                    color=colors[name],
                    label=f"{name}, sigma = {width}",
                )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    ax = axes[2]
    for name, run in runs.items():
        xs = sorted(run.curve)
        ax.plot(xs, [run.curve[e]["val_acc"] for e in xs], marker=".", color=colors[name])
        best = run.stopper.best_epoch
        ax.plot(
            [best],
            [run.curve[best]["val_acc"]],
            "o",
            mfc="none",
            ms=11,
            color=colors[name],
            label=f"{name}: kept epoch {best} ({run.final_val_acc:.3f})",
        )
        if run.stopper.stopped_epoch:
            stop = run.stopper.stopped_epoch
            ax.plot(
                [stop],
                [run.curve[stop]["val_acc"]],
                "x",
                ms=10,
                color=colors[name],
                label=f"{name}: stopped at epoch {stop}",
            )
    ax.axhline(0.1, color="grey", ls=":", lw=0.8)
    ax.set_ylim(0, 1.02)
    ax.set_title("val accuracy (OverfittingEarlyStopping's score)", fontsize=10)
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    fig.suptitle(
        "digits MLP, clean vs permuted training labels; held-out probe, monitor default width "
        f"(sigma = {DEFAULT_SIGMA}, solid) and sigma = {SIGMA:g} (dashed)",
        fontsize=10,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Run]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of minutes")
    parser.add_argument("--out", default="examples/figures", help="folder for the PNG")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    pl.seed_everything(0, verbose=False)
    runs = {name: train(permute=name == "permuted", quick=args.quick) for name in RUNS}

    print(
        "\nHeld-out DSE and DSMI(Z;Y) of the penultimate features (bits), per epoch: monitor "
        f"default width (sigma = {DEFAULT_SIGMA}) and the paper's sigma = {SIGMA:g} (@10)"
    )
    for line in format_table(runs):
        print(line)
    for line in outcome_lines(runs):
        print(line)
    png = Path(args.out) / "dse_early_stopping.png"
    plot(runs, png)
    print(f"saved {png}")
    return runs


if __name__ == "__main__":
    torch.set_num_threads(1)  # small work; the machine is shared
    main()
