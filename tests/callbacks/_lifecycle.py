"""Building blocks of the lifecycle fuzz test (``test_lifecycle_fuzz.py``).

Digits folds, a tiny classifier for each Lightning package with injectable faults, an
independent recorder of weights and logged values, and the references the invariants are
checked against: the stop rule written out from ``OverfittingEarlyStopping``'s docstring, the
monitor's quantities from the functional API, the SUI subset as the documented seeded draw.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.functional import (
    cluster_reference,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_info.utilities.compat import Callback
from lightning_info.utilities.data import load_dataset

PACKAGES = ("pytorch_lightning", "lightning.pytorch")
N_TRAIN, N_VAL, BATCH, VAL_BATCH, HIDDEN, LR = 150, 90, 50, 45, 16, 0.5
NUM_FOLDS = 3
PROBE = 60  # the monitor's max_samples (of N_VAL validation samples)
SUI_SAMPLES, SUI_HELDOUT = 30, 20
KEYS = {
    "dse": "info/dse/penultimate",
    "dsmi_y": "info/dsmi_y/penultimate",
    "dsmi_x": "info/dsmi_x/penultimate",
}


@functools.lru_cache(maxsize=1)
def folds() -> tuple[tuple[torch.Tensor, ...], ...]:
    """Disjoint digits folds of equal sizes: ``(x_train, y_train, x_val, y_val)`` each.

    Returns:
        ``NUM_FOLDS`` folds.
    """
    ds = load_dataset("digits")
    perm = torch.randperm(len(ds.targets), generator=torch.Generator().manual_seed(0))
    out = []
    for k in range(NUM_FOLDS):
        part = perm[k * (N_TRAIN + N_VAL) : (k + 1) * (N_TRAIN + N_VAL)]
        tr, va = part[:N_TRAIN], part[N_TRAIN:]
        out.append((ds.inputs[tr], ds.targets[tr], ds.inputs[va], ds.targets[va]))
    return tuple(out)


def loaders(fold: int) -> tuple[DataLoader, DataLoader]:
    """The training loader (shuffled by the global generator) and the validation loader.

    Returns:
        ``(train, val)``.
    """
    x, y, xv, yv = folds()[fold]
    train = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    return train, DataLoader(TensorDataset(xv, yv), batch_size=VAL_BATCH)


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of the module's state dict.

    Returns:
        ``{name: tensor}``.
    """
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold exactly the same tensors.

    Returns:
        True when the keys and every tensor are equal.
    """
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@dataclass
class Fault:
    """An injected failure: where (``module-train``, ``module-val``, ``callback-train``,
    ``callback-setup``) and at which epoch and batch."""

    where: str
    epoch: int
    batch: int
    error: type[BaseException]
    weights: dict[str, torch.Tensor] | None = None  # the model's weights when it fired

    def maybe_fire(self, where: str, epoch: int, batch: int, module: nn.Module) -> None:
        """Raise ``error`` once, at the chosen place, after copying the model's weights.

        Raises:
            BaseException: the injected ``error`` (RuntimeError or KeyboardInterrupt).
        """
        if self.weights is None and (where, epoch, batch) == (self.where, self.epoch, self.batch):
            self.weights = state_of(module)
            raise self.error(f"injected at {where}, epoch {epoch}, batch {batch}")


@functools.cache
def module_class(package: str) -> type:
    """A small MSE + plain-SGD digits classifier subclassing ``package``'s LightningModule.

    Returns:
        The class (one per package: a ``lightning.pytorch.Trainer`` trains only its own).
    """
    pkg = importlib.import_module(package)

    class Net(pkg.LightningModule):
        def __init__(self, hidden: int = HIDDEN, lr: float = LR, loss: str = "mse") -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
            self.fault: Fault | None = None  # set after construction: not a hyperparameter

        def forward(self, x):
            return self.net(x)

        def _loss(self, out, y):
            return F.mse_loss(out, F.one_hot(y, 10).float())

        def training_step(self, batch, batch_idx):
            if self.fault is not None:
                self.fault.maybe_fire("module-train", self.current_epoch, batch_idx, self)
            x, y = batch
            return self._loss(self(x), y)

        def validation_step(self, batch, batch_idx):
            if self.fault is not None and not self.trainer.sanity_checking:
                self.fault.maybe_fire("module-val", self.current_epoch, batch_idx, self)
            x, y = batch
            out = self(x)
            self.log("val_loss", self._loss(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    Net.__qualname__ = Net.__name__ = "Net_" + package.replace(".", "_")
    return Net


class FaultCallback(Callback):
    """Fires a ``callback-setup`` fault in ``setup`` (listed before the stop, so it comes
    before the stop's own ``setup``) or a ``callback-train`` fault in ``on_train_batch_end``
    (after that batch's step)."""

    def __init__(self, fault: Fault | None) -> None:
        self.fault = fault

    def setup(self, trainer, pl_module, stage):
        if self.fault is not None and stage == "fit":
            self.fault.maybe_fire("callback-setup", self.fault.epoch, self.fault.batch, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.fault is not None:
            self.fault.maybe_fire("callback-train", trainer.current_epoch, batch_idx, pl_module)


@dataclass
class Record:
    """One completed epoch: the weights at its end, the values logged, the global step."""

    state: dict[str, torch.Tensor]
    logged: dict[str, float]
    global_step: int


class Recorder(Callback):
    """Copies weights and logged values at every epoch end, before any restore."""

    def __init__(self, records: dict[int, Record]) -> None:
        self.records = records
        self.epochs: list[int] = []

    def on_train_epoch_end(self, trainer, pl_module):
        logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
        self.records[trainer.current_epoch] = Record(
            state_of(pl_module), logged, int(trainer.global_step)
        )
        self.epochs.append(int(trainer.current_epoch))


@dataclass
class StopReference:
    """The default stop rule with a validation score, written out from the docstring."""

    patience: int
    best_epoch: int | None = None
    stop_epoch: int | None = None
    history: list[int] = field(default_factory=list)

    @classmethod
    def replay(cls, records: dict[int, Record], patience: int) -> StopReference:
        """Best epoch: first with the highest ``val_acc``; a stop after ``patience`` evaluations
        with neither a new best ``val_acc`` nor a new DSMI maximum (and at every later one).

        Returns:
            The reference after all recorded evaluations, in epoch order.
        """
        ref = cls(patience)
        best, info_max, wait = -float("inf"), -float("inf"), 0
        for epoch in sorted(records):
            acc = records[epoch].logged["val_acc"]
            info = records[epoch].logged.get(KEYS["dsmi_y"], -float("inf"))  # not logged: None
            new_max = info > info_max
            info_max = max(info, info_max)
            if acc > best:
                best, ref.best_epoch, wait = acc, epoch, 0
            else:
                wait = 0 if new_max else wait + 1
            if ref.stop_epoch is None and wait >= patience:
                ref.stop_epoch = epoch
            ref.history.append(epoch)
        return ref

    def stops_at(self, epoch: int) -> bool:
        """Whether the rule says stop at this evaluation (a stop is kept by later ones).

        Returns:
            True from the first stopping evaluation on.
        """
        return self.stop_epoch is not None and epoch >= self.stop_epoch


def probe_indices(n: int = N_VAL, size: int = PROBE, seed: int = 0) -> torch.Tensor:
    """The monitor's documented probe draw: a seeded uniform subset, sorted.

    Returns:
        (size,) positions.
    """
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def monitor_reference(state: dict[str, torch.Tensor], fold: int) -> dict[str, float]:
    """DSE, DSMI(Z;Y), DSMI(Z;X) of the penultimate features from the functional API.

    Returns:
        ``{logged key: value}`` for the weights ``state`` on ``fold``'s probe.
    """
    _, _, xv, yv = folds()[fold]
    idx = probe_indices()
    x, y = xv[idx], yv[idx]
    net = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    with torch.no_grad():
        z = net[:2](x)  # the input of the last Linear
    clusters = cluster_reference(x, num_clusters=10, seed=0)
    return {
        KEYS["dse"]: float(diffusion_spectral_entropy(z, sigma="median")),
        KEYS["dsmi_y"]: float(diffusion_spectral_mutual_information(z, y, sigma="median")),
        KEYS["dsmi_x"]: float(
            diffusion_spectral_mutual_information(z, None, sigma="median", clusters=clusters)
        ),
    }


def sui_subset(n: int = N_TRAIN, size: int = SUI_SAMPLES, seed: int = 0) -> list[int]:
    """The SUI callback's documented subset: a seeded uniform draw, in dataset order.

    Returns:
        The positions.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:size].sort().values.tolist()


def accuracy(state: dict[str, torch.Tensor], fold: int) -> float:
    """Validation accuracy of the weights ``state`` on ``fold``, computed directly.

    Returns:
        The fraction of correct argmax predictions.
    """
    _, _, xv, yv = folds()[fold]
    net = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    with torch.no_grad():
        return float((net(xv).argmax(1) == yv).float().mean())


def trainer(package: str, root: Any, callbacks: list, **kwargs: Any):
    """A quiet CPU trainer of ``package``.

    Returns:
        The ``Trainer``.
    """
    pkg = importlib.import_module(package)
    return pkg.Trainer(
        default_root_dir=str(root),
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )
