"""Functional entry points detach their inputs: no result keeps the caller's autograd graph.

Issue 20: ``diffusion_spectral_entropy`` on a ``requires_grad`` input returned a result holding the
input's graph, so memory grew with every result kept (539 -> 1168 MB over 6 results). Each case
below feeds inputs that carry a graph (a non-leaf ``leaf * 1.5``) and checks (a) no returned tensor
has a ``grad_fn`` or requires grad, and (b) once the caller drops its own references, the leaf is
freed even while the results are kept (a kept graph would hold it through ``AccumulateGrad``).
"""

from __future__ import annotations

import dataclasses
import gc
import weakref

import pytest
import torch
from torch import Tensor, nn

from lightning_info.functional import (
    classic_shannon_entropy,
    classic_shannon_mutual_information,
    cluster_reference,
    diffusion_kernel,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    empirical_ntk,
    gaussian_affinity,
    jacobian_features,
    kernel_from_features,
    per_sample_jacobians,
    smooth_unique_information,
    unique_information_from_features,
    unique_information_from_kernels,
    unique_information_with_plan,
)

F64 = torch.float64


def _tensors(result) -> list[Tensor]:
    """Every tensor in a result (a tensor, a tuple/list/dict of them, or a dataclass)."""
    if isinstance(result, Tensor):
        return [result]
    if dataclasses.is_dataclass(result):
        result = [getattr(result, f.name) for f in dataclasses.fields(result)]
    if isinstance(result, dict):
        result = list(result.values())
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _tensors(item)]
    return []


def _graph_input(shape, seed=0):
    """A leaf that requires grad and a non-leaf computed from it (the input carrying a graph)."""
    gen = torch.Generator().manual_seed(seed)
    leaf = torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)
    return leaf, leaf * 1.5


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _kernel_problem(x):
    """(ntk, heldout ntk, f0, targets) with graph-carrying kernels built from ``x``."""
    n = x.shape[0]
    ntk = x @ x.T + 0.1 * torch.eye(n, dtype=F64)
    heldout = x[:3] @ x.T
    f0 = 0.1 * x[:, 0]
    targets = (torch.arange(n) % 2).long()
    return ntk, heldout, f0, targets


CASES = {
    "diffusion_spectral_entropy": lambda x: diffusion_spectral_entropy(x, sigma=2.0),
    "diffusion_spectral_entropy_lanczos": lambda x: diffusion_spectral_entropy(
        x.repeat(60, 1) + 0.01 * torch.arange(60 * x.shape[0], dtype=F64)[:, None],
        sigma=2.0,
        solver="lanczos",
        num_lanczos_probes=2,
        num_lanczos_steps=4,
    ),
    "diffusion_spectral_mutual_information": lambda x: diffusion_spectral_mutual_information(
        x, torch.arange(x.shape[0]) % 2, sigma=2.0, num_repeats=2
    ),
    "dsmi_vector_reference": lambda x: diffusion_spectral_mutual_information(
        x, x[:, :2], sigma=2.0, num_clusters=2, num_repeats=2
    ),
    "dsmi_scalar_reference": lambda x: diffusion_spectral_mutual_information(
        x, x[:, 0], discrete=False, sigma=2.0, num_clusters=2, num_repeats=2
    ),
    "cluster_reference": lambda x: cluster_reference(x, num_clusters=2),
    "gaussian_affinity": lambda x: gaussian_affinity(x, sigma=2.0),
    "diffusion_kernel": lambda x: diffusion_kernel(x, sigma=2.0),
    "classic_shannon_entropy": lambda x: classic_shannon_entropy(x),
    "classic_shannon_mutual_information": lambda x: classic_shannon_mutual_information(
        x, torch.arange(x.shape[0]) % 2
    ),
    "kernel_from_features": lambda x: kernel_from_features(x.reshape(x.shape[0], 1, -1)),
    "unique_information_from_kernels": lambda x: unique_information_from_kernels(
        *_kernel_problem(x), learning_rate=0.1, weight_decay=0.1
    ),
    "unique_information_from_kernels_replay": lambda x: unique_information_from_kernels(
        *_kernel_problem(x), learning_rate=0.1, num_steps=5
    ),
    "unique_information_with_plan": lambda x: unique_information_with_plan(
        *_kernel_problem(x), learning_rate=0.1, num_steps=5
    ),
    "unique_information_from_features": lambda x: unique_information_from_features(
        x.reshape(x.shape[0], 1, -1),
        x[:3].reshape(3, 1, -1),
        0.1 * x[:, 0],
        (torch.arange(x.shape[0]) % 2).long(),
        learning_rate=0.1,
        weight_decay=0.1,
    ),
    "per_sample_jacobians": lambda x: per_sample_jacobians(_model(), x[:, :3]),
    "jacobian_features": lambda x: jacobian_features(_model(), x[:, :3], projection_dim=5),
    "empirical_ntk": lambda x: empirical_ntk(_model(), x[:, :3], x[:2, :3]),
    "smooth_unique_information": lambda x: smooth_unique_information(
        _model(),
        x[:, :3],
        (torch.arange(x.shape[0]) % 2).long(),
        x[:2, :3],
        learning_rate=0.1,
        weight_decay=0.1,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_results_hold_no_autograd_graph(name):
    leaf, x = _graph_input((12, 5))
    assert x.grad_fn is not None  # the input does carry a graph
    result = CASES[name](x)
    tensors = _tensors(result)
    assert tensors, f"{name} returned no tensor"
    for tensor in tensors:
        assert tensor.grad_fn is None, name
        assert not tensor.requires_grad, name
    # the results are kept, the caller's references dropped: the graph (and its leaf) must go
    ref = weakref.ref(leaf)
    del leaf, x
    gc.collect()
    assert ref() is None, f"{name}: a kept result still holds the input's autograd graph"
    del result


def test_repeated_dse_results_do_not_accumulate_graphs():
    """Six kept DSE results of graph-carrying inputs hold no input alive (issue 20's leak)."""
    kept, refs = [], []
    for seed in range(6):
        leaf, x = _graph_input((40, 8), seed)
        kept.append(diffusion_spectral_entropy(x, sigma=2.0))
        refs.append(weakref.ref(leaf))
        del leaf, x
    gc.collect()
    assert all(r() is None for r in refs)
    assert all(value.grad_fn is None for value in kept)
