"""Benchmark: information curves that track generalization, and overfitting stops (issue 13).

Part 1 (``train``): a training harness. For many seeded training runs with label noise it saves,
for every epoch, the held-out representations and the accuracy/loss curves, so that stopping
policies and signals (DSE/DSMI, validation loss, ...) can be evaluated offline without retraining.
Part 2 (``analyze``): every signal of every run at every epoch (``_overfitting_signals.py``,
cached in ``{out}/signals``), each signal's agreement with test accuracy, and every stopping policy
replayed on the recorded curves (``_overfitting_policies.py``; ``OverfittingEarlyStopping`` through
its own ``StopRule``), printed side by side. Results: ``benchmarks/RESULTS.md`` section 8.

Setup
-----
* Datasets (``lightning_info.utilities.data.load_dataset``, nothing downloaded), split once per
  dataset by a permutation seeded with 0 (independent of the run seed):

  - ``mnist``: 5,000 real MNIST images (784 floats in [0, 1]): 3,000 train / 1,000 val / 1,000 test;
  - ``digits``: scikit-learn's 1,797 8x8 digits (64 floats in [0, 1]): 1,077 / 360 / 360.

* Label noise: a fraction ``p`` of the *training* labels is moved to a uniformly random other class
  (``corrupt_labels(..., mode="flip", seed=2**20 + run seed)``: exactly ``round(p * n_train)``
  labels, every chosen one wrong); ``p`` in {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}. Validation and test labels are
  always clean.
* Recipes (cross-entropy, batch 64, no weight decay, no augmentation; trained long enough to
  memorize the noisy labels; the evidence is in the comment above ``RECIPES``):

  - ``mlp_adam``: MLP D -> 256 -> 128 -> 10 (ReLU), Adam lr 1e-3; 80 epochs on mnist, 250 on
    digits;
  - ``cnn_sgdm``: conv(1->16, 3x3, pad 1) ReLU maxpool2 -> conv(16->32, 3x3, pad 1) ReLU maxpool2
    -> flatten -> Linear(->128) ReLU -> Linear(128->10), SGD lr 0.02 with momentum 0.9; 120
    epochs on mnist, 250 on digits.

  The penultimate representation is the input of the last ``nn.Linear`` (128-d) in both.
* Training: a plain PyTorch loop, one torch thread per process, deterministic: the weights are
  initialized after ``torch.manual_seed(seed)``, the minibatch order comes from a local
  ``torch.Generator`` seeded with ``2**21 + seed`` (a fresh permutation every epoch, last batch
  smaller). The offsets keep the streams independent (run seeds must be < 2**20).
* Recorded at epoch e = 0 (initialization, before any step) and after every epoch e = 1..E, in
  eval mode without gradients.

Artifact format
---------------
One file per run, ``{out}/{dataset}_{recipe}_p{p:.1f}_s{seed}.pt`` (default
``benchmarks/out/overfitting``), written with ``torch.save`` to a temporary file and then
``os.replace``; load it with ``torch.load(path, weights_only=True)``. A dict with (E = epochs,
n_val = 1,000 / 360, n_sub = 1,000 / 1,077 for mnist / digits):

* ``config``: dict of strings/numbers: ``dataset, recipe, noise, seed, epochs, optimizer, lr,
  momentum, batch_size, n_train, n_val, n_test, n_subset, n_corrupted, image_h, image_w,
  feature_dim, split_seed, subset_seed, noise_seed, order_seed, torch_version, total_seconds``.
* ``curves``: dict name -> float64 tensor ``(E + 1,)``, index = epoch:

  - ``val_acc, val_loss, test_acc, test_loss``: clean labels (loss = mean cross-entropy);
  - ``train_loss``: mean over the epoch's minibatches of the noisy-label training loss (train
    mode, during the epoch); NaN at e = 0;
  - ``train_acc_noisy, train_acc_clean``: a full eval-mode pass over the whole training set,
    against the noisy / the clean labels;
  - (extra) ``train_acc_corrupted``: ``train_acc_noisy`` restricted to the corrupted samples
    (memorization of the wrong labels; NaN when p = 0), ``train_acc_uncorrupted``: restricted to
    the others (NaN when p = 1).

* ``val_features``: float32 ``(E + 1, n_val, 128)``: penultimate features of all validation samples;
* ``val_labels``: int64 ``(n_val,)`` (clean);
* ``train_subset_index``: int64 ``(n_sub,)``: sorted positions *in the training split* of a fixed
  subset (seeded with 2**22, the same for every run of a dataset; digits: all 1,077);
* ``train_subset_features``: float16 ``(E + 1, n_sub, 128)``;
* ``train_subset_labels_noisy``, ``train_subset_labels_clean``: int64 ``(n_sub,)``;
* ``train_subset_corrupted``: bool ``(n_sub,)`` (noisy label != clean label);
* ``epoch_seconds``: float64 ``(E + 1,)``: wall time of the training epoch (0 at e = 0);
* ``eval_seconds``: float64 ``(E + 1,)``: wall time of that epoch's evaluation pass (val, test,
  full train set, feature extraction).

Usage::

    python benchmarks/overfitting.py train --quick --out /tmp/ovf      # 4 tiny runs, seconds
    python benchmarks/overfitting.py train --jobs 2                    # the full sweep (72 runs)
    python benchmarks/overfitting.py train --datasets mnist --recipes cnn_sgdm --noise 0.8 --seeds 0
    python benchmarks/overfitting.py summary                           # one line per artifact
    python benchmarks/overfitting.py analyze                           # the tables (signals cached)

Existing artifacts are skipped, so the sweep is resumable.

The suite (issue 19)
--------------------
``suite-train`` / ``suite-summary`` / ``suite-analyze`` run the same kind of record-everything
sweep on the families of ``_tasks.py`` (development and held-out, ``RESULTS.md`` section 13):
runs in ``_suite_runs.py`` (artifacts in ``benchmarks/out/suite``), commands in
``_suite_cli.py``, the replayed stops and curve tables in ``_suite_analysis.py``::

    python benchmarks/overfitting.py suite-train --jobs 2     # 9 families x 5 p x 3 seeds
    python benchmarks/overfitting.py suite-train --quick --out /tmp/suite   # seconds
    python benchmarks/overfitting.py suite-analyze
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_info.utilities.data import corrupt_labels, load_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules next to this file
import _suite_cli as _suite
from _suite_runs import _acc, _forward, save_atomic
from _tasks import Net

OUT = Path(__file__).resolve().parent / "out" / "overfitting"

SPLITS = {"mnist": (3000, 1000, 1000), "digits": (1077, 360, 360)}
SUBSET_SIZE = {"mnist": 1000, "digits": 1077}  # digits: the whole training split
# Independent random streams (a generator seeded with the run seed would replay the same
# permutation in two places: e.g. the corrupted samples would come first in epoch 1's order).
SPLIT_SEED = 0  # the dataset split, fixed
SUBSET_SEED = 2**22  # the training subset whose features are saved, fixed
NOISE_SEED_OFFSET = 2**20  # label corruption: NOISE_SEED_OFFSET + run seed
ORDER_SEED_OFFSET = 2**21  # minibatch order: ORDER_SEED_OFFSET + run seed
MAX_SEED = 2**20  # run seeds must be in [0, MAX_SEED)
FEATURE_DIM = 128
NUM_CLASSES = 10
NOISE_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SEEDS = (0, 1, 2)
QUICK_EPOCHS = 3
QUICK_NOISE = (0.0, 0.4)

# Epochs per dataset: enough to memorize p = 0.8 and p = 1.0 label noise (training accuracy on the
# noisy labels 1.000 at the last epoch), with a margin. Measured with seed 0 (epoch where
# train_acc_noisy first reaches ~1.0): mlp_adam mnist p=0.8: ~48, p=1.0: ~66; digits p=0.8: ~200
# (0.998), p=1.0: ~180. cnn_sgdm (lr 0.02) mnist p=0.8: ~80, p=1.0: ~70; digits p=0.8: ~160,
# p=1.0: ~170. lr 0.05 (the first choice) did not converge on mnist p=0.8: the noisy-label
# training loss kept spiking (train_acc_noisy 0.87-0.98 over epochs 60-150, never 1.0); lr 0.01
# memorized too (by ~88) but slower.
RECIPES: dict[str, dict] = {
    "mlp_adam": {
        "optimizer": "adam",
        "lr": 1e-3,
        "momentum": 0.0,
        "batch_size": 64,
        "epochs": {"mnist": 80, "digits": 250},
    },
    "cnn_sgdm": {
        "optimizer": "sgd",
        "lr": 0.02,
        "momentum": 0.9,
        "batch_size": 64,
        "epochs": {"mnist": 120, "digits": 250},
    },
}

CURVES = (
    "val_acc",
    "val_loss",
    "test_acc",
    "test_loss",
    "train_loss",
    "train_acc_noisy",
    "train_acc_clean",
    "train_acc_corrupted",
    "train_acc_uncorrupted",
)


# ----------------------------------------------------------------------------- models


def make_model(recipe: str, input_dim: int, image_shape: tuple[int, int]) -> Net:
    if recipe == "mlp_adam":
        body = nn.Sequential(
            nn.Linear(input_dim, 256), nn.ReLU(), nn.Linear(256, FEATURE_DIM), nn.ReLU()
        )
    elif recipe == "cnn_sgdm":
        h, w = image_shape
        flat = 32 * (h // 4) * (w // 4)
        body = nn.Sequential(
            nn.Unflatten(1, (1, h, w)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, FEATURE_DIM),
            nn.ReLU(),
        )
    else:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    return Net(body, nn.Linear(FEATURE_DIM, NUM_CLASSES))


def make_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(model.parameters(), lr=recipe["lr"])
    return torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"])


# ----------------------------------------------------------------------------- data


def split_data(dataset: str) -> dict[str, Tensor]:
    """Fixed train/val/test split of a dataset (a permutation seeded with ``SPLIT_SEED``)."""
    ds = load_dataset(dataset)
    n_train, n_val, n_test = SPLITS[dataset]
    perm = torch.randperm(ds.inputs.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr, va, te = perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
    assert te.numel() == n_test, (dataset, te.numel())
    return {
        "x_train": ds.inputs[tr],
        "y_train": ds.targets[tr],
        "x_val": ds.inputs[va],
        "y_val": ds.targets[va],
        "x_test": ds.inputs[te],
        "y_test": ds.targets[te],
        "image_shape": ds.image_shape,
    }


def train_subset_index(n_train: int, size: int) -> Tensor:
    """Sorted positions in the training split of the fixed feature subset (seeded, run-independent)."""
    if size >= n_train:
        return torch.arange(n_train)
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n_train, generator=gen)[:size].sort().values


# ----------------------------------------------------------------------------- one run


def run_name(dataset: str, recipe: str, noise: float, seed: int) -> str:
    return f"{dataset}_{recipe}_p{noise:.1f}_s{seed}"


def train_run(
    dataset: str,
    recipe_name: str,
    noise: float,
    seed: int,
    *,
    epochs: int | None = None,
    data: dict[str, Tensor] | None = None,
) -> dict:
    """Train one seeded run and return the artifact dict (see the module docstring)."""
    t_start = time.perf_counter()
    recipe = RECIPES[recipe_name]
    epochs = recipe["epochs"][dataset] if epochs is None else epochs
    data = split_data(dataset) if data is None else data
    x_tr, y_clean = data["x_train"], data["y_train"]
    x_va, y_va, x_te, y_te = data["x_val"], data["y_val"], data["x_test"], data["y_test"]
    n_train, n_val = x_tr.shape[0], x_va.shape[0]
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"`seed` must be in [0, {MAX_SEED}); got {seed}.")
    y_noisy, corrupted = corrupt_labels(
        y_clean, fraction=noise, num_classes=NUM_CLASSES, seed=NOISE_SEED_OFFSET + seed, mode="flip"
    )
    sub = train_subset_index(n_train, SUBSET_SIZE[dataset])

    torch.manual_seed(seed)
    model = make_model(recipe_name, x_tr.shape[1], data["image_shape"])
    optimizer = make_optimizer(model, recipe)
    order_gen = torch.Generator().manual_seed(ORDER_SEED_OFFSET + seed)
    bs = recipe["batch_size"]

    curves = {k: torch.full((epochs + 1,), math.nan, dtype=torch.float64) for k in CURVES}
    val_features = torch.empty(epochs + 1, n_val, FEATURE_DIM, dtype=torch.float32)
    sub_features = torch.empty(epochs + 1, sub.numel(), FEATURE_DIM, dtype=torch.float16)
    epoch_seconds = torch.zeros(epochs + 1, dtype=torch.float64)
    eval_seconds = torch.zeros(epochs + 1, dtype=torch.float64)

    for epoch in range(epochs + 1):
        if epoch > 0:
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n_train, generator=order_gen)
            losses = []
            for i in range(0, n_train, bs):
                idx = perm[i : i + bs]
                _, logits = model(x_tr[idx])
                loss = F.cross_entropy(logits, y_noisy[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.detach())
            curves["train_loss"][epoch] = torch.stack(losses).double().mean()
            epoch_seconds[epoch] = time.perf_counter() - t0

        t0 = time.perf_counter()
        model.eval()
        f_va, lo_va = _forward(model, x_va, batch=128)
        _, lo_te = _forward(model, x_te, batch=128)
        f_tr, lo_tr = _forward(model, x_tr, batch=128)
        curves["val_acc"][epoch] = _acc(lo_va, y_va)
        curves["val_loss"][epoch] = F.cross_entropy(lo_va, y_va).item()
        curves["test_acc"][epoch] = _acc(lo_te, y_te)
        curves["test_loss"][epoch] = F.cross_entropy(lo_te, y_te).item()
        curves["train_acc_noisy"][epoch] = _acc(lo_tr, y_noisy)
        curves["train_acc_clean"][epoch] = _acc(lo_tr, y_clean)
        curves["train_acc_corrupted"][epoch] = _acc(lo_tr[corrupted], y_noisy[corrupted])
        curves["train_acc_uncorrupted"][epoch] = _acc(lo_tr[~corrupted], y_noisy[~corrupted])
        val_features[epoch] = f_va
        sub_features[epoch] = f_tr[sub].to(torch.float16)
        eval_seconds[epoch] = time.perf_counter() - t0

    config = {
        "dataset": dataset,
        "recipe": recipe_name,
        "noise": float(noise),
        "seed": int(seed),
        "epochs": int(epochs),
        "optimizer": recipe["optimizer"],
        "lr": float(recipe["lr"]),
        "momentum": float(recipe["momentum"]),
        "batch_size": int(bs),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "n_test": int(x_te.shape[0]),
        "n_subset": int(sub.numel()),
        "n_corrupted": int(corrupted.sum()),
        "image_h": int(data["image_shape"][0]),
        "image_w": int(data["image_shape"][1]),
        "feature_dim": FEATURE_DIM,
        "split_seed": SPLIT_SEED,
        "subset_seed": SUBSET_SEED,
        "noise_seed": NOISE_SEED_OFFSET + int(seed),
        "order_seed": ORDER_SEED_OFFSET + int(seed),
        "torch_version": str(torch.__version__),
        "total_seconds": time.perf_counter() - t_start,
    }
    return {
        "config": config,
        "curves": curves,
        "val_features": val_features,
        "val_labels": y_va.clone(),
        "train_subset_index": sub.clone(),
        "train_subset_features": sub_features,
        "train_subset_labels_noisy": y_noisy[sub].clone(),
        "train_subset_labels_clean": y_clean[sub].clone(),
        "train_subset_corrupted": corrupted[sub].clone(),
        "epoch_seconds": epoch_seconds,
        "eval_seconds": eval_seconds,
    }


def summarize(art: dict) -> str:
    c, cv = art["config"], art["curves"]
    best = int(torch.argmax(cv["val_acc"]))
    return (
        f"{run_name(c['dataset'], c['recipe'], c['noise'], c['seed'])}: E={c['epochs']} "
        f"train_acc_noisy[-1]={cv['train_acc_noisy'][-1]:.3f} "
        f"corrupted[-1]={cv['train_acc_corrupted'][-1]:.3f} "
        f"test_acc best={cv['test_acc'].max():.3f} @val-best(e={best})={cv['test_acc'][best]:.3f} "
        f"final={cv['test_acc'][-1]:.3f} "
        f"s/epoch={art['epoch_seconds'][1:].mean():.2f}+{art['eval_seconds'].mean():.2f} "
        f"total={c['total_seconds']:.0f}s"
    )


def run_job(job: tuple) -> str:
    """Train and save one run unless its file exists; return a one-line summary."""
    dataset, recipe, noise, seed, epochs, out = job
    path = Path(out) / f"{run_name(dataset, recipe, noise, seed)}.pt"
    if path.exists():
        return f"skip {path.name} (exists)"
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        art = train_run(dataset, recipe, noise, seed, epochs=epochs)
    finally:
        torch.set_num_threads(previous)
    save_atomic(art, path)
    return f"done {summarize(art)}"


def _worker_init() -> None:
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


# ----------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> list[str]:
    datasets, noise, seeds, epochs = args.datasets, args.noise, args.seeds, args.epochs
    if args.quick:
        datasets, noise, seeds = ["digits"], list(QUICK_NOISE), [0]
        epochs = QUICK_EPOCHS if epochs is None else epochs
    out = Path(args.out)
    # the slow ones first so that the parallel pool finishes together
    jobs = [
        (d, r, float(p), int(s), epochs, str(out))
        for d in datasets
        for r in args.recipes
        for p in noise
        for s in seeds
    ]
    jobs.sort(key=lambda j: (j[0] != "mnist", j[1] != "cnn_sgdm", j[3], j[2]))
    done = [j for j in jobs if (out / f"{run_name(*j[:4])}.pt").exists()]
    lines = [f"skip {run_name(*j[:4])}.pt (exists)" for j in done]
    jobs = [j for j in jobs if j not in done]
    print(f"{len(jobs)} runs -> {out} (jobs={args.jobs}, {len(done)} exist)", flush=True)
    t0 = time.perf_counter()
    if not jobs:
        return lines
    if args.jobs <= 1:
        results = map(run_job, jobs)
        for i, line in enumerate(results, 1):
            lines.append(line)
            print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {line}", flush=True)
    else:
        with mp.get_context("spawn").Pool(args.jobs, initializer=_worker_init) as pool:
            for i, line in enumerate(pool.imap_unordered(run_job, jobs), 1):
                lines.append(line)
                print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {line}", flush=True)
    return lines


def cmd_summary(args: argparse.Namespace) -> None:
    for path in sorted(Path(args.out).glob("*.pt")):
        print(summarize(torch.load(path, weights_only=True)))


def load_runs(out: Path, *, compute: bool = True) -> list[dict]:
    """Every artifact with its per-epoch signals (computed once, cached in ``out/signals``)."""
    from _overfitting_signals import cached_signals

    runs, splits = [], {}
    for path in sorted(out.glob("*.pt")):
        cache = out / "signals" / path.name
        if not compute and not cache.exists():
            continue
        art = torch.load(path, weights_only=True)
        cfg = art["config"]
        if cfg["dataset"] not in splits:
            splits[cfg["dataset"]] = split_data(cfg["dataset"])
        signals = cached_signals(path, out / "signals", splits[cfg["dataset"]]["x_val"])
        runs.append({"name": path.stem, **cfg, "curves": art["curves"], "signals": signals})
    return runs


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


SIGNALS = {  # table rows: name -> signal key (probe size after "@"; MNIST has 500 and 1,000,
    # digits its 360 validation samples) or curve
    "val_acc": "curve:val_acc",
    "-val_loss": "curve:val_loss",
    "10-NN probe accuracy (held-out, needs labels)": "knn_acc@500",
    "RankMe (label-free)": "rankme@500",
    "DSE, sigma=10, N=1000": "dse/fixed10@1000",
    "DSE, median, N=500": "dse/median@500",
    "DSMI(Z;Y), sigma=10, N=1000 (previous default)": "dsmi_y/fixed10@1000",
    "DSMI(Z;Y), median, N=1000": "dsmi_y/median@1000",
    "DSMI(Z;Y), knn, N=500": "dsmi_y/knn@500",
    "**DSMI(Z;Y), median, N=500 (monitor default)**": "dsmi_y/median@500",
    "DSMI(Z;X), median, N=500 (label-free)": "dsmi_x/median@500",
    "DSMI(Z;k-means Z), median, N=500 (dsmi_z, label-free)": "dsmi_z/median@500",
    "DSMI(Z;k-means Z), median, N=1000": "dsmi_z/median@1000",
}


def _series(run: dict, key: str) -> np.ndarray:
    from _overfitting_policies import _sig

    if key.startswith("curve:"):
        values = run["curves"][key[6:]].numpy()
        return -values if key.endswith("loss") else values
    name, _, n = key.partition("@")
    return _sig(run, name, int(n)) if n else _sig(run, name)


def signal_table(runs: list[dict]) -> str:
    """Each signal's Spearman with test accuracy and the issue's rise/hold/track criteria."""
    from _overfitting_signals import spearman

    header = "| signal | clean: rho first 10 | clean: last/max | noisy p>=0.4: rho whole run | noisy: last <= at best-test epoch |"
    lines = [header, "|" + "---|" * 5]
    for label, key in SIGNALS.items():
        rise, hold, track, below = [], [], [], []
        for run in runs:
            try:
                v = _series(run, key)
            except KeyError:
                continue
            t = run["curves"]["test_acc"].numpy()
            if run["noise"] == 0.0:
                rise.append(spearman(v[1:11], t[1:11]))
                hold.append(v[-1] / np.max(v[1:]) if np.max(v[1:]) > 0 else math.nan)
            elif run["noise"] >= 0.4 and run["noise"] < 1.0:
                track.append(spearman(v[1:], t[1:]))
                best = 1 + int(np.argmax(t[1:]))
                below.append(float(v[-1] <= v[best]))
        lines.append(
            f"| {label} | {_mean(rise):+.2f} | {_mean(hold):.2f} | {_mean(track):+.2f} | {_mean(below):.2f} |"
        )
    return "\n".join(lines)


def policy_tables(runs: list[dict]) -> str:
    """Per policy and dataset: mean/max regret over p in 0..0.8, per-p regret, stop epochs."""
    from _overfitting_policies import POLICIES, regret

    noise = sorted({r["noise"] for r in runs if r["noise"] < 1.0})
    out = []
    for dataset in sorted({r["dataset"] for r in runs}):
        sub = [r for r in runs if r["dataset"] == dataset and r["noise"] < 1.0]
        cols = " | ".join(f"p={p:g}" for p in noise)
        out.append(
            f"\n**{dataset}** ({len(sub)} runs: {sorted({r['recipe'] for r in sub})}, seeds {sorted({r['seed'] for r in sub})})\n"
        )
        out.append(
            f"| policy | mean regret (pp) | max regret | runs > 3 pp | {cols} | mean stop epoch (of E) | clean runs stopped with regret > 1 pp |"
        )
        out.append("|" + "---|" * (6 + len(noise)))
        for name, policy in POLICIES.items():
            try:
                results = [(r, policy(r)) for r in sub]
            except KeyError:
                continue
            regrets = [regret(r["curves"]["test_acc"].numpy(), o) for r, o in results]
            by_p = [
                _mean([g for (r, _), g in zip(results, regrets) if r["noise"] == p]) for p in noise
            ]
            stops = _mean([o.stop_epoch / r["epochs"] for r, o in results])
            false = sum(
                1
                for (r, o), g in zip(results, regrets)
                if r["noise"] == 0.0 and o.stop_epoch < r["epochs"] and g > 1.0
            )
            out.append(
                f"| {name} | {_mean(regrets):.2f} | {max(regrets):.1f} | {sum(g > 3 for g in regrets)} | "
                + " | ".join(f"{v:.2f}" for v in by_p)
                + f" | {stops:.2f} | {false} |"
            )
    return "\n".join(out)


def analyze(out: Path, *, compute: bool = True) -> None:
    """Part 2 of issue 13: every signal's tracking of test accuracy, and the stopping policies."""
    runs = load_runs(out, compute=compute)
    print(
        f"{len(runs)} runs: " + ", ".join(sorted({f"{r['dataset']}/{r['recipe']}" for r in runs}))
    )
    print("\n### Signals (mean over runs; test accuracy on clean labels)\n")
    print(signal_table(runs))
    print("\n### Stopping policies: test-accuracy regret vs the best epoch (percentage points)")
    print(policy_tables(runs))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _suite.add_commands(sub)
    tr = sub.add_parser("train", help="train the runs and save one artifact per run")
    tr.add_argument("--datasets", nargs="+", choices=sorted(SPLITS), default=["mnist", "digits"])
    tr.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    tr.add_argument("--noise", nargs="+", type=float, default=list(NOISE_LEVELS))
    tr.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    tr.add_argument("--jobs", type=int, default=2, help="parallel worker processes (1 thread each)")
    tr.add_argument("--out", default=str(OUT))
    tr.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    tr.add_argument("--quick", action="store_true", help="digits, 3 epochs, p in {0, 0.4}, seed 0")
    sm = sub.add_parser("summary", help="one line per saved artifact")
    sm.add_argument("--out", default=str(OUT))
    an = sub.add_parser("analyze", help="offline signals and stopping policies (tables)")
    an.add_argument("--out", default=str(OUT))
    an.add_argument(
        "--cached-only", action="store_true", help="only runs whose signals are computed already"
    )
    args = parser.parse_args(argv)
    if args.command.startswith("suite-"):
        return _suite.run_command(args)
    if args.command == "train":
        cmd_train(args)
    elif args.command == "summary":
        cmd_summary(args)
    else:
        analyze(Path(args.out), compute=not args.cached_only)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # leaves the Pool's `with`, which terminates the workers


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sys.exit(main())
