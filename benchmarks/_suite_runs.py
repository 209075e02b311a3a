"""Training runs and per-epoch signals of the suite (issue 19), for ``overfitting.py suite-*``.

One run = one family of ``_tasks.py`` x label-noise level p x seed, trained to the family's fixed
epoch budget **without stopping**, recording at epoch 0 (initialization) and after every epoch, in
eval mode without gradients:

* ``curves`` (float64, index = epoch): ``val_acc, val_loss, test_acc, test_loss`` (clean labels),
  ``train_loss`` (mean noisy-label minibatch loss of the epoch, NaN at 0), ``train_acc_noisy``,
  ``train_acc_corrupted`` (memorization of the flipped labels; NaN when p = 0);
* ``probe_features``: float32 ``(E + 1, n_probe, D)``, the penultimate features of the probe (the
  first ``min(500, n_val)`` validation samples: the monitor's default probe size), and
  ``probe_labels`` (clean);
* ``signals`` (float64, index = epoch), computed from the probe features as the monitor does:
  ``dsmi_y`` = :func:`~lightning_info.functional.diffusion_spectral_mutual_information` with the
  clean labels, ``sigma="median"``, ``dtype=float32``, ``num_repeats=5``, ``seed=0``;
  ``dsmi_z`` = the same with ``clusters=cluster_reference(z, 10, seed=0, method="kmeans")`` of the
  features themselves (the label-free ``dsmi_z``); ``knn5`` = leave-one-out 5-NN accuracy of the
  probe features with the clean labels (a cheap companion).

Seeds (independent streams): weights ``torch.manual_seed(seed)``; label noise
``2**20 + seed``; minibatch order ``2**21 + seed``; augmentation ``2**23 + seed``; pretraining
(fine-tuning families) a fixed seed 0, the pretrained body cached in ``{out}/pretrained_{task}.pt``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _tasks import TASKS, Net, Task
from torch import Tensor

from lightning_info.functional import diffusion_spectral_mutual_information
from lightning_info.functional.dse import cluster_reference
from lightning_info.utilities.data import corrupt_labels

NOISE_SEED_OFFSET = 2**20
ORDER_SEED_OFFSET = 2**21
AUG_SEED_OFFSET = 2**23
PROBE_SIZE = 500  # the monitor's DEFAULT_MAX_SAMPLES
CURVES = (
    "val_acc",
    "val_loss",
    "test_acc",
    "test_loss",
    "train_loss",
    "train_acc_noisy",
    "train_acc_corrupted",
)


def run_name(task: str, noise: float, seed: int) -> str:
    return f"{task}_p{noise:.1f}_s{seed}"


@torch.no_grad()
def _forward(model: Net, x: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
    feats, logits = [], []
    for i in range(0, x.shape[0], batch):
        f, lo = model(x[i : i + batch])
        feats.append(f)
        logits.append(lo)
    return torch.cat(feats), torch.cat(logits)


def _acc(logits: Tensor, y: Tensor) -> float:
    if y.numel() == 0:
        return math.nan
    return (logits.argmax(1) == y).double().mean().item()


def _epoch(
    model: Net,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    order: torch.Generator,
    augment,
    aug_gen: torch.Generator,
) -> float:
    model.train()
    perm = torch.randperm(x.shape[0], generator=order)
    losses = []
    for i in range(0, x.shape[0], batch_size):
        idx = perm[i : i + batch_size]
        if idx.numel() < 2:  # BatchNorm needs two samples
            continue
        xb = x[idx] if augment is None else augment(x[idx], aug_gen)
        _, logits = model(xb)
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).double().mean().item()


def pretrained_body(task: Task, out: Path) -> dict[str, Tensor]:
    """The body pretrained on ``x_pre, y_pre`` (seed 0, Adam 1e-3, batch 64), cached on disk."""
    path = out / f"pretrained_{task.name}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    data = task.data()
    torch.manual_seed(0)
    model = Net(task.make_body(data), torch.nn.Linear(task.feature_dim, task.pretrain_classes))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(ORDER_SEED_OFFSET)
    aug = torch.Generator().manual_seed(AUG_SEED_OFFSET)
    for _ in range(task.pretrain_epochs):
        _epoch(model, opt, data["x_pre"], data["y_pre"], 64, order, task.augment, aug)
    state = model.body.state_dict()
    save_atomic(state, path)
    return state


def knn_accuracy(z: Tensor, labels: Tensor, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (majority vote, ties to the nearer neighbours)."""
    d = torch.cdist(z.double(), z.double())
    d.fill_diagonal_(float("inf"))
    idx = d.topk(k, largest=False).indices
    votes = torch.zeros(z.shape[0], int(labels.max()) + 1, dtype=torch.float64)
    weights = 1.0 + 1e-6 * torch.arange(k, 0, -1, dtype=torch.float64)
    votes.scatter_add_(1, labels[idx], weights.expand(z.shape[0], k).contiguous())
    return float((votes.argmax(1) == labels).double().mean())


def probe_signals(
    z: Tensor, labels: Tensor, *, sigma: float | str = "median", knn: bool = True
) -> dict[str, float]:
    """The monitor's ``dsmi_y`` and ``dsmi_z`` of one epoch's probe features, and 5-NN accuracy."""
    z = z.float()
    opts = {"sigma": sigma, "dtype": torch.float32, "num_repeats": 5, "seed": 0}
    out = {
        "dsmi_y": float(diffusion_spectral_mutual_information(z, labels, discrete=True, **opts)),
        "dsmi_z": float(
            diffusion_spectral_mutual_information(
                z,
                labels,
                clusters=cluster_reference(z, num_clusters=10, seed=0, method="kmeans"),
                **opts,
            )
        ),
    }
    if knn:
        out["knn5"] = knn_accuracy(z, labels, 5)
    return out


def train_run(
    task_name: str, noise: float, seed: int, out: Path, *, epochs: int | None = None
) -> dict:
    """Train one run (no stopping) and return its artifact (see the module docstring)."""
    t_start = time.perf_counter()
    task = TASKS[task_name]
    epochs = task.epochs if epochs is None else epochs
    data = task.data()
    x_tr, y_clean = data["x_train"], data["y_train"]
    y_noisy, corrupted = corrupt_labels(
        y_clean,
        fraction=noise,
        num_classes=task.num_classes,
        seed=NOISE_SEED_OFFSET + seed,
        mode="flip",
    )
    n_probe = min(PROBE_SIZE, data["y_val"].numel())
    x_probe, y_probe = data["x_val"][:n_probe], data["y_val"][:n_probe]
    body_state = pretrained_body(task, out) if task.pretrain_epochs else None

    torch.manual_seed(seed)
    model = task.model()
    if body_state is not None:
        model.body.load_state_dict(body_state)
    opt, sched = task.optimizer(model)
    order = torch.Generator().manual_seed(ORDER_SEED_OFFSET + seed)
    aug = torch.Generator().manual_seed(AUG_SEED_OFFSET + seed)

    curves = {k: torch.full((epochs + 1,), math.nan, dtype=torch.float64) for k in CURVES}
    feats = torch.empty(epochs + 1, n_probe, task.feature_dim, dtype=torch.float32)
    for epoch in range(epochs + 1):
        if epoch > 0:
            curves["train_loss"][epoch] = _epoch(
                model, opt, x_tr, y_noisy, task.batch_size, order, task.augment, aug
            )
            if sched is not None:
                sched.step()
        model.eval()
        _, lo_va = _forward(model, data["x_val"])
        _, lo_te = _forward(model, data["x_test"])
        _, lo_tr = _forward(model, x_tr)
        feats[epoch] = _forward(model, x_probe)[0]
        curves["val_acc"][epoch] = _acc(lo_va, data["y_val"])
        curves["val_loss"][epoch] = F.cross_entropy(lo_va, data["y_val"]).item()
        curves["test_acc"][epoch] = _acc(lo_te, data["y_test"])
        curves["test_loss"][epoch] = F.cross_entropy(lo_te, data["y_test"]).item()
        curves["train_acc_noisy"][epoch] = _acc(lo_tr, y_noisy)
        curves["train_acc_corrupted"][epoch] = _acc(lo_tr[corrupted], y_noisy[corrupted])
    t_train = time.perf_counter() - t_start
    signals: dict[str, list[float]] = {}
    for epoch in range(epochs + 1):
        for k, v in probe_signals(feats[epoch], y_probe).items():
            signals.setdefault(k, []).append(v)
    config = {
        "task": task_name,
        "split": task.split,
        "noise": float(noise),
        "seed": int(seed),
        "epochs": int(epochs),
        "n_train": int(x_tr.shape[0]),
        "n_probe": int(n_probe),
        "n_corrupted": int(corrupted.sum()),
        "num_classes": task.num_classes,
        "train_seconds": t_train,
        "total_seconds": time.perf_counter() - t_start,
        "torch_version": str(torch.__version__),
    }
    return {
        "config": config,
        "curves": curves,
        "signals": {k: torch.tensor(v, dtype=torch.float64) for k, v in signals.items()},
        "probe_features": feats,
        "probe_labels": y_probe.clone(),
    }


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def summarize(art: dict) -> str:
    c, cv = art["config"], art["curves"]
    best = int(torch.argmax(cv["val_acc"][1:])) + 1
    return (
        f"{run_name(c['task'], c['noise'], c['seed'])}: E={c['epochs']} "
        f"test best={cv['test_acc'][1:].max():.3f} @val-best(e={best})={cv['test_acc'][best]:.3f} "
        f"final={cv['test_acc'][-1]:.3f} train_noisy[-1]={cv['train_acc_noisy'][-1]:.3f} "
        f"corrupted[-1]={cv['train_acc_corrupted'][-1]:.3f} "
        f"train={c['train_seconds']:.0f}s total={c['total_seconds']:.0f}s"
    )


def run_job(job: tuple) -> str:
    """Train and save one run unless its file exists; return a one-line summary."""
    task, noise, seed, epochs, out = job
    path = Path(out) / f"{run_name(task, noise, seed)}.pt"
    if path.exists():
        return f"skip {path.name} (exists)"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        art = train_run(task, noise, seed, Path(out), epochs=epochs)
    finally:
        torch.set_num_threads(previous)
    save_atomic(art, path)
    return f"done {summarize(art)}"
