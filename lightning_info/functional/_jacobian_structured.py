r"""Jacobians from layer inputs and output gradients (``form="structured"``): the structured NTK.

Harutyunyan et al. (2021, arXiv:2101.06640, §3) need the empirical NTK :math:`J J^\top` of the
linearized network. For a plain ``nn.Linear``, :math:`h = W a + b`, with :math:`a` the layer's
input and :math:`g_k = \partial f_k / \partial h`, the Jacobian blocks are
:math:`\partial f_k / \partial W = g_k a^\top` and :math:`\partial f_k / \partial b = g_k`
(``docs/sui.md`` §8.4), hence

.. math::

    J_k(x_i) J_l(x_j)^\top = (g_{ik} \cdot g_{jl}) (a_i \cdot a_j + 1), \qquad
    \Theta_\mathrm{layer} = (G G^\top) \odot (A A^\top + 1),

and the projected features (``docs/sui.md`` §8.2, same seeded R as the explicit form) are
:math:`g_k (a^\top R_W + R_b)`. The layer's (K, out x in) Jacobian is never formed. This holds
for plain ``nn.Linear`` modules called once per forward on (B, in) inputs with no tied
parameter. Convolutions, BatchNorm / LayerNorm affine parameters, embeddings and ``nn.Linear``
on sequences get their dense Jacobian blocks in closed form from the same two ingredients,
layer inputs and output gradients (:mod:`~lightning_info.functional._jacobian_layers`); every
other selected parameter (e.g. ``nn.MultiheadAttention``'s) falls back to explicit
``vmap(jacrev)`` Jacobians, computed in the same call.

Purity under ``torch.func``: the output gradients :math:`g` are the Jacobians with respect to an
additive offset :math:`\delta` of each layer's output, evaluated at :math:`\delta = 0`. The
function given to ``vmap(jacrev(...))`` (:func:`_offset_fn`) takes the offsets ("deltas") as an
explicit argument; inside each call it registers forward hooks whose closures are bound to that
call's ``deltas`` argument (``output + deltas[layer]``) and removes them before returning, like
``functional_call`` swaps parameters only for the duration of the call. It reads only its
arguments and frozen closures and assigns to no outside state. The layer inputs :math:`a` are
captured by a separate no-grad forward pass outside any ``torch.func`` transform.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from lightning_info.functional._jacobian_common import (
    _PROJECTION_BLOCK_ROWS,
    OutputFn,
    _dense_gram,
    _DenseChunk,
    _eval_mode,
    _KronWeight,
    _Linearization,
    _Options,
    _output_vector,
    _probe_num_outputs,
    _SampleMap,
    _Selection,
    _working_bytes,
)
from lightning_info.functional._jacobian_explicit import _ExplicitLinearization
from lightning_info.functional._jacobian_layers import BlockFn, block_rule, factor_rule

_Hook = Callable[[nn.Module, tuple, Tensor], Tensor | None]


@dataclass(frozen=True)
class _Term:
    """One layer whose Jacobian is computed from its input and output gradients.

    Attributes:
        module_name: the module's name in the model.
        module: the layer.
        weight: the weight's parameter name if it is differentiated, else None.
        bias: the bias's parameter name if it is differentiated, else None.
        blocks: the closed-form block function (:mod:`~lightning_info.functional.
            _jacobian_layers`), or None for an ``nn.Linear`` on (B, in) inputs, which stays
            factored (rank one per output).
        out_shape: the layer's output shape for one sample (without the batch dimension).
    """

    module_name: str
    module: nn.Module
    weight: str | None
    bias: str | None
    blocks: BlockFn | None = None
    out_shape: tuple[int, ...] = ()

    @property
    def factored(self) -> bool:
        """Whether the term is an ``nn.Linear`` on (B, in) inputs, kept in factored form."""
        return self.blocks is None

    @property
    def names(self) -> list[str]:
        """The differentiated parameter names of the layer (weight first)."""
        return [n for n in (self.weight, self.bias) if n is not None]


def _candidates(model: nn.Module, names: list[str]) -> list[_Term]:
    """Return the layers with a closed-form rule, a selected weight or bias and no tied parameter.

    Args:
        model: the network.
        names: the differentiated parameter names.

    Returns:
        The candidates, in ``model.named_modules()`` order (``blocks`` set by the rule).
    """
    selected = set(names)
    owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    terms = []
    for module_name, module in model.named_modules():
        rule = block_rule(module)
        if rule is None:
            continue
        prefix = f"{module_name}." if module_name else ""
        weight = f"{prefix}weight" if f"{prefix}weight" in selected else None
        has_bias = getattr(module, "bias", None) is not None
        bias = f"{prefix}bias" if has_bias and f"{prefix}bias" in selected else None
        if weight is None and bias is None:
            continue
        if any(owners[id(p)] > 1 for p in module.parameters(recurse=False)):
            continue  # tied weights: the gradient also flows through another module
        terms.append(_Term(module_name, module, weight, bias, rule))
    return terms


@contextmanager
def _forward_hooks(terms: list[_Term], make_hook: Callable[[_Term], _Hook]) -> Iterator[None]:
    """Register ``make_hook(term)`` on every term's module for the duration of the block.

    Args:
        terms: the layers.
        make_hook: builds each layer's forward hook.

    Yields:
        Nothing; the hooks are removed on exit.
    """
    handles = [t.module.register_forward_hook(make_hook(t)) for t in terms]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _record_hook(calls: list[tuple[tuple[int, ...], tuple[int, ...]] | None]) -> _Hook:
    """Return a hook that appends the input and output shapes of each call (probe only).

    Args:
        calls: one list per layer; a call without a positional tensor input appends None.

    Returns:
        The hook.
    """

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        ok = len(inputs) == 1 and isinstance(inputs[0], Tensor) and isinstance(output, Tensor)
        calls.append((tuple(inputs[0].shape), tuple(output.shape)) if ok else None)

    return hook


def _capture_hook(store: dict[str, Tensor], name: str) -> _Hook:
    """Return a hook that stores the layer's input under ``name`` (no-grad pass, no transform).

    Args:
        store: where the inputs go.
        name: the layer's name.

    Returns:
        The hook.
    """

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        store[name] = inputs[0].detach().clone()  # a later in-place op must not alter it

    return hook


def _offset_hook(delta: Tensor) -> _Hook:
    """Return a hook that adds ``delta`` to the layer's output.

    Args:
        delta: offset of one sample's output, an argument of the function under ``vmap(jacrev)``.

    Returns:
        The hook.
    """

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return output + delta

    return hook


def _probe_structure(
    model: nn.Module, probe: Tensor, candidates: list[_Term], output_fn: OutputFn | None
) -> tuple[int, list[_Term]]:
    """Return K and the candidates whose Jacobian has the closed form, from two forward passes.

    The first sample is evaluated alone and twice stacked. A layer qualifies when it is called
    once per forward pass with one positional tensor input whose first dimension is the batch
    (1, then 2, the other dimensions unchanged), like its output: weight sharing across calls,
    and inputs without the batch dimension (e.g. position indices), break the per-sample form.
    An ``nn.Linear`` on (B, in) inputs stays factored; on longer inputs (sequences) it uses the
    block rule.

    Args:
        model: the network.
        probe: (N, ...) inputs; the first sample is evaluated.
        candidates: see :func:`_candidates`.
        output_fn: maps the raw output to the linearized outputs, or None.

    Returns:
        ``(K, qualifying terms)`` with their per-sample output shapes.
    """
    calls: dict[str, list] = {t.module_name: [] for t in candidates}
    with _forward_hooks(candidates, lambda t: _record_hook(calls[t.module_name])):
        k = _probe_num_outputs(model, probe, output_fn)
        with _eval_mode(model), torch.no_grad():
            model(torch.cat([probe[:1], probe[:1]]))
    terms = []
    for t in candidates:
        seen = calls[t.module_name]
        if len(seen) != 2 or seen[0] is None or seen[1] is None:
            continue
        (in1, out1), (in2, out2) = seen
        batched = in1[:1] == out1[:1] == (1,) and in2[:1] == out2[:1] == (2,)
        if not batched or in1[1:] != in2[1:] or out1[1:] != out2[1:]:
            continue
        flat_linear = isinstance(t.module, nn.Linear) and len(in1) == 2
        blocks = None if flat_linear else t.blocks
        terms.append(_Term(t.module_name, t.module, t.weight, t.bias, blocks, out1[1:]))
    return k, terms


def _offset_fn(
    model: nn.Module,
    terms: list[_Term],
    fixed: dict[str, Tensor],
    buffers: dict[str, Tensor],
    output_fn: OutputFn | None,
) -> Callable[[dict[str, Tensor], dict[str, Tensor], Tensor], Tensor]:
    """Return ``fn(rest_params, deltas, x) -> (K,)``: the model with output offsets on ``terms``.

    Args:
        model: the network.
        terms: the layers whose parameter Jacobians come from output gradients.
        fixed: every parameter not in ``rest_params`` (those layers' parameters included).
        buffers: the model's buffers.
        output_fn: maps the raw output to the linearized outputs, or None.

    Returns:
        A function that reads only its arguments and these frozen closures.
    """

    def fn(rest: dict[str, Tensor], deltas: dict[str, Tensor], x: Tensor) -> Tensor:
        with _forward_hooks(terms, lambda t: _offset_hook(deltas[t.module_name])):
            raw = functional_call(model, (rest, fixed, buffers), (x.unsqueeze(0),), strict=False)
        return _output_vector(raw, output_fn)

    return fn


@dataclass(frozen=True)
class _FactoredChunk:
    """Jacobians of a chunk of samples in factored form (float64 products are taken later).

    Attributes:
        grads: per factored ``nn.Linear``, (n, K, out_features) output gradients G.
        acts: per factored ``nn.Linear``, (n, in_features) layer inputs A, or None if the
            weight is not selected.
        rest: (n, K, P_dense) dense Jacobian columns of every other selected parameter (the
            block-rule layers' and the explicit ones), or None.
        bias: per factored ``nn.Linear``, whether the bias is differentiated.
        projected: (n, K, d) ``J R`` of the Kronecker-projected weights of block-rule layers
            (``projection="kronecker"``, whose blocks are never formed), or None.
    """

    grads: list[Tensor]
    acts: list[Tensor | None]
    rest: Tensor | None
    bias: list[bool]
    projected: Tensor | None = None

    @property
    def ref(self) -> Tensor:
        """A (n, K, ...) tensor of the chunk, for its sample count, K, dtype and device."""
        if self.grads:
            return self.grads[0]
        return self.rest if self.rest is not None else self.projected

    def __len__(self) -> int:
        """Return the number of samples."""
        return self.ref.shape[0]

    @staticmethod
    def cat(chunks: list[_FactoredChunk]) -> _FactoredChunk:
        """Concatenate chunks along the samples.

        Args:
            chunks: chunks in sample order.

        Returns:
            One chunk.
        """
        first = chunks[0]
        return _FactoredChunk(
            grads=[torch.cat([c.grads[i] for c in chunks], 0) for i in range(len(first.grads))],
            acts=[
                None if a is None else torch.cat([c.acts[i] for c in chunks], 0)
                for i, a in enumerate(first.acts)
            ],
            rest=None if first.rest is None else torch.cat([c.rest for c in chunks], 0),
            bias=first.bias,
            projected=(
                None if first.projected is None else torch.cat([c.projected for c in chunks], 0)
            ),
        )

    def gram(self, other: _FactoredChunk, kernel: str) -> Tensor:
        """Return the float64 kernel block: per Linear layer (G_a G_bᵀ) ⊙ (A_a A_bᵀ + 1).

        Args:
            other: the chunk of the second argument of the kernel.
            kernel: ``"full"`` (sample-major) or ``"trace"``.

        Returns:
            (na K, nb K) or (na, nb) block, the dense part included.
        """
        ref = self.ref
        na, nb, k = len(self), len(other), ref.shape[1]
        if self.rest is not None:
            out = _dense_gram(self.rest, other.rest, kernel)
        else:
            rows, cols = (na, nb) if kernel == "trace" else (na * k, nb * k)
            out = torch.zeros(rows, cols, dtype=torch.float64, device=ref.device)
        for i, (ga, aa) in enumerate(zip(self.grads, self.acts)):
            gb, ab = other.grads[i], other.acts[i]
            ga, gb = ga.double(), gb.double()
            if aa is not None:  # (a_i . a_j) for W, + 1 for b
                coef = aa.double().flatten(1) @ ab.double().flatten(1).T
                if self.bias[i]:
                    coef += 1.0
            else:
                coef = torch.ones(na, nb, dtype=torch.float64, device=ref.device)
            if kernel == "trace":  # sum_k (g_ik . g_jk) (a_i . a_j + 1), products formed in place
                out += (ga.flatten(1) @ gb.flatten(1).T).mul_(coef)
            else:
                gg = (ga.flatten(0, 1) @ gb.flatten(0, 1).T).view(na, k, nb, k)
                out += gg.mul_(coef[:, None, :, None]).view(na * k, nb * k)
        return out


class _StructuredLinearization(_Linearization):
    """Jacobians from layer inputs and output gradients where a closed form exists.

    Plain ``nn.Linear`` layers on (B, in) inputs stay factored (rank one per output); the layers
    of :mod:`~lightning_info.functional._jacobian_layers` (convolutions, BatchNorm / LayerNorm
    affine parameters, embeddings, ``nn.Linear`` on sequences) get their dense blocks from one
    batched product each; every other selected parameter gets explicit ``vmap(jacrev)``
    Jacobians. All output gradients and explicit Jacobians of a chunk come from one
    ``vmap(jacrev)`` call.

    Without a projection, :meth:`jacobian` and :meth:`features` return the explicit Jacobians
    (of an :class:`~lightning_info.functional._jacobian_explicit._ExplicitLinearization` built
    here); the structured form is used for kernels and projected features.

    Args:
        model: the network.
        selection: the differentiated parameters.
        num_outputs: K.
        options: projection, chunking, budget and ``output_fn``.
        terms: the qualifying layers (non-empty), see :func:`_probe_structure`.
    """

    def __init__(
        self,
        model: nn.Module,
        selection: _Selection,
        num_outputs: int,
        options: _Options,
        terms: list[_Term],
    ) -> None:
        super().__init__(model, selection, num_outputs, options)
        self.terms = terms
        self.linear = [t for t in terms if t.factored]
        self.blocked = [t for t in terms if not t.factored]
        factored = {n for t in self.linear for n in t.names}
        blocked = {n for t in self.blocked for n in t.names}
        # block-rule Conv2d / Linear weights projected as vec(Aᵀ G B): no dense block formed
        self.kron_terms = {
            t.module_name: factor_rule(t.module)
            for t in self.blocked
            if self._kron_weight(t.weight) is not None and factor_rule(t.module) is not None
        }
        factored |= {t.weight for t in self.blocked if t.module_name in self.kron_terms}
        # dense columns: every selected parameter except the factored ones, in order
        self.dense_names = [n for n in selection.names if n not in factored]
        self.rest_names = [n for n in self.dense_names if n not in blocked]
        self.rest = selection.params(self.rest_names)
        like = selection.like
        self.zero_deltas = {t.module_name: like.new_zeros(t.out_shape) for t in terms}
        fn = _offset_fn(
            model, terms, selection.fixed(self.rest_names), selection.buffers, options.output_fn
        )
        self._jac_fn = _SampleMap(jacrev(fn, argnums=(0, 1)), (None, None, 0), model)
        self._unprojected = None
        if options.projector is None:
            self._unprojected = _ExplicitLinearization(model, selection, num_outputs, options)

    @classmethod
    def build(
        cls, model: nn.Module, probe: Tensor, selection: _Selection, options: _Options
    ) -> _Linearization:
        """Probe K and the qualifying layers once; return the right linearization.

        Args:
            model: the network.
            probe: (N, ...) inputs; the first sample is evaluated once.
            selection: the differentiated parameters.
            options: projection, chunking, budget and ``output_fn``.

        Returns:
            A structured linearization, or an explicit one when no layer qualifies.
        """
        candidates = _candidates(model, selection.names)
        k, terms = _probe_structure(model, probe, candidates, options.output_fn)
        if not terms:
            return _ExplicitLinearization(model, selection, k, options)
        return cls(model, selection, k, options, terms)

    def _kron_weight(self, name: str | None) -> _KronWeight | None:
        """Return the Kronecker projection of a parameter, or None (dense rows, or no projection).

        Args:
            name: a parameter name, or None.

        Returns:
            The weight's Kronecker layout, or None.
        """
        if name is None or self.projector is None:
            return None
        return self.projector.kron_at(self.selection.offsets[name])

    def _numel(self, names: list[str]) -> int:
        """Return the number of scalars of the named parameters.

        Args:
            names: parameter names.

        Returns:
            The count.
        """
        return sum(self.selection.all_params[n].numel() for n in names)

    @property
    def explicit_columns(self) -> int:
        r"""Columns a chunk holds per output and sample (all counted toward the chunk size).

        Explicit and block-rule Jacobians, output gradients of every term, and the unfolded
        inputs of convolutions (per sample, so divided by K). A Kronecker-projected weight
        (``projection="kronecker"``) forms no block: it counts its temporaries
        :math:`A^\top g_k` (d1 per position and output) and :math:`U B` (d2 per position, per
        sample) instead.
        """
        deltas = sum(math.prod(t.out_shape) for t in self.terms)
        unfold = sum(
            math.prod(t.out_shape[1:]) * t.module.weight[0].numel()
            for t in self.blocked
            if isinstance(t.module, nn.Conv2d)
        )
        kron = 0
        for t in self.blocked:
            if t.module_name in self.kron_terms:
                positions = math.prod(t.out_shape) // t.module.weight.shape[0]
                kron += positions * self.projector.d1
                unfold += positions * self.projector.d2
        return self._numel(self.dense_names) + deltas + kron + unfold // max(1, self.num_outputs)

    def per_sample_bytes(self) -> int:
        """Return the bytes of one sample's kernel inputs (factored, or projected features).

        Returns:
            The bytes.
        """
        if self.projector is not None:
            return self.num_outputs * self.projector.dim * self.itemsize
        acts = sum(t.module.in_features for t in self.linear if t.weight is not None)
        outs = sum(t.module.out_features for t in self.linear)
        return (self.num_outputs * (self._numel(self.dense_names) + outs) + acts) * self.itemsize

    def _factored(self, x: Tensor) -> _FactoredChunk:
        """Return the factored and dense Jacobians of one chunk (eval mode must be active).

        Args:
            x: (n, ...) inputs.

        Returns:
            Linear layer inputs and output gradients, and the dense columns, detached.
        """
        capture: dict[str, Tensor] = {}
        with (
            torch.no_grad(),
            _forward_hooks(self.terms, lambda t: _capture_hook(capture, t.module_name)),
        ):
            self.model(x)
        rest_grads, delta_grads = self._jac_fn(self.rest, self.zero_deltas, x)
        columns = {n: rest_grads[n].detach().flatten(2) for n in self.rest_names}
        projected = None
        for t in self.blocked:
            a, g = capture[t.module_name], delta_grads[t.module_name].detach()
            if t.module_name in self.kron_terms:
                gt, u = self.kron_terms[t.module_name](t.module, a, g)
                part = self._project_positions(self._kron_weight(t.weight), gt, u)
                projected = part if projected is None else projected.add_(part)
                if t.bias is not None:
                    columns[t.bias] = gt.sum(3)
                continue
            weight, bias = t.blocks(t.module, a, g)
            if t.weight is not None:
                columns[t.weight] = weight.detach()
            if t.bias is not None:
                columns[t.bias] = bias.detach()
        rest = None
        if self.dense_names:
            rest = torch.cat([columns[n] for n in self.dense_names], dim=2)
        return _FactoredChunk(
            grads=[delta_grads[t.module_name].detach() for t in self.linear],
            acts=[capture[t.module_name] if t.weight is not None else None for t in self.linear],
            rest=rest,
            bias=[t.bias is not None for t in self.linear],
            projected=projected,
        )

    def _project_positions(self, weight: _KronWeight, gt: Tensor, u: Tensor) -> Tensor:
        r"""Return :math:`J_k R_W = \mathrm{vec}((A^\top g_k)(U B))` of a weight shared by L positions.

        :math:`J_k = g_k U` (out x fan_in) is never formed: the cost per sample is
        L·fan_in·d2 + K·min(L·d1·(out + d2), out·d2·(L + d1)) (the cheaper association) instead
        of K·out·L·fan_in for the block plus K·out·fan_in·d for its dense projection.

        Args:
            weight: the weight's Kronecker layout.
            gt: (n, K, out, L) output gradients.
            u: (n, L, fan_in) layer inputs (unfolded for a convolution).

        Returns:
            (n, K, d) projected features of the weight.
        """
        a, b = self.projector.factors(weight)
        n, k, out, length = gt.shape
        d1, d2 = a.shape[1], b.shape[1]
        right = u @ b  # (n, L, d2)
        # the cheaper association; one GEMM / bmm each, no broadcast copy of `right` over K
        if length * d1 * (out + d2) <= out * d2 * (length + d1):
            left = (gt.transpose(2, 3) @ a).transpose(2, 3).reshape(n, k * d1, length)
            return torch.bmm(left, right).view(n, k, d1 * d2)  # (Aᵀ g_k)(U B)
        gr = torch.bmm(gt.reshape(n, k * out, length), right).view(n, k, out, d2)
        return (gr.transpose(2, 3) @ a).transpose(2, 3).reshape(n, k, d1 * d2)  # Aᵀ (g_k U B)

    def _project_rest(self, rest: Tensor, out: Tensor) -> None:
        """Add the dense part's ``J R`` to ``out``, R in row blocks of the working bytes.

        Args:
            rest: (n, K, P_dense) dense Jacobian columns.
            out: (n, K, d) accumulator.
        """
        proj, offsets = self.projector, self.selection.offsets
        row_block = max(
            _PROJECTION_BLOCK_ROWS,
            _working_bytes(self.options.budget) // (proj.dim * self.itemsize),
        )
        col = 0
        for name in self.dense_names:
            size, start = self.selection.all_params[name].numel(), offsets[name]
            kron = proj.kron_at(start)
            if kron is not None:  # an explicit (fallback) Kronecker-projected weight
                out += proj.kron_apply(rest[..., col : col + size], kron)
                col += size
                continue
            for r0 in range(0, size, row_block):
                r1 = min(size, r0 + row_block)
                out += rest[..., col + r0 : col + r1] @ proj.rows(start + r0, start + r1)
            col += size

    def _project_term(self, term: _Term, g: Tensor, a: Tensor | None, out: Tensor) -> None:
        """Add one factored Linear layer's ``J R = g (aᵀ R_W + R_b)`` to ``out``.

        R_W is used in blocks of whole output units and the samples in sub-chunks, so that no
        temporary exceeds the working bytes (a quarter of the budget).

        Args:
            term: the layer.
            g: (n, K, out_features) output gradients.
            a: (n, in_features) layer inputs, or None if the weight is not selected.
            out: (n, K, d) accumulator.
        """
        proj, d, offsets = self.projector, self.projector.dim, self.selection.offsets
        quarter = _working_bytes(self.options.budget)
        n_out, n_in = term.module.weight.shape
        if term.bias is not None:  # J_k R_b = g_k R_b
            out += g @ proj.rows(offsets[term.bias], offsets[term.bias] + n_out)
        if term.weight is None:
            return
        kron = proj.kron_at(offsets[term.weight])
        if kron is not None:  # J_k R_W = vec(Aᵀ g_k aᵀ B) = (g_k A) ⊗ (a B)
            fa, fb = proj.factors(kron)
            out += ((g @ fa)[..., :, None] * (a @ fb)[:, None, None, :]).flatten(2)
            return
        # J_k(x_i) R_W = g_ik T_i with T_i[o] = sum_j a_ij R_W[o, j, :], in blocks of units o
        s, n = offsets[term.weight], g.shape[0]
        units = max(1, quarter // (n_in * d * self.itemsize))
        for o0 in range(0, n_out, units):
            o1 = min(n_out, o0 + units)
            rw = proj.rows(s + o0 * n_in, s + o1 * n_in).view(o1 - o0, n_in, d)
            rw = rw.permute(1, 0, 2).reshape(n_in, (o1 - o0) * d)
            step = max(1, quarter // ((o1 - o0) * d * self.itemsize))
            for i0 in range(0, n, step):
                t = (a[i0 : i0 + step] @ rw).view(-1, o1 - o0, d)
                out[i0 : i0 + step] += torch.bmm(g[i0 : i0 + step, :, o0:o1], t)

    def _project(self, chunk: _FactoredChunk) -> Tensor:
        """Return ``J R`` from the factored form, with the same R as the explicit form.

        Args:
            chunk: factored Jacobians.

        Returns:
            (n, K, d) projected features.
        """
        ref = chunk.ref
        if chunk.projected is not None:
            out = chunk.projected.clone()
        else:
            out = ref.new_zeros(len(chunk), ref.shape[1], self.projector.dim)
        if chunk.rest is not None:
            self._project_rest(chunk.rest, out)
        for term, g, a in zip(self.linear, chunk.grads, chunk.acts):
            self._project_term(term, g, a, out)
        return out

    def jacobian(self, x: Tensor) -> Tensor:
        """Return the (n, K, d) projected features (or, unprojected, the explicit Jacobians).

        Args:
            x: (n, ...) inputs.

        Returns:
            The features.
        """
        if self._unprojected is not None:
            return self._unprojected.jacobian(x)
        return self._project(self._factored(x))

    def features(self, inputs: Tensor) -> Tensor:
        """Return the features of ``inputs``; unprojected ones use the explicit chunk size.

        Args:
            inputs: (N, ...) inputs.

        Returns:
            (N, K, d) projected features or (N, K, P) Jacobians, detached.
        """
        if self._unprojected is not None:
            return self._unprojected.features(inputs)
        return super().features(inputs)

    def kernel_input(self, x: Tensor) -> _FactoredChunk | _DenseChunk:
        """Return the factored Jacobians of one chunk, or its projected features.

        Args:
            x: (n, ...) inputs.

        Returns:
            A factored chunk without a projection, else a dense chunk of ``J R``.
        """
        if self.projector is None:
            return self._factored(x)
        return _DenseChunk(self._project(self._factored(x)).detach())
