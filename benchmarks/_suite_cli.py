"""The ``suite-*`` commands of ``benchmarks/overfitting.py`` (issue 19).

Usage::

    python benchmarks/overfitting.py suite-train --jobs 2            # every family, resumable
    python benchmarks/overfitting.py suite-train --quick --out /tmp/s  # 1 tiny run per family kind
    python benchmarks/overfitting.py suite-summary                   # one line per run
    python benchmarks/overfitting.py suite-analyze                   # the tables of RESULTS.md s.10

Runs are written to ``benchmarks/out/suite`` (one ``.pt`` per run, see ``_suite_runs.py``);
existing runs are skipped, so the sweep is resumable.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out" / "suite"
NOISE = (0.0, 0.2, 0.4, 0.6, 0.8)
SEEDS = (0, 1, 2)
QUICK_EPOCHS = 2
#: One family per kind of model/recipe for the quick mode: MLP+Adam, 1-D CNN+BN+SGD cosine+aug,
#: GRU on tokens, Transformer, fine-tuning.
QUICK_TASKS = (
    "tabular_hard_mlp",
    "signals_cnn_bn",
    "tokens_gru",
    "tokens_transformer",
    "mnist14_finetune_cnn_bn",
)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from _tasks import TASKS

    tr = sub.add_parser("suite-train", help="issue 19: train the suite's runs (no stopping)")
    tr.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=list(TASKS))
    tr.add_argument("--noise", nargs="+", type=float, default=list(NOISE))
    tr.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    tr.add_argument("--jobs", type=int, default=2)
    tr.add_argument("--epochs", type=int, default=None, help="override every family's epochs")
    tr.add_argument("--out", default=str(OUT))
    tr.add_argument("--quick", action="store_true", help=f"{QUICK_EPOCHS} epochs, p=0.3, seed 0")
    sm = sub.add_parser("suite-summary", help="issue 19: one line per run")
    sm.add_argument("--out", default=str(OUT))
    an = sub.add_parser("suite-analyze", help="issue 19: replayed stops, curves (tables)")
    an.add_argument("--out", default=str(OUT))
    an.add_argument("--seeds", nargs="+", type=int, default=None, help="only these seeds")


def _worker_init() -> None:
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def cmd_train(args: argparse.Namespace) -> list[str]:
    from _suite_runs import run_job, run_name
    from _tasks import TASKS

    tasks, noise, seeds, epochs = args.tasks, args.noise, args.seeds, args.epochs
    if args.quick:
        tasks = [t for t in QUICK_TASKS if t in tasks] or tasks[:1]
        noise, seeds = [0.3], [0]
        epochs = QUICK_EPOCHS if epochs is None else epochs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(t, float(p), int(s), epochs, str(out)) for s in seeds for p in noise for t in tasks]
    # the expensive families first, so that a parallel pool finishes together
    jobs.sort(key=lambda j: (j[2], -TASKS[j[0]].epochs * TASKS[j[0]].data()["x_train"].numel()))
    todo = [j for j in jobs if not (out / f"{run_name(*j[:3])}.pt").exists()]
    lines = [f"skip {run_name(*j[:3])}.pt (exists)" for j in jobs if j not in todo]
    print(f"{len(todo)} runs -> {out} (jobs={args.jobs}, {len(lines)} exist)", flush=True)
    t0 = time.perf_counter()
    for i, line in enumerate(_results(run_job, todo, args.jobs), 1):
        lines.append(line)
        print(f"[{i}/{len(todo)} {time.perf_counter() - t0:.0f}s] {line}", flush=True)
    return lines


def _results(fn, jobs: list, n_jobs: int):
    if n_jobs <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with mp.get_context("spawn").Pool(n_jobs, initializer=_worker_init) as pool:
        yield from pool.imap_unordered(fn, jobs)


def cmd_summary(args: argparse.Namespace) -> None:
    from _suite_runs import summarize

    for path in sorted(Path(args.out).glob("*.pt")):
        if not path.name.startswith("pretrained_"):
            print(summarize(torch.load(path, weights_only=True)))


def run_command(args: argparse.Namespace) -> None:
    if args.command == "suite-train":
        cmd_train(args)
    elif args.command == "suite-summary":
        cmd_summary(args)
    else:
        from _suite_analysis import analyze

        print(analyze(Path(args.out), args.seeds))
