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

Two implementations, chosen with ``form=`` (:class:`~lightning_info.utilities.enums.JacobianForm`)
through the dict ``_FORM_TO_LINEARIZATION``, one module each:

* ``"explicit"`` (:mod:`~lightning_info.functional._jacobian_explicit`): ``vmap(jacrev)``
  Jacobians of every selected parameter, optionally randomly projected (``docs/sui.md`` §8.2);
* ``"structured"`` (default, :mod:`~lightning_info.functional._jacobian_structured`): for plain
  ``nn.Linear`` layers the weight Jacobian of output k is :math:`g_k a^\top`, so kernels and
  projected features are built from the small factors and the (K, out x in) block is never
  formed (``docs/sui.md`` §8.4); convolutions, BatchNorm / LayerNorm affine parameters,
  embeddings and ``nn.Linear`` on sequences get their Jacobian blocks in closed form from their
  inputs and output gradients (:mod:`~lightning_info.functional._jacobian_layers`); every other
  parameter uses explicit Jacobians.

Each implementation is built complete by its ``build`` class method, which probes the model
(output count K and, for ``"structured"``, which layers qualify). The
functions under ``torch.func`` transforms only read their arguments and frozen closures (see the
implementation modules).

``output_fn`` maps whatever the model returns (a tuple, a dict, a Hugging Face-style output
object) to the (B,) or (B, K) tensor that is linearized; it is applied inside the single-sample
function under ``vmap`` as well.

Models with recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells), which
``torch.func.vmap`` cannot evaluate, get the same exact Jacobians one sample at a time (slower);
so does, with a warning, any model on which ``vmap`` raises a ``RuntimeError`` that a plain
per-sample evaluation does not.

The model is always evaluated in eval mode (BatchNorm uses its running statistics, dropout is
off), so the function is a deterministic function of the parameters; its previous train/eval
state is restored afterwards. Models whose forward pass depends on other samples of the batch
(BatchNorm in *train* mode) are therefore linearized in their eval form.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_info.functional._jacobian_common import (
    _DEFAULT_BUDGET,
    NTKKind,
    OutputFn,
    ParamSelection,
    ProgressHook,
    ProjectionType,
    _check_inputs,
    _check_output_fn,
    _check_projection,
    _DenseChunk,
    _eval_mode,
    _KernelChunk,
    _Linearization,
    _Options,
    _probe_num_outputs,
    _Projector,
    _select_outputs,
    _Selection,
    kronecker_weights,
)
from lightning_info.functional._jacobian_common import (
    _check_outputs as _check_outputs,  # re-exported: imported by functional/sui.py
)
from lightning_info.functional._jacobian_explicit import _ExplicitLinearization
from lightning_info.functional._jacobian_structured import _StructuredLinearization
from lightning_info.utilities.checks import _check_choice, _check_int
from lightning_info.utilities.enums import JacobianForm

__all__ = [
    "empirical_ntk",
    "jacobian_features",
    "kernel_from_features",
    "model_outputs",
    "per_sample_jacobians",
]

_FORM_TO_LINEARIZATION: dict[
    JacobianForm, Callable[[nn.Module, Tensor, _Selection, _Options], _Linearization]
] = {
    JacobianForm.EXPLICIT: _ExplicitLinearization.build,
    JacobianForm.STRUCTURED: _StructuredLinearization.build,
}
_FORMS = tuple(f.value for f in JacobianForm)


def _check_form(form: JacobianForm | str) -> JacobianForm:
    """Return ``form`` as a :class:`JacobianForm`.

    Args:
        form: a :class:`JacobianForm` or its string value.

    Returns:
        The enum member.

    Raises:
        TypeError: if ``form`` is not a string.
        ValueError: if it names no form.
    """
    if not isinstance(form, str):
        raise TypeError(
            f"`form` must be a JacobianForm or one of {', '.join(map(repr, _FORMS))}; got "
            f"{type(form).__name__} {form!r}."
        )
    try:
        return JacobianForm(form)
    except ValueError:
        raise ValueError(
            f"`form` must be one of {', '.join(map(repr, _FORMS))}; got {form!r}."
        ) from None


def _check_budget(value: int) -> int:
    """Return ``memory_budget_bytes`` as an int >= 1.

    Args:
        value: the argument.

    Returns:
        The budget.
    """
    return int(_check_int(value, "memory_budget_bytes", minimum=1))


_PROBE_SEED_OFFSET = 2**40  # the probes' generator stream, apart from the projection's blocks


def _probed_output_fn(
    output_fn: OutputFn | None, num_outputs: int, num_probes: int, seed: int, like: Tensor
) -> OutputFn:
    r"""Return an ``output_fn`` giving :math:`V f(x)`: ``num_probes`` random combinations of outputs.

    :math:`V \in \mathbb{R}^{s \times K}` has i.i.d. Rademacher entries scaled by
    :math:`1/\sqrt{s}`, drawn from a local generator seeded by ``seed`` (no global RNG draw), and
    is the same for every sample and call. Since :math:`E[V^\top V] = I_K`,

    .. math::

        E\Big[\sum_{r=1}^{s} (V J(x))_r (V J(x'))_r^\top\Big]
        = \sum_{k=1}^{K} J_k(x) J_k(x')^\top = \Theta_\mathrm{trace}(x, x'),

    an unbiased estimate of the trace NTK from s instead of K output gradients per sample (the
    Hutchinson trick over outputs); its error comes from the cross-output blocks
    :math:`J_k(x) J_l(x')^\top`, k ≠ l, and falls like :math:`1/\sqrt{s}`.

    Args:
        output_fn: the user's ``output_fn``, or None.
        num_outputs: K.
        num_probes: s < K.
        seed: seed of V.
        like: a tensor with the dtype and device of V.

    Returns:
        The composed ``output_fn``: (B, s) outputs.
    """
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + _PROBE_SEED_OFFSET)
    signs = torch.randint(0, 2, (num_probes, num_outputs), generator=gen).double() * 2 - 1
    v_t = (signs / math.sqrt(num_probes)).T.to(dtype=like.dtype, device=like.device)

    def probed(raw: object) -> Tensor:
        out = raw if output_fn is None else output_fn(raw)
        return out.reshape(out.shape[0], -1) @ v_t

    return probed


def _linearize(
    model: nn.Module,
    probe: Tensor,
    *,
    form: JacobianForm | str,
    params: ParamSelection,
    chunk_size: int | None,
    projection_dim: int | None = None,
    projection: str = "gaussian",
    seed: int = 0,
    budget: int = _DEFAULT_BUDGET,
    output_fn: OutputFn | None = None,
    progress: ProgressHook | None = None,
    output_probes: int | None = None,
) -> _Linearization:
    """Validate the options and build the implementation of ``form`` (probes the model once).

    Args:
        model: the network.
        probe: (N, ...) inputs; the first sample is evaluated once.
        form: ``"explicit"`` or ``"structured"``.
        params: parameter selection.
        chunk_size: samples per vmap call, or None.
        projection_dim: d, or None.
        projection: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"``.
        seed: seed of the projection.
        budget: ``memory_budget_bytes``.
        output_fn: maps the model's raw output to the linearized outputs, or None.
        progress: ``(stage, amount)`` observer of the work done, or None.
        output_probes: s random output combinations instead of the K outputs (see
            :func:`_probed_output_fn`; only when s < K), or None.

    Returns:
        A complete linearization.
    """
    selection = _Selection.of(model, params)
    chunk_size = _check_int(chunk_size, "chunk_size", minimum=1, allow_none=True)
    form = _check_form(form)
    output_fn = _check_output_fn(output_fn)
    probes = _check_int(output_probes, "output_probes", minimum=1, allow_none=True)
    if probes is not None:
        num_outputs = _probe_num_outputs(model, probe, output_fn)
        if probes < num_outputs:
            output_fn = _probed_output_fn(output_fn, num_outputs, probes, seed, selection.like)
    projector = None
    if projection_dim is not None:
        d = _check_int(projection_dim, "projection_dim", minimum=1)
        kind = _check_projection(projection, d)
        kron = kronecker_weights(model, selection) if kind == "kronecker" else ()
        projector = _Projector(
            selection.num_params, d, kind, seed, selection.like, budget, kron=kron
        )
    options = _Options(projector, chunk_size, budget, output_fn, progress)
    return _FORM_TO_LINEARIZATION[form](model, probe, selection, options)


#: Samples per forward pass of :func:`model_outputs` by default. One pass over all samples
#: (the previous default) took 17 GB of activations for a ResNet-20 on 50,000 images.
OUTPUT_CHUNK = 1024


@torch.no_grad()
def model_outputs(
    model: nn.Module,
    inputs: Tensor,
    chunk_size: int | None = None,
    *,
    output_fn: OutputFn | None = None,
) -> Tensor:
    """Evaluate ``model`` in eval mode and return its outputs as an (N, K) tensor.

    The train/eval state of every submodule is restored afterwards. A model returning shape
    (N,) is treated as K = 1. The forward passes run without autograd and in chunks, so memory
    is bounded by one chunk's activations whatever N.

    Args:
        model: the network; must return one tensor of shape (B,) or (B, K), unless
            ``output_fn`` is given.
        inputs: (N, ...) inputs.
        chunk_size: samples per forward pass (default :data:`OUTPUT_CHUNK`, 1024).
        output_fn: maps the model's raw output (a tuple, a dict, an output object) to the
            (B,) or (B, K) tensor, e.g. ``lambda out: out["logits"]``; None if the model returns
            that tensor.

    Returns:
        (N, K) outputs, in the model's dtype.

    Raises:
        ValueError: if the outputs are not a tensor of shape (B,) or (B, K) (the message says to
            pass ``output_fn=`` when the model returns a tuple or a dict), or ``chunk_size`` < 1.
        TypeError: if ``inputs`` is not a tensor or ``output_fn`` is not callable.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model_outputs(torch.nn.Linear(3, 2), torch.ones(4, 3)).shape
        torch.Size([4, 2])
    """  # noqa: DOC502 (errors raised by the shared checks are documented here)
    inputs = _check_inputs(inputs, "inputs")
    output_fn = _check_output_fn(output_fn)
    n = inputs.shape[0]
    step = _check_int(chunk_size, "chunk_size", minimum=1, allow_none=True) or OUTPUT_CHUNK
    outs = []
    with _eval_mode(model):
        for start in range(0, n, step):
            x = inputs[start : start + step]
            outs.append(_select_outputs(model(x), output_fn, x.shape[0]))
    return torch.cat(outs, 0)


def per_sample_jacobians(
    model: nn.Module,
    inputs: Tensor,
    *,
    params: ParamSelection = None,
    chunk_size: int | None = None,
    output_fn: OutputFn | None = None,
) -> Tensor:
    r"""Compute the Jacobian of every sample's K outputs with respect to the parameters.

    Harutyunyan et al. (2021, arXiv:2101.06640, §3) linearize the network with these Jacobians:

    .. math::

        J(x_i)_{k p} = \frac{\partial f_k(x_i; w_0)}{\partial w_p}.

    Computed with ``torch.func.vmap(jacrev(...))`` over a single-sample ``functional_call``
    (buffers passed through), in eval mode, in chunks of ``chunk_size`` samples.

    Args:
        model: network returning (B,) or (B, K) outputs (or anything ``output_fn`` maps to them).
        inputs: (N, ...) inputs.
        params: which parameters to differentiate: ``None`` (all with ``requires_grad``), a name
            prefix (``"fc2"``) or a list of names/prefixes. The rest are held fixed.
        chunk_size: samples per vmap call (default: chosen so a chunk is about 256 MiB).
        output_fn: maps the model's raw output to the (B,) or (B, K) tensor that is linearized,
            e.g. ``lambda out: out[0]``; applied inside the single-sample function under vmap.

    Returns:
        (N, K, P) Jacobians, parameters flattened in ``model.named_parameters()`` order.

    Raises:
        ValueError: unsupported model outputs (a tuple or dict without ``output_fn``), an empty
            parameter selection, ``chunk_size`` < 1.
        TypeError: if ``inputs`` is not a tensor or ``output_fn`` is not callable.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> per_sample_jacobians(torch.nn.Linear(3, 2), torch.ones(4, 3)).shape
        torch.Size([4, 2, 8])
    """  # noqa: DOC502 (errors raised by the shared checks are documented here)
    inputs = _check_inputs(inputs, "inputs")
    lin = _linearize(
        model,
        inputs,
        form=JacobianForm.EXPLICIT,
        params=params,
        chunk_size=chunk_size,
        output_fn=output_fn,
    )
    return lin.features(inputs)


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
    form: JacobianForm | str = "structured",
    output_fn: OutputFn | None = None,
    progress: ProgressHook | None = None,
    output_probes: int | None = None,
) -> Tensor:
    r"""Return (randomly projected) per-sample Jacobian features for the feature-space path.

    With a seeded random matrix :math:`R \in \mathbb{R}^{P \times d}`,
    :math:`E[R R^\top] = I` (Gaussian N(0, 1/d) or Rademacher ±1/sqrt(d) entries),

    .. math::

        \Phi(x_i) = J(x_i) R \in \mathbb{R}^{K \times d}, \qquad
        \Phi \Phi^\top \approx J J^\top = \Theta,

    so the projected kernel is an unbiased estimate of the empirical NTK (a Johnson-Lindenstrauss
    sketch; the relative error falls like :math:`1/\sqrt{d}`; ``docs/sui.md`` §8.2). ``R`` is
    generated in blocks of 1024 rows from local generators seeded by ``(seed, block)``: identical
    on every call, never materialized beyond ``memory_budget_bytes``. ``projection_dim=None``
    returns the exact Jacobians (P features).

    ``projection="kronecker"`` (Kronecker-factored, as LoGra, Choe et al. 2024): the rows of each
    selected ``nn.Conv2d`` / ``nn.Linear`` weight, an (out, fan_in) matrix flattened row-major
    (fan_in = C·kh·kw or in_features), are :math:`R_W = A \otimes B` with
    :math:`A \in \mathbb{R}^{out \times d_1}`, :math:`B \in \mathbb{R}^{fan\_in \times d_2}`
    i.i.d. N(0, 1/d1) and N(0, 1/d2), d = d1·d2 and d1 the largest divisor of d that is
    <= sqrt(d) (512 = 16 x 32; d must allow d1 >= 4, e.g. a power of two >= 16), drawn from
    local generators seeded by ``(seed, the weight's offset)``. :math:`E[R_W R_W^\top] = I`, so
    the kernel stays unbiased; every other parameter (biases, norms, embeddings) keeps dense
    Gaussian rows. For a layer whose weight is shared by L positions (pixels of a convolution,
    tokens of a sequence) with output gradients :math:`g_k` (out x L) and inputs U (L x fan_in,
    unfolded for a convolution), :math:`J_k R_W = \mathrm{vec}((A^\top g_k)(U B))`: the
    structured form costs L·fan_in·d2 + K·L·d1·(out + d2) per sample and layer (or the other
    association when cheaper) and never forms the (K, out·fan_in) Jacobian block nor the
    P x d matrix (R_W holds out·d1 + fan_in·d2 numbers). The explicit form applies the same R.
    The price is variance: at the same d the kernel error is larger than with a dense Gaussian
    R (measured on ResNet-20 in ``benchmarks/RESULTS.md`` §11.1).

    Args:
        model: network returning (B,) or (B, K) outputs (or anything ``output_fn`` maps to them).
        inputs: (N, ...) inputs.
        params: parameter selection (see :func:`per_sample_jacobians`).
        projection_dim: d, or None for no projection.
        projection: ``"gaussian"`` (default), ``"rademacher"`` or ``"kronecker"`` (see above).
        seed: seed of the projection.
        chunk_size: samples per vmap call.
        memory_budget_bytes: bound on the projection matrix / Jacobian chunk memory.
        form: ``"structured"`` (default) or ``"explicit"``, or a
            :class:`~lightning_info.utilities.enums.JacobianForm` (``docs/sui.md`` §8.4). With
            ``"structured"``, for :math:`h = W a + b`, :math:`\partial f_k/\partial W = g_k a^\top`,
            so a Linear layer's projected features are :math:`g_k (a^\top R_W + R_b)`; its
            (K, out x in) Jacobian is never formed. ``nn.Conv2d`` (``groups=1``, zero
            padding), BatchNorm (eval, running statistics) and ``nn.LayerNorm`` affine
            parameters, ``nn.Embedding`` and ``nn.Linear`` on sequences get their Jacobian
            blocks in closed form from their inputs and output gradients (one batched product
            per layer, no parameter Jacobian from autograd). Exact up to rounding. Applies to
            layers called once per forward on batched inputs with no tied parameter; every
            other parameter (e.g. ``nn.MultiheadAttention``'s) falls back to explicit
            Jacobians. Without a projection the explicit Jacobians are returned either way.
        output_fn: maps the model's raw output to the (B,) or (B, K) tensor that is linearized
            (see :func:`per_sample_jacobians`).
        progress: ``progress(stage, amount)`` observer for a progress display (``("jacobians",
            n)`` after each chunk of n samples, ``("kernel", 1)`` after each kernel block), or
            None; nothing here prints.
        output_probes: s < K: the features of s seeded random Rademacher combinations of the
            outputs, :math:`V J(x) R` with :math:`E[V^\top V] = I_K`, instead of the K outputs
            (s backward passes per sample instead of K). Summed over their s rows, their kernel
            is an unbiased estimate of the **trace** NTK (not of the full one); None (default)
            or s >= K: the K outputs, exactly.

    Returns:
        (N, K, d) features (or (N, K, P) without projection; K is s with ``output_probes``), in
        the parameters' dtype.

    Raises:
        ValueError: invalid options (an unknown ``projection``, naming the valid ones; under
            ``"kronecker"`` a ``projection_dim`` without a factor d1 >= 4, e.g. a prime),
            unsupported model outputs, a budget too small for one projection block.
        TypeError: if ``inputs`` is not a tensor, ``form`` is not a string or ``output_fn`` is
            not callable.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> jacobian_features(torch.nn.Linear(3, 2), torch.ones(4, 3), projection_dim=5).shape
        torch.Size([4, 2, 5])
        >>> conv = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten())
        >>> jacobian_features(conv, torch.ones(2, 1, 4, 4), projection_dim=16,
        ...                   projection="kronecker").shape
        torch.Size([2, 16, 16])
    """  # noqa: DOC502 (errors raised by the shared checks are documented here)
    inputs = _check_inputs(inputs, "inputs")
    lin = _linearize(
        model,
        inputs,
        form=form,
        params=params,
        chunk_size=chunk_size,
        projection_dim=projection_dim,
        projection=projection,
        seed=seed,
        budget=_check_budget(memory_budget_bytes),
        output_fn=output_fn,
        progress=progress,
        output_probes=output_probes,
    )
    return lin.features(inputs)


def _mirror_lower(kernel: Tensor) -> Tensor:
    """Return the kernel made symmetric by construction: the lower triangle copied to the upper.

    BLAS does not promise a bitwise symmetric ``A @ A.T`` (summation order may differ between
    entry (i, j) and (j, i), and between CPUs), and downstream Cholesky / ``eigh`` treat the
    kernel as symmetric, so every kernel of a set with itself is made exactly symmetric.

    Args:
        kernel: a square kernel whose lower triangle (with the diagonal) is filled.

    Returns:
        The symmetric kernel.
    """
    return torch.tril(kernel) + torch.tril(kernel, -1).T


def _pair_kernel(
    ja: _KernelChunk, jb: _KernelChunk, kernel: str, progress: ProgressHook | None = None
) -> Tensor:
    """Return the float64 kernel block between two chunks of kernel inputs.

    The block of a chunk with itself (``ja is jb``) is exactly symmetric (:func:`_mirror_lower`).

    Args:
        ja: kernel inputs of the first argument.
        jb: kernel inputs of the second argument (same type as ``ja``).
        kernel: ``"full"`` or ``"trace"``.
        progress: called as ``progress("kernel", 1)`` once the block is done, or None.

    Returns:
        (na K, nb K) or (na, nb) block.
    """
    out = ja.gram(jb, kernel)
    if progress is not None:
        progress("kernel", 1)
    return _mirror_lower(out) if ja is jb else out


def kernel_from_features(
    features: Tensor,
    other: Tensor | None = None,
    *,
    ntk: NTKKind = "full",
    progress: ProgressHook | None = None,
) -> Tensor:
    r"""Compute the NTK block between (projected) Jacobian features, accumulated in float64.

    .. math::

        \Theta_\mathrm{full}[(i,k),(j,l)] = \Phi_k(x_i) \cdot \Phi_l(x'_j), \qquad
        \Theta_\mathrm{trace}[i, j] = \sum_k \Phi_k(x_i) \cdot \Phi_k(x'_j).

    The kernel of a set with itself (``other=None``) is symmetric by construction.

    Args:
        features: (N, K, d) features, e.g. from :func:`jacobian_features`.
        other: (M, K, d) features of the second argument, or None for ``features``.
        ntk: which NTK, ``"full"`` (N K x M K, sample-major) or ``"trace"`` (N x M).
        progress: called as ``progress("kernel", 1)`` when done (a caller's progress display),
            or None.

    Returns:
        The float64 kernel.

    Raises:
        ValueError: for an unknown ``ntk``.

    Example:
        >>> phi = torch.eye(3).reshape(3, 1, 3)
        >>> kernel_from_features(phi).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """  # noqa: DOC502 (raised by the shared input checks; documented as the contract)
    ntk = _check_choice(ntk, "ntk", ("full", "trace"))
    first = _DenseChunk(features.detach())  # no result keeps the caller's autograd graph
    other_chunk = first if other is None else _DenseChunk(other.detach())
    return _pair_kernel(first, other_chunk, ntk, progress)


def _streamed_kernel(
    lin: _Linearization, x1: Tensor, x2: Tensor, kernel: str, symmetric: bool
) -> Tensor:
    """Return the kernel accumulated block by block when the kernel inputs exceed the budget.

    Outer blocks of ``x1`` hold half the budget; the kernel inputs of ``x2`` chunks are
    recomputed for every outer block. With ``symmetric`` only the blocks on and below the
    diagonal are computed, then mirrored.

    Args:
        lin: the linearization.
        x1: (N1, ...) inputs.
        x2: (N2, ...) inputs (``x1`` when ``symmetric``).
        kernel: ``"full"`` or ``"trace"``.
        symmetric: whether ``x2`` is ``x1``.

    Returns:
        The float64 kernel.
    """
    n1, n2 = x1.shape[0], x2.shape[0]
    scale = lin.num_outputs if kernel == "full" else 1
    out = torch.zeros(n1 * scale, n2 * scale, dtype=torch.float64, device=x1.device)
    outer = max(1, lin.options.budget // (2 * lin.per_sample_bytes()))
    for a0 in range(0, n1, outer):
        ja = lin.kernel_inputs(x1[a0 : a0 + outer])
        a1 = a0 + len(ja)
        limit = a1 if symmetric else n2
        for b0, jb in lin.map_chunks(x2[:limit], lin.kernel_input):
            b1 = b0 + len(jb)
            block = _pair_kernel(ja, jb, kernel, lin.options.progress)
            out[a0 * scale : a1 * scale, b0 * scale : b1 * scale] = block
    if symmetric:  # every entry on and below the diagonal was filled: mirror it
        out = _mirror_lower(out)
    return out


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Tensor | None = None,
    *,
    params: ParamSelection = None,
    ntk: NTKKind = "full",
    chunk_size: int | None = None,
    projection_dim: int | None = None,
    projection: ProjectionType = "gaussian",
    seed: int = 0,
    memory_budget_bytes: int = _DEFAULT_BUDGET,
    form: JacobianForm | str = "structured",
    output_fn: OutputFn | None = None,
    progress: ProgressHook | None = None,
    output_probes: int | None = None,
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

    Jacobians (or, with ``form="structured"``, their factored form: layer inputs and output
    gradients) are streamed in chunks of samples; when all of them fit in ``memory_budget_bytes``
    they are computed once, otherwise the kernel is accumulated block by block (recomputing the
    Jacobians of ``x2`` chunks; with ``x2=None`` only the blocks on and below the diagonal are
    computed and the result is symmetrized). The budget bounds these stored inputs; the float64
    products add about as much again, and the (N1 K, N2 K) result is not counted. Products are
    accumulated in float64.

    Args:
        model: network returning (B,) or (B, K) outputs (or anything ``output_fn`` maps to them).
        x1: (N1, ...) inputs.
        x2: (N2, ...) inputs, or None for ``x1`` (symmetric fast path).
        params: parameter selection (see :func:`per_sample_jacobians`).
        ntk: which NTK, ``"full"`` (N1 K x N2 K, sample-major) or ``"trace"`` (N1 x N2).
        chunk_size: samples per vmap call.
        projection_dim: if given, use the projected Jacobians of :func:`jacobian_features`.
        projection: ``"gaussian"``, ``"rademacher"`` or ``"kronecker"`` (see
            :func:`jacobian_features`).
        seed: seed of the projection.
        memory_budget_bytes: bound on stored Jacobians / projection blocks (default 1 GiB).
        form: ``"structured"`` (default) or ``"explicit"``, or a
            :class:`~lightning_info.utilities.enums.JacobianForm` (``docs/sui.md`` §8.4). With
            ``"structured"``, for :math:`h = W a + b`, :math:`\partial f_k/\partial W = g_k a^\top`,
            so a Linear layer's kernel is :math:`(G G^\top) \odot (A A^\top + 1)` from the layer
            inputs ``A`` and output gradients ``G``, and its projected features are
            :math:`g_k (a^\top R_W + R_b)`; its (K, out x in) Jacobian is never formed.
            ``nn.Conv2d`` (``groups=1``, zero padding), BatchNorm (eval, running statistics)
            and ``nn.LayerNorm`` affine parameters, ``nn.Embedding`` and ``nn.Linear`` on
            sequences get their Jacobian blocks in closed form from their inputs and output
            gradients. Exact up to rounding. Applies to layers called once per forward on
            batched inputs with no tied parameter; every other parameter (e.g.
            ``nn.MultiheadAttention``'s) falls back to explicit Jacobians.
        output_fn: maps the model's raw output to the (B,) or (B, K) tensor that is linearized
            (see :func:`per_sample_jacobians`).
        progress: ``progress(stage, amount)`` observer for a progress display (``("jacobians",
            n)`` after each chunk of n samples, ``("kernel", 1)`` after each kernel block), or
            None; nothing here prints.
        output_probes: with ``ntk="trace"`` only: s < K seeded random Rademacher combinations
            of the outputs replace the K outputs, giving an unbiased estimate of the trace NTK
            from s output gradients per sample instead of K (see :func:`jacobian_features`);
            None (default) or s >= K: exact.

    Returns:
        float64 kernel of shape (N1*K, N2*K) (``"full"``) or (N1, N2) (``"trace"``).

    Raises:
        ValueError: invalid options (``output_probes`` with ``ntk="full"``) or unsupported
            model outputs.
        TypeError: if an input is not a tensor, ``form`` is not a string or ``output_fn`` is not
            callable.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> ntk = empirical_ntk(torch.nn.Linear(3, 2), torch.eye(3))
        >>> ntk.shape, round(ntk[0, 0].item(), 4), round(ntk[0, 1].item(), 4)
        (torch.Size([6, 6]), 2.0, 0.0)
    """  # noqa: DOC502 (errors raised by the shared checks are documented here)
    x1 = _check_inputs(x1, "x1")
    symmetric = x2 is None
    x2 = x1 if x2 is None else _check_inputs(x2, "x2")
    ntk = _check_choice(ntk, "ntk", ("full", "trace"))
    if output_probes is not None and ntk != "trace":
        raise ValueError(
            f"`output_probes` estimates the trace NTK only; got ntk={ntk!r} with "
            f"output_probes={output_probes!r}. Use ntk='trace' or output_probes=None."
        )
    budget = _check_budget(memory_budget_bytes)
    lin = _linearize(
        model,
        x1,
        form=form,
        params=params,
        chunk_size=chunk_size,
        projection_dim=projection_dim,
        projection=projection,
        seed=seed,
        budget=budget,
        output_fn=output_fn,
        progress=progress,
        output_probes=output_probes,
    )
    needed = lin.per_sample_bytes() * (x1.shape[0] if symmetric else x1.shape[0] + x2.shape[0])
    if needed > budget:
        return _streamed_kernel(lin, x1, x2, ntk, symmetric)
    j1 = lin.kernel_inputs(x1)
    j2 = j1 if symmetric else lin.kernel_inputs(x2)
    return _pair_kernel(j1, j2, ntk, progress)
