r"""Pieces shared by the per-sample Jacobian implementations (explicit and structured).

Harutyunyan et al. (2021, arXiv:2101.06640, §3) linearize a network at its parameters
:math:`w_0` with the per-sample Jacobians :math:`J(x) = \partial f(x; w_0) / \partial w`. The two
implementations (:mod:`~lightning_info.functional._jacobian_explicit` and
:mod:`~lightning_info.functional._jacobian_structured`) share what is here:

* the parameter selection (:class:`_Selection`) and the options (:class:`_Options`);
* the model-output contract: a (B,) or (B, K) tensor, or an ``output_fn`` that maps whatever
  the model returns (tuple, dict, output object) to one (:func:`_select_outputs`);
* the seeded random projection :math:`R` (:class:`_Projector`, ``docs/sui.md`` §8.2);
* the memory budget: :func:`_working_bytes` is the single place where "a quarter of the
  budget" (the size of one temporary) is defined, and :func:`_auto_chunk` sizes a chunk of
  samples from it;
* dense kernel-input chunks (:class:`_DenseChunk`) and the base class :class:`_Linearization`
  that streams chunks of samples in eval mode;
* :class:`_SampleMap`, which maps a single-sample function over the samples of a chunk with
  ``torch.func.vmap``, or one sample at a time where ``vmap`` cannot evaluate the model
  (recurrent layers, see its docstring).

The layout is sample-major: row ``i * K + k`` of a stacked Jacobian or kernel is output ``k``
of sample ``i``.
"""

from __future__ import annotations

import logging
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.func import vmap

NTKKind = Literal["full", "trace"]
ProjectionType = Literal["gaussian", "rademacher", "kronecker"]
#: valid ``projection=`` values
PROJECTIONS: tuple[str, ...] = ("gaussian", "rademacher", "kronecker")
ParamSelection = str | Sequence[str] | None
OutputFn = Callable[[Any], Tensor]
#: ``progress(stage, amount)``: ``("jacobians", n)`` after n samples' Jacobians, ``("kernel", 1)``
#: after a kernel block; passed in by a caller that shows progress (the functional layer never
#: prints).
ProgressHook = Callable[[str, int], None]

_DEFAULT_BUDGET = 2**30  # 1 GiB
_PROJECTION_BLOCK_ROWS = 1024  # rows of the random projection generated per seeded block
_MAX_AUTO_CHUNK = 256  # samples per vmap call when chunk_size is not given
_KRON_SEED_OFFSET = 2**41  # the Kronecker factors' generator stream, apart from the dense blocks
_KRON_MIN_FACTOR = 4  # smallest d1 of projection="kronecker" (d = d1 d2, d1 <= sqrt(d))

_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)
#: Modules whose forward pass ``torch.func.vmap`` cannot evaluate: ``nn.RNN`` / ``nn.LSTM`` /
#: ``nn.GRU`` (and their ``*Cell`` versions) create their zero initial hidden state inside
#: ``forward`` (unbatched under vmap) and the ``_VF`` kernel writes a batched value into it in
#: place, which fails with "output with shape [1, H] doesn't match the broadcast shape
#: [n, 1, H]".
_VMAP_INCOMPATIBLE: tuple[type[nn.Module], ...] = (nn.RNNBase, nn.RNNCellBase)
_NOTED: set[str] = set()  # module types already noted (once per process)


def _working_bytes(budget: int) -> int:
    """Return the bytes one temporary may use: a quarter of ``memory_budget_bytes``.

    The budget bounds the stored kernel inputs (an outer block of samples holds half of it in
    :func:`~lightning_info.functional.jacobian.empirical_ntk`); one chunk of Jacobians from a
    vmap call, and each temporary of the factored projection, are kept to a quarter.

    Args:
        budget: ``memory_budget_bytes`` (>= 1).

    Returns:
        ``budget // 4``.
    """
    return budget // 4


def _auto_chunk(num_rows: int, num_columns: int, itemsize: int, budget: int) -> int:
    """Return the samples per vmap call so that one chunk of Jacobians fits the working bytes.

    Args:
        num_rows: Jacobian rows per sample (the output count K).
        num_columns: Jacobian columns a vmap call materializes per row.
        itemsize: bytes per number.
        budget: ``memory_budget_bytes``.

    Returns:
        A chunk size between 1 and 256.
    """
    per_sample = max(1, num_rows * num_columns * itemsize)
    return int(max(1, min(_MAX_AUTO_CHUNK, _working_bytes(budget) // per_sample)))


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode and restore each one's previous ``training`` flag.

    Args:
        model: the network.

    Yields:
        Nothing; the model is in eval mode inside the ``with`` block.
    """
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, was_training in states:
            module.training = was_training


def _check_inputs(inputs: Tensor, name: str) -> Tensor:
    """Return ``inputs`` after checking it is a tensor of shape (N, ...) with N >= 1.

    Args:
        inputs: the inputs to check.
        name: the argument name for the error message.

    Returns:
        ``inputs.detach()``: the same storage without the caller's autograd graph (Jacobians are
        taken with respect to the parameters, never the inputs).

    Raises:
        TypeError: if ``inputs`` is not a tensor.
        ValueError: if it has no sample dimension or no sample.
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor; got {type(inputs).__name__}.")
    if inputs.ndim < 1 or inputs.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have shape (N, ...) with N >= 1; got {tuple(inputs.shape)}."
        )
    return inputs.detach()


def _check_output_fn(output_fn: OutputFn | None) -> OutputFn | None:
    """Return ``output_fn`` after checking it is callable or None.

    Args:
        output_fn: the ``output_fn=`` argument.

    Returns:
        ``output_fn`` unchanged.

    Raises:
        TypeError: if it is neither None nor callable.
    """
    if output_fn is not None and not callable(output_fn):
        raise TypeError(f"`output_fn` must be callable or None; got {type(output_fn).__name__}.")
    return output_fn


def _check_outputs(out: object, batch: int, source: str = "`model`") -> Tensor:
    """Return model outputs as (B, K) or raise a clear error for unsupported outputs.

    Args:
        out: what the model (or ``output_fn``) returned.
        batch: the batch size B.
        source: who produced ``out``, for the error message (``"`model`"`` or
            ``"`output_fn`"``).

    Returns:
        ``out`` reshaped to (B, K).

    Raises:
        ValueError: if ``out`` is not a tensor of shape (B,) or (B, K).
    """
    if not isinstance(out, Tensor):
        hint = (
            "pass `output_fn=` to select them, e.g. `output_fn=lambda out: out[0]` or "
            '`output_fn=lambda out: out["logits"]`.'
            if source == "`model`"
            else "it must select the raw outputs (e.g. logits) as one tensor."
        )
        raise ValueError(
            f"{source} must return a tensor of shape (B,) or (B, K); got "
            f"{type(out).__name__}: {hint}"
        )
    if out.ndim == 0 or out.ndim > 2 or out.shape[0] != batch:
        raise ValueError(
            f"{source} outputs must have shape (B,) or (B, K) with B = {batch}; "
            f"got shape {tuple(out.shape)}. Flatten or select the outputs first."
        )
    return out.reshape(batch, -1)


def _select_outputs(raw: object, output_fn: OutputFn | None, batch: int) -> Tensor:
    """Return the (B, K) outputs that are linearized from the model's raw forward output.

    Args:
        raw: what the model returned.
        output_fn: maps ``raw`` to a (B,) or (B, K) tensor, or None if ``raw`` is one.
        batch: the batch size B.

    Returns:
        (B, K) outputs.
    """
    if output_fn is None:
        return _check_outputs(raw, batch)
    return _check_outputs(output_fn(raw), batch, "`output_fn`")


def _output_vector(raw: object, output_fn: OutputFn | None) -> Tensor:
    """Return one sample's outputs as a (K,) vector (the function under ``vmap(jacrev)``).

    No check here: the shapes were checked on a probe sample when the linearization was built.

    Args:
        raw: what the model returned for a batch of one sample.
        output_fn: maps ``raw`` to a (1,) or (1, K) tensor, or None if ``raw`` is one.

    Returns:
        (K,) outputs.
    """
    out = raw if output_fn is None else output_fn(raw)
    return out.reshape(-1)


def _probe_num_outputs(model: nn.Module, probe: Tensor, output_fn: OutputFn | None) -> int:
    """Return the output count K from one forward pass on the first sample, in eval mode.

    Args:
        model: the network.
        probe: (N, ...) inputs; only the first sample is evaluated.
        output_fn: see :func:`_select_outputs`.

    Returns:
        K.
    """
    with _eval_mode(model), torch.no_grad():
        return _select_outputs(model(probe[:1]), output_fn, 1).shape[1]


@dataclass(frozen=True)
class _Selection:
    """The differentiated parameters of a model and everything held fixed.

    Attributes:
        names: differentiated parameter names, in ``model.named_parameters()`` order.
        all_params: every parameter, detached.
        buffers: every buffer, detached.
        offsets: first Jacobian column of each differentiated parameter.
        num_params: P, the number of differentiated scalars.
    """

    names: list[str]
    all_params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    offsets: dict[str, int]
    num_params: int

    @classmethod
    def of(cls, model: nn.Module, params: ParamSelection) -> _Selection:
        """Select parameters by name or prefix.

        Args:
            model: the network.
            params: None (all with ``requires_grad``), a name prefix, or a list of names and
                prefixes.

        Returns:
            The selection.

        Raises:
            ValueError: if ``params`` is malformed or selects no parameter.
        """
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
            raise ValueError(
                f"`params` selects no parameter; got {params!r}. Available: {available}."
            )
        sizes = [named[n].numel() for n in names]
        offsets = torch.tensor([0, *sizes]).cumsum(0).tolist()
        return cls(
            names=names,
            all_params={n: p.detach() for n, p in named.items()},
            buffers={n: b.detach() for n, b in model.named_buffers()},
            offsets=dict(zip(names, offsets)),
            num_params=sum(sizes),
        )

    def params(self, names: Sequence[str]) -> dict[str, Tensor]:
        """Return the named parameters (detached).

        Args:
            names: parameter names.

        Returns:
            ``{name: tensor}`` in the order of ``names``.
        """
        return {n: self.all_params[n] for n in names}

    def fixed(self, names: Sequence[str]) -> dict[str, Tensor]:
        """Return every parameter not in ``names`` (held fixed under ``functional_call``).

        Args:
            names: the parameters that are differentiated.

        Returns:
            ``{name: tensor}`` of all other parameters.
        """
        skip = set(names)
        return {n: p for n, p in self.all_params.items() if n not in skip}

    @property
    def like(self) -> Tensor:
        """The first differentiated parameter: its dtype, device and itemsize are used."""
        return self.all_params[self.names[0]]


def kronecker_factors(dim: int) -> tuple[int, int]:
    r"""Return :math:`(d_1, d_2)` of ``projection="kronecker"``: d1 the largest divisor <= sqrt(d).

    Args:
        dim: the projection dimension d >= 1.

    Returns:
        ``(d1, d // d1)``, e.g. (16, 32) for d = 512 and (32, 64) for d = 2048.
    """
    d1 = max(f for f in range(1, math.isqrt(dim) + 1) if dim % f == 0)
    return d1, dim // d1


def _check_projection(projection: object, projection_dim: int | None) -> str:
    """Return ``projection`` after checking it, and that ``projection_dim`` suits it.

    Args:
        projection: the ``projection=`` argument.
        projection_dim: the checked ``projection_dim`` (an int >= 1), or None.

    Returns:
        ``"gaussian"``, ``"rademacher"`` or ``"kronecker"``.

    Raises:
        ValueError: an unknown ``projection`` (naming the valid ones), or a ``projection_dim``
            whose largest divisor <= sqrt(d) is below 4 under ``"kronecker"``.
    """
    raw = getattr(projection, "value", projection)
    if raw not in PROJECTIONS:
        listed = ", ".join(repr(c) for c in PROJECTIONS)
        raise ValueError(f"`projection` must be one of {listed}; got {projection!r}.")
    if raw == "kronecker" and projection_dim is not None:
        d1, d2 = kronecker_factors(projection_dim)
        if d1 < _KRON_MIN_FACTOR:
            raise ValueError(
                f"`projection_dim` must factor as d1 x d2 with {_KRON_MIN_FACTOR} <= d1 <= d2 for "
                f"projection='kronecker' (e.g. a power of two >= 16: 256, 512, 1024, 2048, or "
                f"any multiple of 4 that is >= 16); got {projection_dim} (= {d1} x {d2})."
            )
    return str(raw)


@dataclass(frozen=True)
class _KronWeight:
    r"""A weight projected by a Kronecker product :math:`A \otimes B` (``projection="kronecker"``).

    Attributes:
        start: the weight's first row of R (its first Jacobian column).
        out: rows of the weight matrix (output units or channels).
        fan_in: its columns, the rest of the weight flattened (in_features or C·kh·kw).
    """

    start: int
    out: int
    fan_in: int

    @property
    def stop(self) -> int:
        """One past the weight's last row of R."""
        return self.start + self.out * self.fan_in


def kronecker_weights(model: nn.Module, selection: _Selection) -> list[_KronWeight]:
    r"""Return the selected weights of ``nn.Linear`` / ``nn.Conv2d`` modules, by offset.

    These are the parameters ``projection="kronecker"`` projects with :math:`A \otimes B`, in
    the explicit and the structured form alike (so both apply the same R).

    Args:
        model: the network.
        selection: the differentiated parameters.

    Returns:
        One entry per weight, in increasing offset.
    """
    found = {}
    for module_name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        param = selection.all_params.get(name)
        if name not in selection.offsets or param is None or param.ndim < 2:
            continue
        out = param.shape[0]
        found[name] = _KronWeight(selection.offsets[name], out, param.numel() // out)
    return sorted(found.values(), key=lambda w: w.start)


class _Projector:
    r"""Seeded random projection :math:`R \in \mathbb{R}^{P \times d}` applied as ``J @ R``.

    Entries are i.i.d. N(0, 1/d) (Gaussian) or ±1/sqrt(d) (Rademacher), so
    :math:`E[R R^\top] = I` and the projected kernel is an unbiased estimate of the NTK
    (``docs/sui.md`` §8.2). Rows are generated in blocks of ``_PROJECTION_BLOCK_ROWS`` from a
    local ``torch.Generator`` seeded with ``(seed, block index)``, on CPU, so the matrix is
    identical on every call and device and does not depend on the chunking. The whole matrix is
    cached only when it fits in ``budget`` bytes; otherwise blocks are regenerated for every chunk
    of samples.

    ``kind="kronecker"``: the rows of each weight in ``kron`` (an (out, fan_in) matrix W
    flattened row-major) are :math:`R_W = A \otimes B`, row ``o * fan_in + j`` equal to
    :math:`A_o \otimes B_j`, with :math:`A \in \mathbb{R}^{out \times d_1}` and
    :math:`B \in \mathbb{R}^{fan\_in \times d_2}` i.i.d. N(0, 1/d1) and N(0, 1/d2)
    (:func:`kronecker_factors`), drawn from a local generator seeded with ``(seed, the weight's
    offset)``; :math:`E[R_W R_W^\top] = E[A A^\top] \otimes E[B B^\top] = I`, so the kernel stays
    unbiased. :math:`J_W R_W = \mathrm{vec}(A^\top J_W B)` costs
    out·fan_in·d2 + out·d1·d2 per row instead of out·fan_in·d, and R_W takes
    (out d1 + fan_in d2) numbers instead of out·fan_in·d. Every other parameter keeps dense
    Gaussian rows, numbered over those parameters only.

    Args:
        num_params: P.
        dim: d.
        kind: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"``.
        seed: seed of the blocks.
        like: a tensor with the dtype and device of R.
        budget: ``memory_budget_bytes``.
        kron: the Kronecker-projected weights (:func:`kronecker_weights`), used with
            ``kind="kronecker"`` only.

    Raises:
        ValueError: if one block of R does not fit in ``budget``.
    """

    def __init__(
        self,
        num_params: int,
        dim: int,
        kind: str,
        seed: int,
        like: Tensor,
        budget: int,
        kron: Sequence[_KronWeight] = (),
    ) -> None:
        self.num_params, self.dim, self.kind, self.seed = num_params, dim, kind, seed
        self.dtype, self.device = like.dtype, like.device
        self.kron = {w.start: w for w in kron} if kind == "kronecker" else {}
        self.d1, self.d2 = kronecker_factors(dim)
        self._factors: dict[int, tuple[Tensor, Tensor]] = {}
        self.segments = self._layout()
        self.num_dense = num_params - sum(w.stop - w.start for w in self.kron.values())
        itemsize = like.element_size()
        block_bytes = min(_PROJECTION_BLOCK_ROWS, self.num_dense) * dim * itemsize
        if block_bytes > budget:
            raise ValueError(
                f"`memory_budget_bytes` must hold one {_PROJECTION_BLOCK_ROWS} x {dim} projection "
                f"block ({block_bytes} bytes); got {budget}. Increase it or lower `projection_dim`."
            )
        self.cached: Tensor | None = None
        if self.num_dense * dim * itemsize <= budget:
            self.cached = torch.empty(self.num_dense, dim, dtype=self.dtype, device=self.device)
            for b, block in enumerate(self._blocks()):  # filled in place: no 2x peak from a cat
                start = b * _PROJECTION_BLOCK_ROWS
                self.cached[start : start + block.shape[0]] = block

    def _layout(self) -> list[tuple[int, int, int | None]]:
        """Return the row segments of R: ``(start, stop, first dense row or None if Kronecker)``.

        Returns:
            Segments covering rows 0 to P in order.
        """
        segments: list[tuple[int, int, int | None]] = []
        row, dense = 0, 0
        for w in sorted(self.kron.values(), key=lambda w: w.start):
            if w.start > row:
                segments.append((row, w.start, dense))
                dense += w.start - row
            segments.append((w.start, w.stop, None))
            row = w.stop
        if row < self.num_params:
            segments.append((row, self.num_params, dense))
        return segments

    def kron_at(self, start: int) -> _KronWeight | None:
        """Return the Kronecker-projected weight whose rows begin at ``start``, or None.

        Args:
            start: a parameter's offset.

        Returns:
            The weight, or None when that parameter has dense rows.
        """
        return self.kron.get(start)

    def factors(self, weight: _KronWeight) -> tuple[Tensor, Tensor]:
        """Return :math:`(A, B)` of a Kronecker-projected weight (generated once, then kept).

        Args:
            weight: the weight.

        Returns:
            A (out, d1) and B (fan_in, d2), in R's dtype and device.
        """
        if weight.start not in self._factors:
            gen = torch.Generator().manual_seed(
                int(self.seed) * 1_000_003 + _KRON_SEED_OFFSET + weight.start
            )
            a = torch.randn(weight.out, self.d1, generator=gen, dtype=torch.float64)
            b = torch.randn(weight.fan_in, self.d2, generator=gen, dtype=torch.float64)
            self._factors[weight.start] = (
                (a / math.sqrt(self.d1)).to(device=self.device, dtype=self.dtype),
                (b / math.sqrt(self.d2)).to(device=self.device, dtype=self.dtype),
            )
        return self._factors[weight.start]

    def kron_apply(self, jac: Tensor, weight: _KronWeight) -> Tensor:
        r"""Return ``jac @ R_W`` as :math:`\mathrm{vec}(A^\top J B)`, never forming R_W.

        Args:
            jac: (..., out·fan_in) Jacobian columns of the weight.
            weight: the weight.

        Returns:
            (..., d) projected columns.
        """
        a, b = self.factors(weight)
        mat = jac.reshape(*jac.shape[:-1], weight.out, weight.fan_in)
        return (a.T @ (mat @ b)).flatten(-2)

    def _kron_rows(self, weight: _KronWeight, r0: int, r1: int) -> Tensor:
        r"""Return rows ``r0:r1`` of :math:`A \otimes B` (row o·fan_in + j is A_o ⊗ B_j).

        Args:
            weight: the weight.
            r0: first row, relative to the weight.
            r1: one past the last row.

        Returns:
            (r1 - r0, d) rows.
        """
        a, b = self.factors(weight)
        idx = torch.arange(r0, r1, device=self.device)
        rows_a, rows_b = a[idx // weight.fan_in], b[idx % weight.fan_in]
        return (rows_a[:, :, None] * rows_b[:, None, :]).flatten(1)

    def _block(self, b: int) -> Tensor:
        """Return block ``b`` of the dense rows (dense rows ``1024 b`` to ``1024 (b + 1)``).

        Args:
            b: block index.

        Returns:
            (rows, d) block in R's dtype and device.
        """
        start = b * _PROJECTION_BLOCK_ROWS
        rows = min(_PROJECTION_BLOCK_ROWS, self.num_dense - start)
        gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + b)
        if self.kind == "rademacher":
            block = torch.randint(0, 2, (rows, self.dim), generator=gen).double() * 2 - 1
        else:
            block = torch.randn(rows, self.dim, generator=gen, dtype=torch.float64)
        return (block * (1.0 / math.sqrt(self.dim))).to(device=self.device, dtype=self.dtype)

    def _blocks(self) -> Iterator[Tensor]:
        """Yield the blocks of the dense rows in order.

        Yields:
            (rows, d) blocks.
        """
        for b in range(math.ceil(self.num_dense / _PROJECTION_BLOCK_ROWS)):
            yield self._block(b)

    def _dense_rows(self, start: int, stop: int) -> Tensor:
        """Return dense rows ``start:stop`` (numbered over the dense parameters only).

        Args:
            start: first dense row.
            stop: one past the last.

        Returns:
            (stop - start, d) rows.
        """
        if self.cached is not None:
            return self.cached[start:stop]
        first, last = start // _PROJECTION_BLOCK_ROWS, (stop - 1) // _PROJECTION_BLOCK_ROWS
        part = torch.cat([self._block(b) for b in range(first, last + 1)], 0)
        base = first * _PROJECTION_BLOCK_ROWS
        return part[start - base : stop - base]

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int | None]]:
        """Yield the parts of rows ``start:stop`` within one segment each.

        Args:
            start: first row.
            stop: one past the last row.

        Yields:
            ``(lo, hi, segment start)`` for dense parts as ``(lo, hi, dense row of lo)``, for
            Kronecker parts as ``(lo, hi, None)``.
        """
        for s0, s1, dense in self.segments:
            lo, hi = max(start, s0), min(stop, s1)
            if lo < hi:
                yield lo, hi, None if dense is None else dense + lo - s0

    def _weight_of(self, row: int) -> _KronWeight:
        """Return the Kronecker-projected weight that holds ``row``.

        Args:
            row: a row of R inside a Kronecker segment.

        Returns:
            The weight.
        """
        return next(w for w in self.kron.values() if w.start <= row < w.stop)

    def rows(self, start: int, stop: int) -> Tensor:
        """Return rows ``start:stop`` of R: the rows applied to those Jacobian columns.

        Args:
            start: first row.
            stop: one past the last row.

        Returns:
            (stop - start, d) rows (Kronecker rows materialized).
        """
        parts = []
        for lo, hi, dense in self._pieces(start, stop):
            if dense is not None:
                parts.append(self._dense_rows(dense, dense + hi - lo))
            else:
                w = self._weight_of(lo)
                parts.append(self._kron_rows(w, lo - w.start, hi - w.start))
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)

    def _apply_dense(self, jac: Tensor, dense: int, out: Tensor) -> None:
        """Add ``jac @ dense rows`` to ``out``, block by block when R is not cached.

        Args:
            jac: (..., m) Jacobian columns of m consecutive dense rows.
            dense: their first dense row.
            out: (..., d) accumulator.
        """
        m = jac.shape[-1]
        if self.cached is not None:
            out += jac @ self.cached[dense : dense + m]
            return
        for b in range(
            dense // _PROJECTION_BLOCK_ROWS, (dense + m - 1) // _PROJECTION_BLOCK_ROWS + 1
        ):
            b0 = b * _PROJECTION_BLOCK_ROWS
            lo, hi = max(dense, b0), min(dense + m, b0 + _PROJECTION_BLOCK_ROWS)
            out += jac[..., lo - dense : hi - dense] @ self._block(b)[lo - b0 : hi - b0]

    def __call__(self, jac: Tensor) -> Tensor:
        """Return ``jac @ R`` (Kronecker-projected weights as :meth:`kron_apply`).

        Args:
            jac: (..., P) Jacobians.

        Returns:
            (..., d) projected Jacobians.
        """
        if not self.kron and self.cached is not None:
            return jac @ self.cached
        out = jac.new_zeros(*jac.shape[:-1], self.dim)
        for lo, hi, dense in self._pieces(0, self.num_params):
            if dense is not None:
                self._apply_dense(jac[..., lo:hi], dense, out)
            else:
                out += self.kron_apply(jac[..., lo:hi], self.kron[lo])
        return out


@dataclass(frozen=True)
class _Options:
    """Settings shared by every implementation.

    Attributes:
        projector: the random projection, or None for exact Jacobians.
        chunk_size: samples per vmap call, or None for :func:`_auto_chunk`.
        budget: ``memory_budget_bytes``.
        output_fn: maps the model's raw output to the linearized outputs, or None.
        progress: called as ``progress("jacobians", n)`` after each chunk of n samples, or None
            (a caller's progress display; nothing here prints).
    """

    projector: _Projector | None
    chunk_size: int | None
    budget: int
    output_fn: OutputFn | None
    progress: ProgressHook | None = None


def _dense_gram(a: Tensor, b: Tensor, kernel: str) -> Tensor:
    """Return the float64 kernel block between (na, K, D) and (nb, K, D) Jacobians.

    Args:
        a: (na, K, D) Jacobians or projected features.
        b: (nb, K, D); ``b is a`` reuses the float64 copy of ``a``.
        kernel: ``"full"`` (na K x nb K, sample-major) or ``"trace"`` (na x nb).

    Returns:
        The float64 block.
    """
    a64 = a.double()
    b64 = a64 if b is a else b.double()
    if kernel == "trace":
        return a64.flatten(1) @ b64.flatten(1).T
    return a64.flatten(0, 1) @ b64.flatten(0, 1).T


class _KernelChunk(Protocol):
    """What kernels are built from for a chunk of samples (dense or factored Jacobians)."""

    def __len__(self) -> int:
        """Return the number of samples in the chunk."""
        ...

    def gram(self, other: Any, kernel: str) -> Tensor:
        """Return the float64 kernel block between this chunk and ``other`` (same type)."""
        ...


@dataclass(frozen=True)
class _DenseChunk:
    """(n, K, D) Jacobians (D = P) or projected features (D = d) of a chunk of samples."""

    jac: Tensor

    def __len__(self) -> int:
        """Return the number of samples."""
        return self.jac.shape[0]

    def gram(self, other: _DenseChunk, kernel: str) -> Tensor:
        """Return the float64 kernel block (see :func:`_dense_gram`).

        Args:
            other: the chunk of the second argument of the kernel.
            kernel: ``"full"`` or ``"trace"``.

        Returns:
            The block.
        """
        return _dense_gram(self.jac, other.jac, kernel)

    @staticmethod
    def cat(chunks: list[_DenseChunk]) -> _DenseChunk:
        """Concatenate chunks along the samples.

        Args:
            chunks: chunks in sample order.

        Returns:
            One chunk.
        """
        return _DenseChunk(torch.cat([c.jac for c in chunks], 0))


class _Linearization(ABC):
    """Streams the (projected) per-sample Jacobians of one model in chunks of samples.

    Subclasses are complete after ``__init__``; build them with their ``build`` class method,
    which probes the model once. Every chunk is computed in eval mode.

    Args:
        model: the network.
        selection: the differentiated parameters.
        num_outputs: K.
        options: projection, chunking, budget and ``output_fn``.
    """

    def __init__(
        self, model: nn.Module, selection: _Selection, num_outputs: int, options: _Options
    ) -> None:
        self.model = model
        self.selection = selection
        self.num_outputs = num_outputs
        self.options = options
        self.projector = options.projector
        self.itemsize = selection.like.element_size()

    @property
    @abstractmethod
    def explicit_columns(self) -> int:
        """Jacobian columns a vmap call materializes per output and sample."""

    @abstractmethod
    def per_sample_bytes(self) -> int:
        """Return the bytes of one sample's kernel inputs."""

    @abstractmethod
    def jacobian(self, x: Tensor) -> Tensor:
        """Return the (n, K, P) Jacobians or (n, K, d) projected features of one chunk."""

    @abstractmethod
    def kernel_input(self, x: Tensor) -> _KernelChunk:
        """Return what the kernel of one chunk is built from."""

    def chunk_for(self) -> int:
        """Return the samples per vmap call: ``chunk_size`` or sized from the budget.

        Returns:
            The chunk size.
        """
        if self.options.chunk_size is not None:
            return self.options.chunk_size
        return _auto_chunk(
            self.num_outputs, self.explicit_columns, self.itemsize, self.options.budget
        )

    def map_chunks(self, inputs: Tensor, fn: Callable[[Tensor], _T]) -> Iterator[tuple[int, _T]]:
        """Apply ``fn`` to chunks of ``inputs`` in eval mode.

        Args:
            inputs: (N, ...) inputs.
            fn: per-chunk function, e.g. :meth:`kernel_input`.

        Yields:
            ``(start, fn(inputs[start : start + chunk]))``.
        """
        step = self.chunk_for()
        with _eval_mode(self.model):
            for start in range(0, inputs.shape[0], step):
                out = fn(inputs[start : start + step])
                if self.options.progress is not None:
                    self.options.progress("jacobians", min(step, inputs.shape[0] - start))
                yield start, out

    def features(self, inputs: Tensor) -> Tensor:
        """Return the (N, K, P) Jacobians or (N, K, d) projected features of ``inputs``.

        Args:
            inputs: (N, ...) inputs.

        Returns:
            The detached features.
        """
        return torch.cat([j.detach() for _, j in self.map_chunks(inputs, self.jacobian)], 0)

    def kernel_inputs(self, inputs: Tensor) -> _KernelChunk:
        """Return the kernel inputs of all of ``inputs`` as one chunk.

        Args:
            inputs: (N, ...) inputs.

        Returns:
            The concatenated chunk.
        """
        chunks = [c for _, c in self.map_chunks(inputs, self.kernel_input)]
        return type(chunks[0]).cat(chunks)


def _vmap_incompatible(model: nn.Module) -> list[str]:
    """Return the names of the submodules that ``torch.func.vmap`` cannot evaluate.

    Args:
        model: the network.

    Returns:
        The names (``type`` for the root module), in ``model.named_modules()`` order; empty when
        ``vmap`` is expected to work.
    """
    return [
        name or type(module).__name__
        for name, module in model.named_modules()
        if isinstance(module, _VMAP_INCOMPATIBLE)
    ]


@contextmanager
def _cudnn_disabled(disable: bool) -> Iterator[None]:
    """Switch cuDNN off inside the block when ``disable`` (restoring the previous setting).

    Args:
        disable: whether to switch it off; False leaves everything as it is.

    Yields:
        Nothing.
    """
    previous = torch.backends.cudnn.enabled
    if disable:
        torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = previous


def _stack_samples(results: list[Any]) -> Any:
    """Stack per-sample results (tensors, dicts and tuples of them) along a new first dimension.

    Args:
        results: one result per sample, all with the same structure.

    Returns:
        The structure of one result, each tensor stacked: what ``vmap(..., out_dims=0)`` returns.
    """
    first = results[0]
    if isinstance(first, Tensor):
        return torch.stack(results)
    if isinstance(first, dict):
        return {key: _stack_samples([r[key] for r in results]) for key in first}
    return type(first)(_stack_samples(list(parts)) for parts in zip(*results))


class _SampleMap:
    """``fn`` mapped over the samples of a chunk: one ``vmap`` call, or a loop over samples.

    ``fn`` evaluates one sample (e.g. ``jacrev`` of a single-sample ``functional_call``); the
    arguments with ``in_dims`` 0 are mapped over their first dimension, those with None are
    shared, as in ``vmap``. The result is stacked along a new first dimension either way, so both
    routes return the same numbers (each sample's Jacobian is exact). The loop is used

    * for models with a module of :data:`_VMAP_INCOMPATIBLE` (``nn.RNN``, ``nn.LSTM``,
      ``nn.GRU`` and their cells), decided up front and noted once per process on this module's
      logger (``logging.INFO``);
    * as a safety net when ``vmap`` raises a ``RuntimeError`` on a model not listed there: the
      chunk is recomputed one sample at a time, and if that works the loop is kept and a
      ``UserWarning`` says so; if the loop fails as well, the original ``vmap`` error is raised
      (an error unrelated to ``vmap`` is not hidden). A random operation in the forward pass
      (``vmap``'s randomness error) is raised as it is, never looped: the loop would draw from
      the global random number generator.

    On the recurrent route, cuDNN is switched off for the duration of each chunk (and restored):
    cuDNN's RNN backward refuses to run in eval mode ("cudnn RNN backward can only be called in
    training mode"), and the model is evaluated in eval mode; PyTorch's native RNN kernels are
    used instead (the same function, CUDA only; nothing changes on CPU).

    The loop costs one ``jacrev`` call per sample instead of one per chunk (slower, same memory
    per chunk: the stacked result is what ``vmap`` returns).

    Args:
        fn: the single-sample function.
        in_dims: per argument, 0 (mapped over its first dimension) or None (shared).
        model: the network, checked for :data:`_VMAP_INCOMPATIBLE` modules.
    """

    def __init__(
        self, fn: Callable[..., Any], in_dims: tuple[int | None, ...], model: nn.Module
    ) -> None:
        self.fn = fn
        self.in_dims = in_dims
        self._vmapped = vmap(fn, in_dims=in_dims)
        incompatible = _vmap_incompatible(model)
        self.recurrent = bool(incompatible)
        self.loop = self.recurrent
        kinds = sorted(
            {type(m).__name__ for m in model.modules() if isinstance(m, _VMAP_INCOMPATIBLE)}
        )
        new = [k for k in kinds if k not in _NOTED]
        if new:
            _NOTED.update(new)
            _LOG.info(
                "Per-sample Jacobians of a model with %s (%s): torch.func.vmap cannot evaluate "
                "recurrent layers, so they are computed one sample at a time (exact, slower).",
                ", ".join(new),
                ", ".join(incompatible),
            )

    def _looped(self, *args: Any) -> Any:
        """Return ``fn`` of each sample, stacked.

        Args:
            *args: the arguments, the mapped ones with the n samples first.

        Returns:
            The stacked results.
        """
        n = next(a.shape[0] for a, d in zip(args, self.in_dims) if d is not None)
        with _cudnn_disabled(self.recurrent):
            return _stack_samples(
                [
                    self.fn(*(a if d is None else a[i] for a, d in zip(args, self.in_dims)))
                    for i in range(n)
                ]
            )

    def __call__(self, *args: Any) -> Any:
        """Return the stacked per-sample results of one chunk.

        Args:
            *args: the arguments, the mapped ones with the n samples first.

        Returns:
            What ``vmap(fn)`` returns: every output with the samples as first dimension.

        Raises:
            RuntimeError: the ``vmap`` error, when the sample loop fails as well or the model
                draws random numbers.
        """
        if self.loop:
            return self._looped(*args)
        try:
            return self._vmapped(*args)
        except RuntimeError as err:
            if "randomness" in str(err):
                raise  # a loop would draw from the global RNG: the model is not a function
            try:
                out = self._looped(*args)
            except Exception:
                raise err from None
            self.loop = True
            warnings.warn(
                f"torch.func.vmap could not evaluate the model ({type(err).__name__}: {err}); "
                "per-sample Jacobians are computed one sample at a time instead (exact, slower).",
                UserWarning,
                stacklevel=2,
            )
            return out
