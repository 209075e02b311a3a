r"""Explicit per-sample Jacobians with ``torch.func.vmap(jacrev(...))`` (``form="explicit"``).

Harutyunyan et al. (2021, arXiv:2101.06640, §3) linearize the network with the Jacobians

.. math::

    J(x_i)_{k p} = \frac{\partial f_k(x_i; w_0)}{\partial w_p} \in \mathbb{R}^{K \times P},

which this implementation materializes for every selected parameter: K x P numbers per sample,
in chunks of samples, optionally followed by the seeded random projection :math:`J R`
(``docs/sui.md`` §8.2). Kernels are :math:`J J^\top` (``docs/sui.md`` §8.1 for the trace kernel).

Purity under ``torch.func``: the function given to ``vmap(jacrev(...))``
(:func:`_single_sample_fn`) reads only its arguments (the selected parameters and one sample)
and frozen closures (the model, the fixed parameters, the buffers and ``output_fn``); the model
is evaluated with ``functional_call`` and nothing outside the function is written.

Recurrent layers (``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and their cells) cannot run under
``vmap``; for models containing one, the same single-sample ``jacrev`` is applied one sample at a
time (:class:`~lightning_info.functional._jacobian_common._SampleMap`, exact, slower), and so it
is, with a warning, for any model on which ``vmap`` raises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from lightning_info.functional._jacobian_common import (
    OutputFn,
    _DenseChunk,
    _Linearization,
    _Options,
    _output_vector,
    _probe_num_outputs,
    _SampleMap,
    _Selection,
)


def _single_sample_fn(
    model: nn.Module,
    fixed: dict[str, Tensor],
    buffers: dict[str, Tensor],
    output_fn: OutputFn | None,
) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """Return ``fn(selected_params, x) -> (K,)`` evaluating the model on one sample.

    Args:
        model: the network.
        fixed: every parameter that is not differentiated.
        buffers: the model's buffers.
        output_fn: maps the raw output to the linearized outputs, or None.

    Returns:
        A pure function of its arguments (frozen closures only).
    """

    def fn(selected: dict[str, Tensor], x: Tensor) -> Tensor:
        raw = functional_call(model, (selected, fixed, buffers), (x.unsqueeze(0),), strict=False)
        return _output_vector(raw, output_fn)

    return fn


class _ExplicitLinearization(_Linearization):
    """Jacobians of every selected parameter from ``vmap(jacrev)``, projected if asked.

    Args:
        model: the network.
        selection: the differentiated parameters.
        num_outputs: K.
        options: projection, chunking, budget and ``output_fn``.
    """

    def __init__(
        self, model: nn.Module, selection: _Selection, num_outputs: int, options: _Options
    ) -> None:
        super().__init__(model, selection, num_outputs, options)
        self.selected = selection.params(selection.names)
        fn = _single_sample_fn(
            model, selection.fixed(selection.names), selection.buffers, options.output_fn
        )
        self._jac_fn = _SampleMap(jacrev(fn), (None, 0), model)

    @classmethod
    def build(
        cls, model: nn.Module, probe: Tensor, selection: _Selection, options: _Options
    ) -> _ExplicitLinearization:
        """Probe the output count K on one sample and return the linearization.

        Args:
            model: the network.
            probe: (N, ...) inputs; the first sample is evaluated once.
            selection: the differentiated parameters.
            options: projection, chunking, budget and ``output_fn``.

        Returns:
            The complete linearization.
        """
        return cls(model, selection, _probe_num_outputs(model, probe, options.output_fn), options)

    @property
    def explicit_columns(self) -> int:
        """P: every selected parameter's Jacobian is materialized."""
        return self.selection.num_params

    def per_sample_bytes(self) -> int:
        """Return the bytes of one sample's K x P Jacobian (or K x d projected features).

        Returns:
            The bytes.
        """
        dim = self.projector.dim if self.projector is not None else self.selection.num_params
        return self.num_outputs * dim * self.itemsize

    def _explicit_jacobian(self, x: Tensor) -> Tensor:
        """Return the (n, K, P) Jacobians of one chunk (eval mode must be active).

        Args:
            x: (n, ...) inputs.

        Returns:
            Parameters flattened in ``model.named_parameters()`` order.
        """
        grads = self._jac_fn(self.selected, x)
        return torch.cat([grads[n].flatten(2) for n in self.selection.names], dim=2)

    def jacobian(self, x: Tensor) -> Tensor:
        """Return the (n, K, P) Jacobians, or (n, K, d) ``J R``, of one chunk.

        Args:
            x: (n, ...) inputs.

        Returns:
            The features.
        """
        jac = self._explicit_jacobian(x)
        return self.projector(jac) if self.projector is not None else jac

    def kernel_input(self, x: Tensor) -> _DenseChunk:
        """Return the dense (projected) Jacobians of one chunk.

        Args:
            x: (n, ...) inputs.

        Returns:
            The detached chunk.
        """
        return _DenseChunk(self.jacobian(x).detach())
