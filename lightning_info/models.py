"""Small reference LightningModules used by the demo, the examples and the tests.

They are ordinary Lightning code: nothing in ``lightning_info`` requires them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPClassifier(pl.LightningModule):
    """A multi-layer perceptron classifier on flat inputs.

    The layers live in ``self.net`` (``nn.Sequential``): ``net.0`` Linear, ``net.1`` ReLU, ... and the
    last ``nn.Linear`` is the classifier, so its input is the penultimate representation.

    Args:
        in_features: input dimension.
        num_classes: number of classes (outputs).
        hidden: widths of the hidden layers.
        loss: ``"cross_entropy"`` or ``"mse"`` (MSE on one-hot targets, the SUI closed form's loss).
        optimizer: ``"sgd"`` (no momentum), ``"sgd_momentum"`` (0.9) or ``"adam"``.
        lr: learning rate.
        weight_decay: L2 coefficient passed to the optimizer.

    Example:
        >>> model = MLPClassifier(64, 10, hidden=(32,))
        >>> model(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden: Sequence[int] = (128, 64),
        loss: Literal["cross_entropy", "mse"] = "cross_entropy",
        optimizer: Literal["sgd", "sgd_momentum", "adam"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        """Build the network (arguments: see the class docstring)."""
        super().__init__()
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(B, num_classes)`` for inputs ``(B, ...)`` (flattened)."""
        return self.net(x.flatten(1))

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        if self.hparams.loss == "mse":
            onehot = F.one_hot(y, self.num_classes).to(logits.dtype)
            return 0.5 * ((logits - onehot) ** 2).sum(1).mean()
        return F.cross_entropy(logits, y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One training step; logs ``train_loss`` and ``train_acc`` per epoch.

        Returns:
            The loss of the batch.
        """
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self._loss(logits, y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("train_acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """One validation step; logs ``val_loss`` and ``val_acc``."""
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log("val_loss", self._loss(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The optimizer named by ``optimizer`` with ``lr`` and ``weight_decay``.

        Returns:
            ``torch.optim.Adam``, or ``torch.optim.SGD`` (momentum 0.9 for ``"sgd_momentum"``).
        """
        hp = self.hparams
        if hp.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        momentum = 0.9 if hp.optimizer == "sgd_momentum" else 0.0
        return torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=momentum, weight_decay=hp.weight_decay
        )
