"""The progress display of SmoothUniqueInformation's scoring pass (Lightning's conventions).

Shown only on rank 0 and only when the trainer's progress bar is enabled
(``trainer.progress_bar_callback is not None``, i.e. ``Trainer(enable_progress_bar=True)``, the
default); silent otherwise, and when :meth:`~lightning_info.callbacks.SmoothUniqueInformation.score`
is called without a trainer. One ``tqdm`` bar on stderr counts the samples whose Jacobians are
computed (the dominant cost; its rate gives the ETA) and names the current stage: ``Jacobians``,
``kernel`` (the NTK products) and ``solve`` (the closed-form replay). The functional layer only
reports work done to the ``progress=`` observer passed in (:meth:`ScoringProgress.hook`); it
never prints.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm

__all__: list[str] = []

_STAGE_NAMES = {"jacobians": "Jacobians", "kernel": "kernel", "solve": "solve"}


def progress_enabled(trainer: Any) -> bool:
    """Whether to show the scoring progress: rank 0 of a trainer whose progress bar is on.

    Returns:
        True when ``trainer`` is given, is global rank 0 and has a progress bar callback.
    """
    if trainer is None or not getattr(trainer, "is_global_zero", True):
        return False
    return getattr(trainer, "progress_bar_callback", None) is not None


def expected_jacobian_samples(n: int, n_val: int, world_size: int, distributed: bool) -> int:
    """Samples whose Jacobians this rank computes (the bar's total; exceeded when streamed).

    Single process: the training kernel (N), then the held-out kernel (its N_val samples and the
    N training samples again). Under DDP: this rank's shards of both sets.

    Returns:
        The expected count.
    """
    if distributed:
        return math.ceil(n / world_size) + math.ceil(n_val / world_size)
    return n + (n_val + n if n_val else 0)


class ScoringProgress:
    """A tqdm bar over the scoring pass, or nothing when disabled.

    Args:
        enabled: whether to display anything.
        total: expected Jacobian samples (:func:`expected_jacobian_samples`).
    """

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(
                total=max(1, total),
                desc="SUI scoring: Jacobians",
                unit="sample",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
            )

    def __call__(self, stage: str, amount: int) -> None:
        """Observer of the functional layer: ``("jacobians", n)`` or ``("kernel", 1)``."""
        if self._bar is None:
            return
        self._set_stage(stage)
        if stage == "jacobians":
            if self._bar.n + amount > self._bar.total:  # a streamed kernel recomputes chunks
                self._bar.total = self._bar.n + amount
            self._bar.update(amount)

    def _set_stage(self, stage: str) -> None:
        desc = f"SUI scoring: {_STAGE_NAMES.get(stage, stage)}"
        if self._bar.desc != desc:
            self._bar.set_description_str(desc, refresh=True)

    @property
    def hook(self) -> ScoringProgress | None:
        """The ``progress=`` observer to pass to the functional layer (None when disabled)."""
        return self if self._bar is not None else None

    @contextlib.contextmanager
    def solving(self) -> Iterator[None]:
        """Show the ``solve`` stage while the closed form is solved.

        Yields:
            Nothing.
        """
        if self._bar is not None:
            self._set_stage("solve")
        yield

    def close(self) -> None:
        """Close the bar (completed)."""
        if self._bar is not None:
            self._bar.set_description_str("SUI scoring: done", refresh=False)
            self._bar.close()
            self._bar = None
