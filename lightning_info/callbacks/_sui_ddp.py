"""SmoothUniqueInformation under DDP: sharded Jacobian features, one solve, the same result everywhere.

Every rank builds the same scoring set (no ``DistributedSampler``, so no padding duplicates),
computes the Jacobian features of its shard ``positions[rank::world_size]``, and the shards are
all-gathered back into dataset order; rank 0 forms the kernels and solves, and the result (or the
error) is broadcast, so every rank ends with the same scores and no rank waits forever.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_info.functional.jacobian import jacobian_features, kernel_from_features

__all__: list[str] = []

T = TypeVar("T")


def is_distributed(trainer: Any) -> bool:
    """Whether ``trainer`` runs more than one process in an initialized process group.

    Returns:
        True under multi-process DDP.
    """
    world = getattr(trainer, "world_size", 1) if trainer is not None else 1
    return world > 1 and dist.is_available() and dist.is_initialized()


def gather_features(model: nn.Module, trainer: Any, x: Tensor, jac_kw: dict[str, Any]) -> Tensor:
    """Jacobian features of ``x``: each rank computes rows ``rank::world``; all-gathered.

    Returns:
        (N, K, d) features in the order of ``x``, on every rank.
    """
    rank, world = trainer.global_rank, trainer.world_size
    device = next(model.parameters()).device
    shard = x[rank::world].to(device)
    per_rank = math.ceil(x.shape[0] / world)
    if shard.shape[0] > 0:
        feats = jacobian_features(model, shard, **jac_kw)
    else:  # more ranks than samples: contribute only padding
        feats = jacobian_features(model, x[:1].to(device), **jac_kw)[:0]
    padded = feats.new_zeros(per_rank, *feats.shape[1:])
    padded[: feats.shape[0]] = feats
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded.contiguous())
    # position p was computed by rank p % world as its (p // world)-th row; padding dropped
    stacked = torch.stack(gathered, 0)  # (world, per_rank, K, d)
    order = torch.arange(x.shape[0], device=stacked.device)
    return stacked[order % world, order // world]


def distributed_kernels(
    model: nn.Module, trainer: Any, x: Tensor, x_val: Tensor | None, ntk: str, jac_kw: dict
) -> tuple[Tensor | None, Tensor | None]:
    """Gather the sharded features on every rank; only rank 0 forms the NTKs (``ntk``: which).

    Returns:
        ``(theta, theta_val)`` on rank 0, ``(None, None)`` elsewhere.
    """
    phi = gather_features(model, trainer, x, jac_kw)
    phi_val = None if x_val is None else gather_features(model, trainer, x_val, jac_kw)
    if not trainer.is_global_zero:
        return None, None
    theta = kernel_from_features(phi, ntk=ntk)
    theta_val = None if phi_val is None else kernel_from_features(phi_val, phi, ntk=ntk)
    return theta, theta_val


def solve_on_rank_zero(trainer: Any, solve: Callable[[], T]) -> T:
    """Run ``solve`` on rank 0 and broadcast its result (or its error) to every rank.

    Returns:
        The result of ``solve``, on every rank.

    Raises:
        RuntimeError: on every rank when ``solve`` failed on rank 0.
    """
    result, error = None, None
    if trainer.is_global_zero:
        try:  # never leave the other ranks waiting in the broadcast below
            result = solve()
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
    result, error = trainer.strategy.broadcast((result, error), src=0)
    if error is not None:
        raise RuntimeError(f"SmoothUniqueInformation: scoring failed on rank 0: {error}")
    return result
