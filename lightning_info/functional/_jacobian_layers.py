r"""Per-sample Jacobian blocks of common layers from their inputs and output gradients.

For a layer :math:`h = \ell(a; \theta)` and :math:`g_k = \partial f_k / \partial h` (the gradient
of output k with respect to the layer's output), the chain rule gives the Jacobian block of the
layer's parameters, :math:`\partial f_k / \partial \theta = g_k \cdot \partial h / \partial
\theta`, in closed form for the layers below. The structured form
(:mod:`~lightning_info.functional._jacobian_structured`) obtains every :math:`g` of a chunk of
samples from one ``vmap(jacrev)`` call over additive offsets of the layer outputs (no parameter
Jacobian is formed by autograd) and builds each block here with one batched product:

* ``nn.Linear`` on (B, ..., in) inputs (sequences): :math:`G = \sum_t g_t a_t^\top`;
* ``nn.Conv2d`` (``groups=1``, zero padding): :math:`G = B^\top U` with :math:`U` the unfolded
  input (positions x in·kh·kw, ``F.unfold``) and :math:`B` the output gradient (positions x out);
  the bias block is :math:`\sum_\mathrm{pos} g`;
* BatchNorm (eval mode, running statistics) and ``nn.LayerNorm`` affine parameters:
  :math:`\partial f_k/\partial\gamma = \sum g_k \odot \hat a`, :math:`\partial f_k/\partial\beta
  = \sum g_k`, with :math:`\hat a` the normalized input, summed over the positions that share
  the parameter;
* ``nn.Embedding`` (no ``max_norm``, no ``scale_grad_by_freq``): row v of the block is the sum
  of :math:`g` over the positions whose index is v (none for ``padding_idx``, as in autograd).

Each block has the layout of the parameter flattened in row-major order, so it equals the
explicit Jacobian block column by column. ``nn.MultiheadAttention`` calls
``F.multi_head_attention_forward`` with its ``in_proj_weight`` directly (its ``out_proj`` module
is never called), so its parameters fall back to explicit Jacobians; attention written with
``nn.Linear`` projections is covered by the sequence rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

# fn(module, a, g) -> (weight block, bias block): (n, K, numel) each, from the layer input a
# (n, ...) and the output gradients g (n, K, *output shape)
BlockFn = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor | None]]


# fn(module, a, g) -> (gt, u): the weight block of output k is gt[:, k] @ u, with gt (n, K, out,
# L) the output gradients and u (n, L, fan_in) the layer inputs over the L positions sharing W
FactorFn = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]]


def _linear_factors(module: nn.Linear, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Return the output gradients and inputs of an ``nn.Linear`` on (n, ..., in), per position.

    Args:
        module: the layer.
        a: (n, ..., in) inputs.
        g: (n, K, ..., out) output gradients.

    Returns:
        (n, K, out, T) and (n, T, in), T the positions (the product of the middle dims).
    """
    n, k = g.shape[:2]
    a2 = a.reshape(n, -1, module.in_features)  # (n, T, in)
    g2 = g.reshape(n, k, -1, module.out_features)  # (n, K, T, out)
    return g2.transpose(2, 3), a2


def _conv2d_factors(module: nn.Conv2d, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """Return the output gradients and unfolded inputs of an ``nn.Conv2d``, per position.

    Args:
        module: the layer.
        a: (n, C, H, W) inputs.
        g: (n, K, out, Ho, Wo) output gradients.

    Returns:
        (n, K, out, L) and (n, L, C·kh·kw), L = Ho·Wo, channel-major like the weight's flattening.
    """
    n, k = g.shape[:2]
    unfolded = F.unfold(
        a,
        module.kernel_size,
        dilation=module.dilation,
        padding=module.padding,
        stride=module.stride,
    )  # (n, C kh kw, L)
    return g.reshape(n, k, module.out_channels, -1), unfolded.transpose(1, 2)


def _positions_blocks(gt: Tensor, u: Tensor, bias: bool) -> tuple[Tensor, Tensor | None]:
    """Return the weight block ``gt @ u`` and the bias block ``sum over positions of gt``.

    Args:
        gt: (n, K, out, L) output gradients.
        u: (n, L, fan_in) inputs.
        bias: whether the layer has a bias.

    Returns:
        (n, K, out·fan_in) and (n, K, out) (None without bias).
    """
    n, k, out, length = gt.shape
    weight = torch.bmm(gt.reshape(n, k * out, length), u).view(n, k, -1)
    return weight, (gt.sum(3) if bias else None)


def _linear_blocks(module: nn.Linear, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """Return the weight and bias blocks of an ``nn.Linear`` on (n, ..., in) inputs.

    Args:
        module: the layer.
        a: (n, ..., in) inputs.
        g: (n, K, ..., out) output gradients.

    Returns:
        (n, K, out·in) and (n, K, out) (None without bias).
    """
    return _positions_blocks(*_linear_factors(module, a, g), module.bias is not None)


def _conv2d_blocks(module: nn.Conv2d, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """Return the weight and bias blocks of an ``nn.Conv2d`` (``groups=1``, zero padding).

    Args:
        module: the layer.
        a: (n, C, H, W) inputs.
        g: (n, K, out, Ho, Wo) output gradients.

    Returns:
        (n, K, out·C·kh·kw) and (n, K, out) (None without bias).
    """
    return _positions_blocks(*_conv2d_factors(module, a, g), module.bias is not None)


def _affine_blocks(g: Tensor, normalized: Tensor, shared: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Return ``(sum g * normalized, sum g)`` over the dims in ``shared``, flattened per (n, K).

    Args:
        g: (n, K, ...) output gradients.
        normalized: (n, 1, ...) normalized inputs, broadcast over K.
        shared: dims of ``g`` summed over (positions that share one parameter).

    Returns:
        (n, K, numel) weight and bias blocks.
    """
    n, k = g.shape[:2]
    weight = (g * normalized).sum(shared) if shared else g * normalized
    bias = g.sum(shared) if shared else g
    return weight.reshape(n, k, -1), bias.reshape(n, k, -1)


def _batchnorm_blocks(module: _BatchNorm, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """Return the γ and β blocks of an eval-mode BatchNorm (running statistics).

    Args:
        module: the layer.
        a: (n, C, ...) inputs.
        g: (n, K, C, ...) output gradients.

    Returns:
        (n, K, C) blocks for γ and β.
    """
    view = (1, -1) + (1,) * (a.ndim - 2)
    mean = module.running_mean.view(view)
    scale = torch.rsqrt(module.running_var.view(view) + module.eps)
    normalized = ((a - mean) * scale).unsqueeze(1)
    shared = tuple(range(3, g.ndim))  # channel dim is 2 of g; sum over batch-free positions
    return _affine_blocks(g, normalized, shared)


def _layernorm_blocks(module: nn.LayerNorm, a: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
    """Return the γ and β blocks of an ``nn.LayerNorm`` (biased variance, as the layer).

    Args:
        module: the layer.
        a: (n, ..., *normalized_shape) inputs.
        g: (n, K, ..., *normalized_shape) output gradients.

    Returns:
        (n, K, numel(normalized_shape)) blocks; β's is None without bias.
    """
    dims = tuple(range(a.ndim - len(module.normalized_shape), a.ndim))
    var, mean = torch.var_mean(a, dim=dims, keepdim=True, correction=0)
    normalized = ((a - mean) * torch.rsqrt(var + module.eps)).unsqueeze(1)
    shared = tuple(range(2, g.ndim - len(dims)))
    weight, bias = _affine_blocks(g, normalized, shared)
    return weight, (bias if module.bias is not None else None)


def _embedding_blocks(module: nn.Embedding, a: Tensor, g: Tensor) -> tuple[Tensor, None]:
    """Return the weight block of an ``nn.Embedding``: output gradients summed per index.

    Args:
        module: the layer.
        a: (n, ...) integer indices.
        g: (n, K, ..., dim) output gradients.

    Returns:
        (n, K, num_embeddings·dim) block and None.
    """
    n, k = g.shape[:2]
    idx = a.reshape(n, -1)  # (n, T)
    g2 = g.reshape(n, k, -1, module.embedding_dim)  # (n, K, T, dim)
    if module.padding_idx is not None:  # autograd gives that row no gradient
        g2 = g2 * (idx != module.padding_idx)[:, None, :, None].to(g2.dtype)
    out = g2.new_zeros(n, k, module.num_embeddings, module.embedding_dim)
    index = idx[:, None, :, None].expand(n, k, idx.shape[1], module.embedding_dim)
    out.scatter_add_(2, index, g2)
    return out.view(n, k, -1), None


def _conv2d_ok(module: nn.Conv2d) -> bool:
    """Whether ``F.unfold`` reproduces the convolution's patches.

    Returns:
        ``groups == 1``, zero padding given as numbers.
    """
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _batchnorm_ok(module: _BatchNorm) -> bool:
    """Whether the eval-mode layer normalizes with running statistics and has γ and β.

    Returns:
        ``affine`` and running statistics tracked.
    """
    return module.affine and module.running_mean is not None and module.running_var is not None


def _embedding_ok(module: nn.Embedding) -> bool:
    """Whether the lookup is a plain row selection.

    Returns:
        No ``max_norm`` (which renormalizes rows in place) and no ``scale_grad_by_freq``.
    """
    return module.max_norm is None and not module.scale_grad_by_freq


# (module type, the forward the rule assumes, configuration check, blocks)
_RULES: tuple[tuple[type, Callable, Callable[[nn.Module], bool], BlockFn], ...] = (
    (nn.Linear, nn.Linear.forward, lambda m: True, _linear_blocks),
    (nn.Conv2d, nn.Conv2d.forward, _conv2d_ok, _conv2d_blocks),
    (_BatchNorm, _BatchNorm.forward, _batchnorm_ok, _batchnorm_blocks),
    (nn.LayerNorm, nn.LayerNorm.forward, lambda m: m.elementwise_affine, _layernorm_blocks),
    (nn.Embedding, nn.Embedding.forward, _embedding_ok, _embedding_blocks),
)


def factor_rule(module: nn.Module) -> FactorFn | None:
    """Return the per-position factors of ``module``'s weight block, or None.

    Only ``nn.Linear`` and ``nn.Conv2d`` under their block rule: their weight block is
    ``gt @ u`` (:data:`FactorFn`), which ``projection="kronecker"`` projects without forming it.

    Args:
        module: any module.

    Returns:
        :func:`_linear_factors`, :func:`_conv2d_factors` or None.
    """
    rule = block_rule(module)
    return {_linear_blocks: _linear_factors, _conv2d_blocks: _conv2d_factors}.get(rule)


def block_rule(module: nn.Module) -> BlockFn | None:
    """Return the closed-form block function of ``module``, or None if no rule applies.

    A rule applies to a module of the rule's type that keeps the library's ``forward`` (a
    subclass that overrides it may compute anything) and whose configuration the rule covers.

    Args:
        module: any module.

    Returns:
        The block function, or None.
    """
    for kind, forward, ok, blocks in _RULES:
        if isinstance(module, kind) and type(module).forward is forward and ok(module):
            return blocks
    return None
