"""SUI's mislabel ranking on the suite's families (issue 19), for ``mislabel.py suite-*``.

A cell = (family of ``_tasks.py``, p, seed). The family's own recipe (minibatches, schedule,
augmentation, pretrained body) trains on labels flipped at rate p (``corrupt_labels(mode="flip",
seed=2**20 + seed)``, as the overfitting suite) for the family's epoch budget. Two regimes of the
same run: **moderate** = the weights of the best validation-accuracy epoch (what a stop with best
restore keeps), **memorize** = the last epoch. Methods (higher = more suspicious):

* ``loss``: cross-entropy on the noisy label;
* ``tracin``: TracIn self-influence, sum over 5 checkpoints evenly spaced up to the regime's
  epoch of lr_epoch * ||grad loss||^2;
* ``cleanlab``: minus cleanlab's self-confidence label quality on 5-fold (stratified, seeded)
  out-of-fold probabilities; each fold trains the family's recipe (pretrained body included) for
  the moderate regime's epoch count; one score shared by both regimes;
* ``trak``: TRAK self-influence at the regime's weights (``mislabel.score_trak``: BasicProjector,
  dimension 512, float32, CPU);
* ``sui_looerr`` / ``sui_weight``: ``SmoothUniqueInformation(max_samples=None)`` with its defaults
  scored outside fit (``score(..., init_state=fit-start weights, recipe=the family's optimizer,
  lr, momentum, weight decay and the optimizer steps to the regime)``): the leave-one-out error
  is what ``suspicious_samples(by="auto")`` ranks by.

One JSON line per (cell, regime, method) in ``{out}/results.jsonl`` (resumable by cell).
"""

from __future__ import annotations

import functools
import json
import math
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from _suite_runs import (
    AUG_SEED_OFFSET,
    NOISE_SEED_OFFSET,
    ORDER_SEED_OFFSET,
    _epoch,
    pretrained_body,
)
from _tasks import TASKS, Task
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_info.utilities.data import corrupt_labels

OUT = Path(__file__).resolve().parent / "out" / "suite_mislabel"
PRETRAINED = Path(__file__).resolve().parent / "out" / "suite"
NOISE = (0.1, 0.3)
CHECKPOINTS = 5
FOLDS = 5


class Logits(nn.Module):
    """The family's ``Net`` seen as a plain classifier (logits only)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[1]


def _fresh(task: Task, seed: int) -> nn.Module:
    body = pretrained_body(task, PRETRAINED) if task.pretrain_epochs else None
    torch.manual_seed(seed)
    model = task.model()
    if body is not None:
        model.body.load_state_dict(body)
    return model


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(task: Task, x: Tensor, y: Tensor, seed: int, epochs: int, x_val=None, y_val=None):
    """The family's recipe; returns the model and per-epoch (state, lr, val acc) from epoch 0."""
    model = _fresh(task, seed)
    opt, sched = task.optimizer(model)
    order = torch.Generator().manual_seed(ORDER_SEED_OFFSET + seed)
    aug = torch.Generator().manual_seed(AUG_SEED_OFFSET + seed)
    history = [(_state(model), opt.param_groups[0]["lr"], math.nan)]
    for _ in range(epochs):
        lr = opt.param_groups[0]["lr"]
        _epoch(model, opt, x, y, task.batch_size, order, task.augment, aug)
        if sched is not None:
            sched.step()
        acc = math.nan
        if x_val is not None:
            model.eval()
            with torch.no_grad():
                acc = float((model(x_val)[1].argmax(1) == y_val).double().mean())
        history.append((_state(model), lr, acc))
    return model, history


def grad_sq_norms(model: nn.Module, state: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Per-sample ||grad CE||^2 at ``state`` (eval mode); vmap, or a loop where vmap fails."""
    from mislabel import per_sample_grad_sq_norms

    net = Logits(model).eval()
    net.net.load_state_dict(state)
    try:
        return per_sample_grad_sq_norms(net, None, x, y)
    except Exception:  # e.g. GRU kernels without a batching rule: one sample at a time
        out = torch.empty(x.shape[0], dtype=torch.float64)
        params = [p for p in net.parameters() if p.requires_grad]
        for i in range(x.shape[0]):
            loss = F.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, params)
            out[i] = sum(float(g.pow(2).sum()) for g in grads)
        return out


def cleanlab_scores(task: Task, x: Tensor, y: Tensor, seed: int, epochs: int) -> np.ndarray:
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    probs = np.zeros((x.shape[0], task.num_classes))
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    for k, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        model, _ = train(task, x[tr], y[tr], 1000 * seed + 1 + k, epochs)
        model.eval()
        with torch.no_grad():
            probs[te] = model(x[te])[1].double().softmax(1).numpy()
    return -np.asarray(get_label_quality_scores(y.numpy(), probs), dtype=np.float64)


class _Lit:
    """A minimal LightningModule around the family's network for ``SmoothUniqueInformation``."""

    @staticmethod
    def make(net: nn.Module, task: Task) -> Any:
        import pytorch_lightning as pl

        class Lit(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.net = Logits(net)

            def forward(self, x: Tensor) -> Tensor:
                return self.net(x)

            def training_step(self, batch: Any, batch_idx: int) -> Tensor:
                return F.cross_entropy(self(batch[0]), batch[1])

            def configure_optimizers(self):
                return task.optimizer(self)[0]

        return Lit()


def sui_scores(task: Task, model: nn.Module, init_state, x, y, x_val, y_val, steps: int):
    from lightning_info.callbacks.sui import SmoothUniqueInformation
    from lightning_info.functional.training_recipe import TrainingRecipe

    module = _Lit.make(model, task)
    init = {f"net.net.{k}": v for k, v in init_state.items()}
    recipe = TrainingRecipe(
        optimizer={"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}[task.optimizer_name],
        learning_rate=task.lr,
        weight_decay=task.weight_decay,
        momentum=task.momentum,
        steps_taken=steps,
        num_optimizers=1,
        num_param_groups=1,
        has_scheduler=task.cosine,
    )
    sui = SmoothUniqueInformation(max_samples=None)
    scores = sui.score(
        module,
        TensorDataset(x, y),
        TensorDataset(x_val, y_val),
        init_state=init,
        recipe=recipe,
        write=False,
    )
    out = []
    for name in ("loo_error", "weight_si"):
        v = np.full(x.shape[0], np.nan)
        v[scores.indices.numpy()] = getattr(scores, name).double().numpy()
        out.append(v)
    return np.stack(out)


def _timed(scores: dict, timing: dict, errors: list, name: str, fn, *args) -> None:
    """``scores[name] = fn(*args)`` with its wall time; an exception becomes an error line."""
    s = time.perf_counter()
    try:
        scores[name] = np.asarray(fn(*args), dtype=np.float64)
    except Exception as err:  # reported in the results, not hidden
        errors.append((name, f"{type(err).__name__}: {err}"))
    timing[name] = time.perf_counter() - s


def run_cell(
    task_name: str,
    noise: float,
    seed: int,
    out: Path,
    *,
    epochs: int | None = None,
    max_train: int | None = None,
    optional_peers: bool = True,
) -> list[dict]:
    """Every method at both regimes of one cell; returns the result lines (also appended).

    ``epochs`` / ``max_train`` (the first samples of the training split) shrink a cell for the
    quick test; the reported cells use neither. ``optional_peers=False`` leaves out the peers
    that need the optional ``bench`` extra (cleanlab, TRAK), as the quick test does.
    """
    import dataclasses

    from mislabel import auroc, precision_at_k, score_trak

    task = TASKS[task_name]
    if epochs is not None:  # quick mode
        task = dataclasses.replace(task, epochs=epochs)
    data = task.data()
    x, x_val, y_val = data["x_train"][:max_train], data["x_val"], data["y_val"]
    y, flipped = corrupt_labels(
        data["y_train"][:max_train],
        fraction=noise,
        num_classes=task.num_classes,
        seed=NOISE_SEED_OFFSET + seed,
        mode="flip",
    )
    t0 = time.perf_counter()
    model, history = train(task, x, y, seed, task.epochs, x_val, y_val)
    accs = [h[2] for h in history]
    moderate = 1 + int(np.nanargmax(accs[1:]))
    steps_per_epoch = math.ceil(x.shape[0] / task.batch_size)
    base = {"task": task_name, "split": task.split, "noise": noise, "seed": seed}
    if epochs is not None or max_train is not None:
        base.update(quick_epochs=epochs, quick_max_train=max_train)
    shared: dict[str, Any] = {}  # cleanlab (trained once), SUI (once with an adaptive optimizer)
    lines = []
    for regime, epoch in (("moderate", moderate), ("memorize", task.epochs)):
        state = history[epoch][0]
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            logits = model(x)[1]
        info = {
            **base,
            "regime": regime,
            "epoch": epoch,
            "val_acc": accs[epoch],
            "flipped_fit": float((logits.argmax(1)[flipped] == y[flipped]).double().mean()),
            "train_seconds": time.perf_counter() - t0,
        }
        scores: dict[str, np.ndarray] = {}
        timing: dict[str, float] = {}
        errors: list[tuple[str, str]] = []
        run = functools.partial(_timed, scores, timing, errors)
        run("loss", _loss, logits, y)
        cps = sorted({max(1, round(epoch * (i + 1) / CHECKPOINTS)) for i in range(CHECKPOINTS)})
        run("tracin", _tracin, model, history, cps, x, y)
        if optional_peers and "cleanlab" not in shared:
            run("cleanlab", cleanlab_scores, task, x, y, seed, moderate)
            shared["cleanlab"] = scores.get("cleanlab")
        elif shared.get("cleanlab") is not None:
            scores["cleanlab"] = shared["cleanlab"]
        model.load_state_dict(state)
        net = Logits(model).eval()
        ctx = types.SimpleNamespace(net=net, x_train=x, y_train=y, info=lambda **kw: None)
        if optional_peers:
            run("trak", score_trak, ctx)
        if "sui" not in shared or task.optimizer_name == "sgd":
            # adaptive optimizers: SUI scores the converged linearized run at the initial
            # weights, whatever the step count, so both regimes share one call
            steps = epoch * steps_per_epoch
            run("sui", sui_scores, task, model, history[0][0], x, y, x_val, y_val, steps)
            shared["sui"] = scores.pop("sui", None)
        if shared["sui"] is not None:
            scores["sui_looerr"], scores["sui_weight"] = shared["sui"]
        model.load_state_dict(state)
        lines += [{**info, "method": m, "error": e} for m, e in errors]
        for name, v in scores.items():
            lines.append(
                {
                    **info,
                    "method": name,
                    "auroc": auroc(v, flipped.numpy()),
                    "precision_at_k": precision_at_k(v, flipped.numpy()),
                    "seconds": timing.get(name.split("_")[0], timing.get(name, math.nan)),
                }
            )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as fh:
        for line in lines:
            fh.write(json.dumps(line) + "\n")
    return lines


def _loss(logits: Tensor, y: Tensor) -> np.ndarray:
    return F.cross_entropy(logits, y, reduction="none").double().numpy()


def _tracin(model: nn.Module, history: list, checkpoints: list[int], x: Tensor, y: Tensor):
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for c in checkpoints:
        total += history[c][1] * grad_sq_norms(model, history[c][0], x, y).double()
    return total.numpy()


def done_cells(out: Path) -> set[tuple]:
    path = out / "results.jsonl"
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["task"], r["noise"], r["seed"]) for r in rows}


def report(out: Path) -> str:
    """Per family and cell: AUROC (precision at k) per method, the best peer, SUI's gap."""
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x.strip()]
    methods = ["sui_looerr", "sui_weight", "loss", "cleanlab", "tracin", "trak"]
    peers = ["loss", "cleanlab", "tracin", "trak"]
    lines = []
    for split in ("development", "held-out"):
        lines += [
            f"\n**{split} families** (AUROC (precision at k); mean over seeds)\n",
            "| family | p | regime | "
            + " | ".join(methods)
            + " | SUI gap to best peer: AUROC / prec@k | within 0.005 / 0.02 |",
            "|---|---|---|" + "---|" * (len(methods) + 2),
        ]
        cells = sorted(
            {(r["task"], r["noise"], r["regime"]) for r in rows if r["split"] == split},
            key=lambda c: (list(TASKS).index(c[0]), c[1], c[2] != "moderate"),
        )
        for task, p, regime in cells:
            sub = [
                r
                for r in rows
                if (r["task"], r["noise"], r["regime"]) == (task, p, regime) and "auroc" in r
            ]
            m = {}
            for name in methods:
                vals = [(r["auroc"], r["precision_at_k"]) for r in sub if r["method"] == name]
                m[name] = tuple(np.mean(vals, axis=0)) if vals else (math.nan, math.nan)
            best_a = max(m[n][0] for n in peers if math.isfinite(m[n][0]))
            best_p = max(m[n][1] for n in peers if math.isfinite(m[n][1]))
            ga, gp = m["sui_looerr"][0] - best_a, m["sui_looerr"][1] - best_p
            if math.isfinite(ga):
                ok = "yes" if ga >= -0.005 and gp >= -0.02 else "**no**"
                gap = f"{ga:+.3f} / {gp:+.2f}"
            else:
                ok, gap = "SUI failed", "n/a"
            lines.append(
                f"| {task} | {p:g} | {regime} | "
                + " | ".join(
                    f"{m[n][0]:.3f} ({m[n][1]:.2f})" if math.isfinite(m[n][0]) else "failed"
                    for n in methods
                )
                + f" | {gap} | {ok} |"
            )
    errors = {(r["task"], r["method"], r["error"][:120]) for r in rows if "error" in r}
    if errors:
        lines.append("\nErrors: " + "; ".join(f"{t} {m}: {e}" for t, m, e in sorted(errors)))
    return "\n".join(lines)
