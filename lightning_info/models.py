"""Small reference LightningModules used by the demo, the examples and the tests.

They are ordinary Lightning code: nothing in ``lightning_info`` requires them.
"""

from __future__ import annotations

import math
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


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a shortcut (He et al., 2016).

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first convolution.
        shortcut: ``"pad"`` (parameter-free: subsample and zero-pad channels, the CIFAR ResNet-20
            "option A") or ``"conv"`` (1x1 convolution and BatchNorm, as in ResNet-18).
    """

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        """Build the block (arguments: see the class docstring)."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = 0
        self.stride = stride
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "conv":
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm2d(planes),
                )
            else:
                self.pad = planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        """Return the block's output (no in-place operation on any layer's output)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad or (self.stride != 1 and isinstance(self.shortcut, nn.Identity)):
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            short = self.shortcut(x)
        return F.relu(out + short)


class ResNet(nn.Module):
    """A CIFAR-style residual network of BasicBlocks with BatchNorm, for 32x32 (or 28x28) inputs.

    ``ResNet.resnet20()`` is the 0.27 M-parameter ResNet-20 of He et al. (2016, §4.2: widths 16,
    32, 64, three blocks each, parameter-free shortcuts); ``ResNet.resnet18()`` has the ResNet-18
    widths and blocks (64 to 512, two blocks per stage, 1x1-convolution shortcuts, 11.2 M
    parameters) with a 3x3 stem and no max-pooling, as usual on 32x32 images.

    Args:
        widths: channels of the stages.
        blocks: BasicBlocks per stage.
        num_classes: outputs K.
        in_channels: input channels.
        shortcut: ``"pad"`` or ``"conv"`` (see :class:`_BasicBlock`).

    Example:
        >>> net = ResNet.resnet20(num_classes=10)
        >>> sum(p.numel() for p in net.parameters())
        269722
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "pad",
    ) -> None:
        """Build the network (arguments: see the class docstring)."""
        super().__init__()
        self.conv = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        planes = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(_BasicBlock(planes, width, stride, shortcut))
                planes = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(planes, num_classes)

    @classmethod
    def resnet20(cls, num_classes: int = 10, in_channels: int = 3) -> ResNet:
        """Return the CIFAR ResNet-20 (0.27 M parameters for 3 input channels, K = 10).

        Returns:
            The network.
        """
        return cls((16, 32, 64), (3, 3, 3), num_classes, in_channels, "pad")

    @classmethod
    def resnet18(cls, num_classes: int = 10, in_channels: int = 3) -> ResNet:
        """Return the ResNet-18-width network (11.2 M parameters for 3 input channels, K = 10).

        Returns:
            The network.
        """
        return cls((64, 128, 256, 512), (2, 2, 2, 2), num_classes, in_channels, "conv")

    def forward(self, x: Tensor) -> Tensor:
        """Return logits ``(B, num_classes)`` for images ``(B, C, H, W)``."""
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(out.mean((2, 3)))


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention and MLP block with ``nn.Linear`` projections.

    Args:
        dim: model width.
        heads: attention heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        """Build the block (arguments: see the class docstring)."""
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_in = nn.Linear(dim, 2 * dim)
        self.mlp_out = nn.Linear(2 * dim, dim)

    def _split(self, h: Tensor) -> Tensor:
        b, t, dim = h.shape
        return h.view(b, t, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` plus attention plus MLP, ``(B, T, dim)``."""
        h = self.norm1(x)
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(x.shape))
        return x + self.mlp_out(F.gelu(self.mlp_in(self.norm2(x))))


class TinyTransformer(nn.Module):
    """A small Transformer encoder classifier on token sequences.

    Token and position embeddings, pre-norm blocks of self-attention written with ``nn.Linear``
    projections (so the structured NTK covers every parameter, unlike
    ``nn.MultiheadAttention``), a final LayerNorm, mean pooling and a linear head.

    Args:
        vocab: number of tokens.
        length: sequence length T.
        num_classes: outputs K.
        dim: model width.
        heads: attention heads.
        depth: blocks.

    Example:
        >>> net = TinyTransformer(vocab=20, length=8, num_classes=3)
        >>> net(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        vocab: int,
        length: int,
        num_classes: int,
        *,
        dim: int = 32,
        heads: int = 4,
        depth: int = 2,
    ) -> None:
        """Build the network (arguments: see the class docstring)."""
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        self.blocks = nn.Sequential(*[_AttentionBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Return logits ``(B, num_classes)`` for ``(B, T)`` integer tokens."""
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.blocks(self.tokens(tokens) + self.positions(pos))
        return self.head(self.norm(h).mean(1))
