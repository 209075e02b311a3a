r"""Per-sample Jacobians and the empirical neural tangent kernel (NTK) with ``torch.func``.

This module is the model-dependent half of the smooth-unique-information engine
(Harutyunyan et al., 2021, arXiv:2101.06640, §3): it linearizes a network at its current
parameters :math:`w_0`,

.. math::

    f_\mathrm{lin}(x; w) = f(x; w_0) + J(x)(w - w_0), \qquad
    J(x) = \partial f(x; w_0) / \partial w \in \mathbb{R}^{K \times P},

and builds kernels from the Jacobians. The layout is **sample-major**: row ``i * K + k`` of a
stacked Jacobian (or of a full kernel) is output ``k`` of sample ``i``. The kernel algebra lives
in :mod:`lightning_info.functional.sui`; nothing here knows about leave-one-out.

For plain ``nn.Linear`` layers the Jacobians are used in factored form (``structured=True``,
the default of :func:`empirical_ntk` and :func:`jacobian_features`): the weight Jacobian of
output k is :math:`g_k a^\top` (output gradient times layer input), so kernels and projected
features are built from the small factors and the (K, out x in) block is never formed.

The model is always evaluated in eval mode (BatchNorm uses its running statistics, dropout is
off), so the function is a deterministic function of the parameters; its previous train/eval
state is restored afterwards. Models whose forward pass depends on other samples of the batch
(BatchNorm in *train* mode) are therefore linearized in their eval form.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lightning_info.utilities.checks import _check_choice, _check_int

__all__ = [
    "empirical_ntk",
    "jacobian_features",
    "model_outputs",
    "per_sample_jacobians",
]

NTKKernel = Literal["full", "trace"]
ProjectionType = Literal["gaussian", "rademacher"]
ParamSelection = str | Sequence[str] | None

_DEFAULT_BUDGET = 2**30  # 1 GiB
_PROJECTION_BLOCK_ROWS = 1024  # rows of the random projection generated per seeded block


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's previous ``training`` flag."""
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, was_training in states:
            module.training = was_training


def _select_params(model: nn.Module, params: ParamSelection) -> tuple[list[str], dict[str, Tensor]]:
    """Return (names of the differentiated parameters, dict of all parameters, detached)."""
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        if not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(
                f"`params` must be None, a name prefix or a list of parameter names/prefixes; "
                f"got {params!r}."
            )
        names = [n for n in named if any(n == p or n.startswith(p) for p in patterns)]
    if not names:
        available = ", ".join(f"`{n}`" for n in named) or "(none)"
        raise ValueError(f"`params` selects no parameter; got {params!r}. Available: {available}.")
    return names, {n: p.detach() for n, p in named.items()}


def _single_sample_fn(
    model: nn.Module, frozen: dict[str, Tensor]
) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """Return ``fn(selected_params, x) -> (K,)`` evaluating the model on one sample."""
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def fn(selected: dict[str, Tensor], x: Tensor) -> Tensor:
        out = functional_call(model, (selected, frozen, buffers), (x.unsqueeze(0),), strict=False)
        return out.reshape(-1)

    return fn


def _check_outputs(out: object, batch: int) -> Tensor:
    """Return model outputs as (B, K) or raise a clear error for unsupported outputs."""
    if not isinstance(out, Tensor):
        raise ValueError(
            f"`model` must return a tensor of shape (B,) or (B, K); got {type(out).__name__}. "
            "Wrap the model so that it returns the raw outputs (e.g. logits) as one tensor."
        )
    if out.ndim == 0 or out.ndim > 2 or out.shape[0] != batch:
        raise ValueError(
            f"`model` outputs must have shape (B,) or (B, K) with B = {batch}; "
            f"got shape {tuple(out.shape)}. Flatten or select the outputs first."
        )
    return out.reshape(batch, -1)


def _check_inputs(inputs: Tensor, name: str) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {type(inputs).__name__}.")
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape (N, ...) with N >= 1; got {tuple(inputs.shape)}."
        )
    return inputs


def _auto_chunk(num_rows: int, num_params: int, itemsize: int, budget: int) -> int:
    """Samples per vmap chunk so that one chunk of Jacobians uses about a quarter of the budget."""
    per_sample = max(1, num_rows * num_params * itemsize)
    return int(max(1, min(256, budget // (4 * per_sample))))


@torch.no_grad()
def model_outputs(model: nn.Module, inputs: Tensor, chunk_size: int | None = None) -> Tensor:
    """Evaluate ``model`` in eval mode and return its outputs as an (N, K) tensor.

    The train/eval state of every submodule is restored afterwards. A model returning shape
    (N,) is treated as K = 1.

    Args:
        model: the network; must return one tensor of shape (B,) or (B, K).
        inputs: (N, ...) inputs.
        chunk_size: samples per forward pass (default: all at once).

    Returns:
        (N, K) outputs, in the model's dtype.

    Raises:
        ValueError: if the outputs are not a tensor of shape (B,) or (B, K), or
            ``chunk_size`` < 1.
        TypeError: if ``inputs`` is not a tensor.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model_outputs(torch.nn.Linear(3, 2), torch.ones(4, 3)).shape
        torch.Size([4, 2])
    """
    inputs = _check_inputs(inputs, "inputs")
    n = inputs.shape[0]
    step = _check_int(chunk_size, "chunk_size", minimum=1, allow_none=True) or n
    outs = []
    with _eval_mode(model):
        for start in range(0, n, step):
            x = inputs[start : start + step]
            outs.append(_check_outputs(model(x), x.shape[0]))
    return torch.cat(outs, 0)


class _Projector:
    r"""Seeded random projection :math:`R \in \mathbb{R}^{P \times d}` applied as ``J @ R``.

    Entries are i.i.d. N(0, 1/d) (Gaussian) or ±1/sqrt(d) (Rademacher), so
    :math:`E[R R^\top] = I` and the projected kernel is an unbiased estimate of the NTK. Rows
    are generated in blocks of ``_PROJECTION_BLOCK_ROWS`` from a local ``torch.Generator``
    seeded with ``(seed, block index)``, on CPU, so the matrix is identical on every call and
    device and does not depend on the chunking. The whole matrix is cached only when it fits
    in ``budget`` bytes; otherwise blocks are regenerated for every chunk of samples.
    """

    def __init__(
        self, num_params: int, dim: int, kind: str, seed: int, like: Tensor, budget: int
    ) -> None:
        self.num_params, self.dim, self.kind, self.seed = num_params, dim, kind, seed
        self.dtype, self.device = like.dtype, like.device
        itemsize = like.element_size()
        block_bytes = min(_PROJECTION_BLOCK_ROWS, num_params) * dim * itemsize
        if block_bytes > budget:
            raise ValueError(
                f"`memory_budget_bytes` must hold one {_PROJECTION_BLOCK_ROWS} x {dim} projection "
                f"block ({block_bytes} bytes); got {budget}. Increase it or lower `projection_dim`."
            )
        self.cached: Tensor | None = None
        if num_params * dim * itemsize <= budget:
            self.cached = torch.empty(num_params, dim, dtype=self.dtype, device=self.device)
            for b, block in enumerate(self._blocks()):  # filled in place: no 2x peak from a cat
                start = b * _PROJECTION_BLOCK_ROWS
                self.cached[start : start + block.shape[0]] = block

    def _block(self, b: int) -> Tensor:
        start = b * _PROJECTION_BLOCK_ROWS
        rows = min(_PROJECTION_BLOCK_ROWS, self.num_params - start)
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + b)
        if self.kind == "gaussian":
            block = torch.randn(rows, self.dim, generator=gen, dtype=torch.float64)
        else:
            block = torch.randint(0, 2, (rows, self.dim), generator=gen).double() * 2 - 1
        return (block * (1.0 / math.sqrt(self.dim))).to(device=self.device, dtype=self.dtype)

    def _blocks(self) -> Iterator[Tensor]:
        for b in range(math.ceil(self.num_params / _PROJECTION_BLOCK_ROWS)):
            yield self._block(b)

    def rows(self, start: int, stop: int) -> Tensor:
        """Rows ``start:stop`` of R: the rows :meth:`__call__` applies to those Jacobian columns."""
        if self.cached is not None:
            return self.cached[start:stop]
        first, last = start // _PROJECTION_BLOCK_ROWS, (stop - 1) // _PROJECTION_BLOCK_ROWS
        part = torch.cat([self._block(b) for b in range(first, last + 1)], 0)
        base = first * _PROJECTION_BLOCK_ROWS
        return part[start - base : stop - base]

    def __call__(self, jac: Tensor) -> Tensor:
        if self.cached is not None:
            return jac @ self.cached
        out = jac.new_zeros(*jac.shape[:-1], self.dim)
        for block, start in zip(self._blocks(), range(0, self.num_params, _PROJECTION_BLOCK_ROWS)):
            out += jac[..., start : start + block.shape[0]] @ block
        return out


@dataclass
class _LinearTerm:
    r"""One ``nn.Linear`` whose Jacobian is used in its outer-product form (see ``structured``).

    For :math:`h = W a + b`, the per-sample Jacobian of output k is
    :math:`\partial f_k / \partial W = g_k a^\top` and :math:`\partial f_k / \partial b = g_k`,
    with :math:`a` the layer's input and :math:`g_k = \partial f_k / \partial h`. Hence
    :math:`J_k(x_i) J_l(x_j)^\top = (g_{ik} \cdot g_{jl}) (a_i \cdot a_j + 1)`: the kernel is an
    elementwise product of two small Gram matrices and ``W``'s Jacobian is never formed.
    """

    module_name: str
    module: nn.Module
    weight: str | None  # parameter name when differentiated
    bias: str | None


@dataclass
class _StructuredChunk:
    """Jacobians of a chunk of samples in factored form (float64 products are taken later)."""

    grads: list[Tensor]  # per term: (n, K, out_features) = dF / d(layer output)
    acts: list[Tensor | None]  # per term: (n, in_features) layer inputs, None if W not selected
    rest: Tensor | None  # (n, K, P_rest): explicit Jacobian of every other selected parameter
    bias: list[bool]  # per term: is the bias differentiated

    @property
    def ref(self) -> Tensor:
        """A (n, K, ...) tensor of the chunk, for its sample count, K, dtype and device."""
        return self.grads[0] if self.grads else self.rest

    def __len__(self) -> int:
        return self.ref.shape[0]

    @staticmethod
    def cat(chunks: list[_StructuredChunk]) -> _StructuredChunk:
        first = chunks[0]
        return _StructuredChunk(
            grads=[torch.cat([c.grads[i] for c in chunks], 0) for i in range(len(first.grads))],
            acts=[
                None if a is None else torch.cat([c.acts[i] for c in chunks], 0)
                for i, a in enumerate(first.acts)
            ],
            rest=None if first.rest is None else torch.cat([c.rest for c in chunks], 0),
            bias=first.bias,
        )


class _Hooks:
    """Forward hooks on the structured Linear layers: capture inputs and/or add output offsets."""

    def __init__(self, terms: list[_LinearTerm]) -> None:
        self.terms = terms
        self.deltas: dict[str, Tensor] | None = None
        self.capture: dict[str, Tensor] | None = None
        self.calls: Counter[str] = Counter()
        self.shapes: dict[str, tuple[int, ...]] = {}

    @contextmanager
    def active(self) -> Iterator[None]:
        handles = [t.module.register_forward_hook(self._hook(t.module_name)) for t in self.terms]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
            self.calls[name] += 1
            self.shapes[name] = tuple(inputs[0].shape)
            if self.capture is not None:
                self.capture[name] = inputs[0].detach()
            if self.deltas is not None:
                return output + self.deltas[name]
            return None

        return hook


def _linear_candidates(model: nn.Module, names: list[str]) -> list[_LinearTerm]:
    """Plain ``nn.Linear`` modules with a selected weight or bias that share no parameter."""
    selected = set(names)
    owners = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    terms = []
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
            continue
        prefix = f"{module_name}." if module_name else ""
        weight = f"{prefix}weight" if f"{prefix}weight" in selected else None
        bias = f"{prefix}bias" if module.bias is not None and f"{prefix}bias" in selected else None
        if weight is None and bias is None:
            continue
        if any(owners[id(p)] > 1 for p in module.parameters(recurse=False)):
            continue  # tied weights: the gradient also flows through another module
        terms.append(_LinearTerm(module_name, module, weight, bias))
    return terms


class _Linearization:
    """Everything needed to stream (projected) Jacobians of one model in chunks of samples."""

    def __init__(
        self,
        model: nn.Module,
        params: ParamSelection,
        chunk_size: int | None,
        projection_dim: int | None,
        projection: str,
        seed: int,
        budget: int,
        structured: bool = False,
    ) -> None:
        self.model = model
        self.names, all_params = _select_params(model, params)
        self.all_params = all_params
        self.selected = {n: all_params[n] for n in self.names}
        frozen = {n: p for n, p in all_params.items() if n not in self.selected}
        self.fn = _single_sample_fn(model, frozen)
        self.num_params = sum(p.numel() for p in self.selected.values())
        offsets = torch.tensor([0] + [p.numel() for p in self.selected.values()]).cumsum(0)
        self.offsets = dict(zip(self.names, offsets.tolist()))
        like = next(iter(self.selected.values()))
        self.itemsize = like.element_size()
        self.budget = budget
        self.chunk_size = _check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
        if not isinstance(structured, bool):
            raise TypeError(f"`structured` must be a bool; got {type(structured).__name__}.")
        self.structured = structured
        self.terms: list[_LinearTerm] = []
        self.projector = None
        if projection_dim is not None:
            d = _check_int(projection_dim, "projection_dim", minimum=1)
            kind = _check_choice(projection, "projection", ("gaussian", "rademacher"))
            self.projector = _Projector(self.num_params, d, kind, seed, like, budget)
        self.jac_fn = vmap(jacrev(self.fn), in_dims=(None, 0))

    @property
    def feature_dim(self) -> int:
        return self.projector.dim if self.projector is not None else self.num_params

    def num_outputs(self, inputs: Tensor) -> int:
        """Output count K; with ``structured`` also decides which Linear layers qualify."""
        candidates = _linear_candidates(self.model, self.names) if self.structured else []
        hooks = _Hooks(candidates)
        with _eval_mode(self.model), torch.no_grad(), hooks.active():
            k = _check_outputs(self.model(inputs[:1]), 1).shape[1]
        # one call per forward pass on a (1, in_features) input: otherwise (weight sharing
        # across calls, sequence inputs) the outer-product form does not hold; fall back
        self.terms = [
            t
            for t in candidates
            if hooks.calls[t.module_name] == 1 and len(hooks.shapes[t.module_name]) == 2
        ]
        if self.terms:
            self._setup_structured()
        return k

    def _setup_structured(self) -> None:
        covered = {n for t in self.terms for n in (t.weight, t.bias) if n is not None}
        self.rest_names = [n for n in self.names if n not in covered]
        rest = {n: self.selected[n] for n in self.rest_names}
        frozen = {n: p for n, p in self.all_params.items() if n not in rest}
        buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.hooks = _Hooks(self.terms)
        self.rest = rest
        self.zero_deltas = {
            t.module_name: torch.zeros_like(t.module.weight[:, 0]) for t in self.terms
        }
        model, hooks = self.model, self.hooks

        def fn(rest_params: dict[str, Tensor], deltas: dict[str, Tensor], x: Tensor) -> Tensor:
            hooks.deltas = deltas
            try:
                out = functional_call(
                    model, (rest_params, frozen, buffers), (x.unsqueeze(0),), strict=False
                )
            finally:
                hooks.deltas = None
            return out.reshape(-1)

        self.structured_fn = vmap(jacrev(fn, argnums=(0, 1)), in_dims=(None, None, 0))

    @property
    def _explicit_per_sample(self) -> int:
        """Parameters whose Jacobian a vmap call materializes, per output and sample."""
        if not self.terms:
            return self.num_params
        return sum(self.rest[n].numel() for n in self.rest_names) + sum(
            t.module.weight.shape[0] for t in self.terms
        )

    def per_sample_bytes(self, k: int) -> int:
        """Bytes of one sample's kernel inputs (Jacobian rows or their factored form)."""
        if self.projector is not None:
            return k * self.projector.dim * self.itemsize
        if self.terms:
            acts = sum(t.module.weight.shape[1] for t in self.terms if t.weight is not None)
            return (k * self._explicit_per_sample + acts) * self.itemsize
        return k * self.num_params * self.itemsize

    def chunk_for(self, k: int) -> int:
        if self.chunk_size is not None:
            return self.chunk_size
        return _auto_chunk(k, self._explicit_per_sample, self.itemsize, self.budget)

    def _factored(self, x: Tensor) -> _StructuredChunk:
        """Factored Jacobians of one chunk (eval mode must be active)."""
        capture: dict[str, Tensor] = {}
        self.hooks.capture = capture
        try:
            with torch.no_grad(), self.hooks.active():
                self.model(x)
        finally:
            self.hooks.capture = None
        with self.hooks.active():
            rest_grads, delta_grads = self.structured_fn(self.rest, self.zero_deltas, x)
        rest = None
        if self.rest_names:
            rest = torch.cat([rest_grads[n].flatten(2) for n in self.rest_names], dim=2)
        return _StructuredChunk(
            grads=[delta_grads[t.module_name].detach() for t in self.terms],
            acts=[capture[t.module_name] if t.weight is not None else None for t in self.terms],
            rest=None if rest is None else rest.detach(),
            bias=[t.bias is not None for t in self.terms],
        )

    def _project_factored(self, chunk: _StructuredChunk) -> Tensor:
        """``J R`` from the factored form, with the same R as the explicit path.

        R is used in blocks of rows (whole output units of a Linear weight) of about a quarter of
        the budget, and samples in sub-chunks so that no temporary exceeds about a quarter of it.
        """
        proj, d, quarter = self.projector, self.projector.dim, self.budget // 4
        n, k = len(chunk), chunk.ref.shape[1]
        out = chunk.ref.new_zeros(n, k, d)
        row_block = max(_PROJECTION_BLOCK_ROWS, quarter // (d * self.itemsize))
        col = 0
        for name in self.rest_names:
            size, start = self.rest[name].numel(), self.offsets[name]
            for r0 in range(0, size, row_block):
                r1 = min(size, r0 + row_block)
                out += chunk.rest[..., col + r0 : col + r1] @ proj.rows(start + r0, start + r1)
            col += size
        for term, g, a in zip(self.terms, chunk.grads, chunk.acts):
            n_out, n_in = term.module.weight.shape
            if term.bias is not None:  # J_k R_b = g_k R_b
                out += g @ proj.rows(self.offsets[term.bias], self.offsets[term.bias] + n_out)
            if term.weight is None:
                continue
            # J_k(x_i) R_W = g_ik T_i with T_i[o] = sum_j a_ij R_W[o, j, :], in blocks of units o
            s = self.offsets[term.weight]
            units = max(1, quarter // (n_in * d * self.itemsize))
            for o0 in range(0, n_out, units):
                o1 = min(n_out, o0 + units)
                rw = proj.rows(s + o0 * n_in, s + o1 * n_in).view(o1 - o0, n_in, d)
                rw = rw.permute(1, 0, 2).reshape(n_in, (o1 - o0) * d)
                step = max(1, quarter // ((o1 - o0) * d * self.itemsize))
                for i0 in range(0, n, step):
                    t = (a[i0 : i0 + step] @ rw).view(-1, o1 - o0, d)
                    out[i0 : i0 + step] += torch.bmm(g[i0 : i0 + step, :, o0:o1], t)
        return out

    def jacobian(self, x: Tensor) -> Tensor:
        """(n, ...) -> (n, K, feature_dim) for one chunk (eval mode must be active)."""
        if self.terms and self.projector is not None:
            return self._project_factored(self._factored(x))
        jac = self._explicit_jacobian(x)
        return self.projector(jac) if self.projector is not None else jac

    def _explicit_jacobian(self, x: Tensor) -> Tensor:
        """(n, K, P) Jacobians with ``vmap(jacrev)``: the unstructured path."""
        grads = self.jac_fn(self.selected, x)
        return torch.cat([grads[n].flatten(2) for n in self.names], dim=2)

    def kernel_input(self, x: Tensor) -> Tensor | _StructuredChunk:
        """What the kernel is built from: factored Jacobians when possible, else ``J`` (or ``J R``)."""
        if self.terms and self.projector is None:
            return self._factored(x)
        return self.jacobian(x).detach()

    def stream(
        self, inputs: Tensor, k: int, step: int | None = None, *, kernel_inputs: bool = False
    ) -> Iterator[tuple[int, Tensor | _StructuredChunk]]:
        """Yield ``(start, J_chunk)`` over ``inputs`` in chunks of samples."""
        step = step or self.chunk_for(k)
        with _eval_mode(self.model):
            for start in range(0, inputs.shape[0], step):
                x = inputs[start : start + step]
                yield start, (self.kernel_input(x) if kernel_inputs else self.jacobian(x).detach())

    def features(self, inputs: Tensor, k: int) -> Tensor:
        return torch.cat([j for _, j in self.stream(inputs, k)], 0)

    def kernel_inputs(self, inputs: Tensor, k: int) -> Tensor | _StructuredChunk:
        chunks = [j for _, j in self.stream(inputs, k, kernel_inputs=True)]
        if isinstance(chunks[0], _StructuredChunk):
            return _StructuredChunk.cat(chunks)
        return torch.cat(chunks, 0)


def _check_budget(value: int) -> int:
    return int(_check_int(value, "memory_budget_bytes", minimum=1))


def per_sample_jacobians(
    model: nn.Module,
    inputs: Tensor,
    *,
    params: ParamSelection = None,
    chunk_size: int | None = None,
) -> Tensor:
    r"""Compute the Jacobian of every sample's K outputs with respect to the parameters.

    Harutyunyan et al. (2021, arXiv:2101.06640, §3) linearize the network with these Jacobians:

    .. math::

        J(x_i)_{k p} = \frac{\partial f_k(x_i; w_0)}{\partial w_p}.

    Computed with ``torch.func.vmap(jacrev(...))`` over a single-sample ``functional_call``
    (buffers passed through), in eval mode, in chunks of ``chunk_size`` samples.

    Args:
        model: network returning (B,) or (B, K) outputs.
        inputs: (N, ...) inputs.
        params: which parameters to differentiate: ``None`` (all with ``requires_grad``), a name
            prefix (``"fc2"``) or a list of names/prefixes. The rest are held fixed.
        chunk_size: samples per vmap call (default: chosen so a chunk is about 256 MiB).

    Returns:
        (N, K, P) Jacobians, parameters flattened in ``model.named_parameters()`` order.

    Raises:
        ValueError: unsupported model outputs, an empty parameter selection, ``chunk_size`` < 1.
        TypeError: if ``inputs`` is not a tensor.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> per_sample_jacobians(torch.nn.Linear(3, 2), torch.ones(4, 3)).shape
        torch.Size([4, 2, 8])
    """
    inputs = _check_inputs(inputs, "inputs")
    lin = _Linearization(model, params, chunk_size, None, "gaussian", 0, _DEFAULT_BUDGET)
    k = lin.num_outputs(inputs)
    return lin.features(inputs, k)


def jacobian_features(
    model: nn.Module,
    inputs: Tensor,
    *,
    params: ParamSelection = None,
    projection_dim: int | None = None,
    projection: ProjectionType = "gaussian",
    seed: int = 0,
    chunk_size: int | None = None,
    memory_budget_bytes: int = _DEFAULT_BUDGET,
    structured: bool = True,
) -> Tensor:
    r"""Return (randomly projected) per-sample Jacobian features for the feature-space path.

    With a seeded random matrix :math:`R \in \mathbb{R}^{P \times d}`,
    :math:`E[R R^\top] = I` (Gaussian N(0, 1/d) or Rademacher ±1/sqrt(d) entries),

    .. math::

        \Phi(x_i) = J(x_i) R \in \mathbb{R}^{K \times d}, \qquad
        \Phi \Phi^\top \approx J J^\top = \Theta,

    so the projected kernel is an unbiased estimate of the empirical NTK (a Johnson-Lindenstrauss
    sketch; the relative error falls like :math:`1/\sqrt{d}`). ``R`` is generated in blocks of
    1024 rows from local generators seeded by ``(seed, block)``: identical on every call, never
    materialized beyond ``memory_budget_bytes``. ``projection_dim=None`` returns the exact
    Jacobians (P features).

    Args:
        model: network returning (B,) or (B, K) outputs.
        inputs: (N, ...) inputs.
        params: parameter selection (see :func:`per_sample_jacobians`).
        projection_dim: d, or None for no projection.
        projection: ``"gaussian"`` or ``"rademacher"``.
        seed: seed of the projection.
        chunk_size: samples per vmap call.
        memory_budget_bytes: bound on the projection matrix / Jacobian chunk memory.
        structured: use the factored form of ``nn.Linear`` Jacobians (default True): for
            :math:`h = W a + b`, :math:`\partial f_k/\partial W = g_k a^\top`, so a Linear
            layer's projected features are
            :math:`g_k (a^\top R_W + R_b)`; its (K, out x in) Jacobian is never formed. Exact
            up to rounding. Applies to plain ``nn.Linear`` modules called once per forward on
            (B, in) inputs with no tied parameter; every other parameter (convolutions,
            normalization, embeddings, Linear on sequences) falls back to explicit Jacobians.
            Without a projection the explicit Jacobians are returned either way.

    Returns:
        (N, K, d) features (or (N, K, P) without projection), in the parameters' dtype.

    Raises:
        ValueError: invalid options, unsupported model outputs, a budget too small for one
            projection block.
        TypeError: if ``inputs`` is not a tensor.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> jacobian_features(torch.nn.Linear(3, 2), torch.ones(4, 3), projection_dim=5).shape
        torch.Size([4, 2, 5])
    """
    inputs = _check_inputs(inputs, "inputs")
    budget = _check_budget(memory_budget_bytes)
    lin = _Linearization(
        model, params, chunk_size, projection_dim, projection, seed, budget, structured
    )
    return lin.features(inputs, lin.num_outputs(inputs))


def _mirror_lower(kernel: Tensor) -> Tensor:
    """Symmetric by construction: the lower triangle (with the diagonal) copied to the upper.

    BLAS does not promise a bitwise symmetric ``A @ A.T`` (summation order may differ between
    entry (i, j) and (j, i), and between CPUs), and downstream Cholesky / ``eigh`` treat the
    kernel as symmetric, so every kernel of a set with itself is made exactly symmetric.
    """
    return torch.tril(kernel) + torch.tril(kernel, -1).T


def _pair_kernel(
    ja: Tensor | _StructuredChunk, jb: Tensor | _StructuredChunk, kernel: str
) -> Tensor:
    """Kernel block between two Jacobian chunks (na, K, D), (nb, K, D), accumulated in float64.

    The block of a chunk with itself (``ja is jb``) is exactly symmetric (:func:`_mirror_lower`).
    """
    same = ja is jb
    if isinstance(ja, _StructuredChunk):
        out = _pair_kernel_structured(ja, jb, kernel)
    else:
        a = ja.double()
        b = a if same else jb.double()
        if kernel == "trace":
            out = a.flatten(1) @ b.flatten(1).T
        else:
            out = a.flatten(0, 1) @ b.flatten(0, 1).T
    return _mirror_lower(out) if same else out


def _pair_kernel_structured(a: _StructuredChunk, b: _StructuredChunk, kernel: str) -> Tensor:
    """Kernel block from factored Jacobians: per Linear layer (G_a G_bᵀ) ⊙ (A_a A_bᵀ + 1)."""
    ref = a.ref
    na, nb, k = len(a), len(b), ref.shape[1]
    if a.rest is not None:
        out = _pair_kernel(a.rest, a.rest if a is b else b.rest, kernel)
    else:
        rows, cols = (na, nb) if kernel == "trace" else (na * k, nb * k)
        out = torch.zeros(rows, cols, dtype=torch.float64, device=ref.device)
    for i, (ga, aa) in enumerate(zip(a.grads, a.acts)):
        gb, ab = b.grads[i], b.acts[i]
        ga, gb = ga.double(), gb.double()
        if aa is not None:  # (a_i . a_j) for W, + 1 for b
            coef = aa.double().flatten(1) @ ab.double().flatten(1).T
            if a.bias[i]:
                coef += 1.0
        else:
            coef = torch.ones(na, nb, dtype=torch.float64, device=ref.device)
        if kernel == "trace":  # sum_k (g_ik . g_jk) (a_i . a_j + 1), products formed in place
            out += (ga.flatten(1) @ gb.flatten(1).T).mul_(coef)
        else:
            gg = (ga.flatten(0, 1) @ gb.flatten(0, 1).T).view(na, k, nb, k)
            out += gg.mul_(coef[:, None, :, None]).view(na * k, nb * k)
    return out


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    params: ParamSelection = None,
    kernel: NTKKernel = "full",
    chunk_size: int | None = None,
    projection_dim: int | None = None,
    projection: ProjectionType = "gaussian",
    seed: int = 0,
    memory_budget_bytes: int = _DEFAULT_BUDGET,
    structured: bool = True,
) -> Tensor:
    r"""Compute the empirical NTK :math:`\Theta(X_1, X_2) = J_1 J_2^\top` at the current weights.

    Jacot et al. (2018, arXiv:1806.07572); used for SUI by Harutyunyan et al. (2021,
    arXiv:2101.06640, §3):

    .. math::

        \Theta_\mathrm{full}[(i,k),(j,l)] = J_k(x_i)\, J_l(x_j)^\top, \qquad
        \Theta_\mathrm{trace}[i, j] = \sum_{k=1}^{K} J_k(x_i)\, J_k(x_j)^\top .

    The trace kernel is the **sum** over outputs of the per-output kernels. The SUI engine
    (:func:`lightning_info.functional.sui.unique_information_from_kernels`) uses it as
    :math:`\Theta_\mathrm{full} \approx (\Theta_\mathrm{trace} / K) \otimes I_K`: every output
    shares the per-output *mean* kernel and cross-output blocks are dropped. This is exact when the
    full kernel has the form :math:`\Theta_1 \otimes I_K` (e.g. only a linear K-output head is
    linearized: ``params="head"``), and is the usual wide-network approximation otherwise.

    Jacobians (or, with ``structured``, their factored form: layer inputs and output gradients)
    are streamed in chunks of samples; when all of them fit in ``memory_budget_bytes`` they are
    computed once, otherwise the kernel is accumulated block by block (recomputing the Jacobians
    of ``x2`` chunks; with ``x2=None`` only the blocks on and below the diagonal are computed and
    the result is symmetrized). The budget bounds these stored inputs; the float64 products add
    about as much again, and the (N1 K, N2 K) result is not counted. Products are accumulated in
    float64.

    Args:
        model: network returning (B,) or (B, K) outputs.
        x1: (N1, ...) inputs.
        x2: (N2, ...) inputs, or None for ``x1`` (symmetric fast path).
        params: parameter selection (see :func:`per_sample_jacobians`).
        kernel: ``"full"`` (N1 K x N2 K, sample-major) or ``"trace"`` (N1 x N2).
        chunk_size: samples per vmap call.
        projection_dim: if given, use the projected Jacobians of :func:`jacobian_features`.
        projection: ``"gaussian"`` or ``"rademacher"``.
        seed: seed of the projection.
        memory_budget_bytes: bound on stored Jacobians / projection blocks (default 1 GiB).
        structured: use the factored form of ``nn.Linear`` Jacobians (default True): for
            :math:`h = W a + b`, :math:`\partial f_k/\partial W = g_k a^\top`, so a Linear
            layer's kernel is :math:`(G G^\top) \odot (A A^\top + 1)` from the layer inputs
            ``A`` and output gradients ``G``, and its projected features are
            :math:`g_k (a^\top R_W + R_b)`; its (K, out x in) Jacobian is never formed. Exact
            up to rounding. Applies to plain ``nn.Linear`` modules called once per forward on
            (B, in) inputs with no tied parameter; every other parameter (convolutions,
            normalization, embeddings, Linear on sequences) falls back to explicit Jacobians.

    Returns:
        float64 kernel of shape (N1*K, N2*K) (``"full"``) or (N1, N2) (``"trace"``).

    Raises:
        ValueError: invalid options or unsupported model outputs.
        TypeError: if an input is not a tensor.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> ntk = empirical_ntk(torch.nn.Linear(3, 2), torch.eye(3))
        >>> ntk.shape, round(ntk[0, 0].item(), 4), round(ntk[0, 1].item(), 4)
        (torch.Size([6, 6]), 2.0, 0.0)
    """
    x1 = _check_inputs(x1, "x1")
    symmetric = x2 is None
    x2 = x1 if x2 is None else _check_inputs(x2, "x2")
    kernel = _check_choice(kernel, "kernel", ("full", "trace"))
    budget = _check_budget(memory_budget_bytes)
    lin = _Linearization(
        model, params, chunk_size, projection_dim, projection, seed, budget, structured
    )
    k = lin.num_outputs(x1)
    per_sample = lin.per_sample_bytes(k)
    n1, n2 = x1.shape[0], x2.shape[0]
    needed = per_sample * (n1 if symmetric else n1 + n2)
    if needed <= budget:
        j1 = lin.kernel_inputs(x1, k)
        j2 = j1 if symmetric else lin.kernel_inputs(x2, k)
        return _pair_kernel(j1, j2, kernel)

    scale = k if kernel == "full" else 1
    out = torch.zeros(n1 * scale, n2 * scale, dtype=torch.float64, device=x1.device)

    # Streaming: outer blocks of x1 sized to half the budget, inner chunks of x2 recomputed.
    outer = max(1, budget // (2 * per_sample))
    for a0 in range(0, n1, outer):
        ja = lin.kernel_inputs(x1[a0 : a0 + outer], k)
        a1 = a0 + len(ja)
        limit = a1 if symmetric else n2
        for b0, jb in lin.stream(x2[:limit], k, kernel_inputs=True):
            b1 = b0 + len(jb)
            out[a0 * scale : a1 * scale, b0 * scale : b1 * scale] = _pair_kernel(ja, jb, kernel)
    if symmetric:  # every entry on and below the diagonal was filled: mirror it
        out = _mirror_lower(out)
    return out
