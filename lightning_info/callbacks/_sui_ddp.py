"""SmoothUniqueInformation under DDP: sharded Jacobian features, one solve, the same result everywhere.

Every rank builds the same scoring set (no ``DistributedSampler``, so no padding duplicates),
computes the Jacobian features of its shard ``positions[rank::world_size]``, and the shards are
all-gathered back into dataset order; rank 0 forms the kernels and solves, and the result (or the
error) is broadcast, so every rank ends with the same scores and no rank waits forever.

Failures are collective: every stage that a rank runs alone (reading the samples, the outputs at
the linearization point, its shard's Jacobians) ends with an exchange of every rank's status
(:func:`collective_stage`) *before* the next collective, so an error on any one rank is raised on
every rank, as a :class:`RankFailure` naming the failing rank and its message, and no rank is
left waiting in a collective the others never reach (a later ``trainer.validate`` works).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
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


class RankFailure(RuntimeError):
    """Scoring failed on at least one rank; raised on every rank with the failing rank's message.

    Attributes:
        rank: the (lowest) failing global rank.
    """

    def __init__(self, rank: int, message: str, others: list[int]) -> None:
        more = f" (and on rank(s) {', '.join(map(str, others))})" if others else ""
        super().__init__(f"SmoothUniqueInformation: scoring failed on rank {rank}{more}: {message}")
        self.rank = rank


def agree(trainer: Any, error: BaseException | None) -> None:
    """Exchange every rank's status; raise the same :class:`RankFailure` everywhere if any failed.

    Args:
        trainer: the trainer (its process group).
        error: this rank's failure in the stage just run, or None.

    Raises:
        RankFailure: on every rank, when any rank passed an error.
    """
    statuses: list[str | None] = [None] * trainer.world_size
    mine = None if error is None else f"{type(error).__name__}: {error}"
    dist.all_gather_object(statuses, mine)
    failed = [(rank, message) for rank, message in enumerate(statuses) if message is not None]
    if failed:
        (rank, message), others = failed[0], [r for r, _ in failed[1:]]
        raise RankFailure(rank, str(message), others) from error


@contextlib.contextmanager
def collective_stage(trainer: Any) -> Iterator[None]:
    """Run a stage that each rank runs alone, then :func:`agree` on its outcome (DDP only).

    Outside DDP the block runs as is and its exceptions propagate unchanged.

    Yields:
        Nothing.

    Raises:
        RankFailure: on every rank, when the block failed on any rank.
    """  # noqa: DOC502 (raised by agree)
    if not is_distributed(trainer):
        yield
        return
    error = None
    try:
        yield
    except Exception as err:  # reported to every rank below, never swallowed
        error = err
    agree(trainer, error)


def gather_features(model: nn.Module, trainer: Any, x: Tensor, jac_kw: dict[str, Any]) -> Tensor:
    """Jacobian features of ``x``: each rank computes rows ``rank::world``; all-gathered.

    Returns:
        (N, K, d) features in the order of ``x``, on every rank.
    """
    rank, world = trainer.global_rank, trainer.world_size
    device = next(model.parameters()).device
    shard = x[rank::world].to(device)
    per_rank = math.ceil(x.shape[0] / world)
    with collective_stage(trainer):  # every rank learns of a failed shard before all_gather
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


def gather_all_features(
    model: nn.Module, trainer: Any, x: Tensor, x_val: Tensor | None, jac_kw: dict
) -> tuple[Tensor, Tensor | None]:
    """The sharded Jacobian features of the training and held-out inputs, on every rank.

    Returns:
        ``(phi, phi_val)``: (N, K, d) and (N_val, K, d) features (``phi_val`` None without
        held-out inputs).
    """
    phi = gather_features(model, trainer, x, jac_kw)
    phi_val = None if x_val is None else gather_features(model, trainer, x_val, jac_kw)
    return phi, phi_val


def kernels_of(
    phi: Tensor, phi_val: Tensor | None, ntk: str, progress: Callable[[str, int], None] | None
) -> tuple[Tensor, Tensor | None]:
    """The training NTK and the held-out/training NTK of gathered features (``ntk``: which).

    Returns:
        ``(theta, theta_val)``.
    """
    theta = kernel_from_features(phi, ntk=ntk, progress=progress)
    theta_val = None
    if phi_val is not None:
        theta_val = kernel_from_features(phi_val, phi, ntk=ntk, progress=progress)
    return theta, theta_val


def solve_on_rank_zero(trainer: Any, solve: Callable[[], T]) -> T:
    """Run ``solve`` on rank 0 and broadcast its result (or its error) to every rank.

    Returns:
        The result of ``solve``, on every rank.

    Raises:
        RankFailure: on every rank when ``solve`` failed on rank 0.
    """
    result, error, cause = None, None, None
    if trainer.is_global_zero:
        try:  # never leave the other ranks waiting in the broadcast below
            result = solve()
        except Exception as err:
            error, cause = f"{type(err).__name__}: {err}", err
    result, error = trainer.strategy.broadcast((result, error), src=0)
    if error is not None:
        raise RankFailure(0, error, []) from cause
    return result
