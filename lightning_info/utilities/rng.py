"""Leave the global random number generators exactly as they were.

A callback must not change the run it observes (the same seed must train to the same weights
with or without it). Anything that draws from a global generator in a hook -- a ``DataLoader``
iterator (it draws its base seed from ``torch``'s global generator), a dataset whose
``__getitem__`` augments, a user's forward pass -- would shift the random stream of the training
run: other dropout masks, another shuffling order. :func:`preserved_global_rng` saves the
states of Python's ``random``, NumPy's global generator and ``torch``'s CPU generator (and the
CUDA generators, when CUDA is initialised) and restores them on exit.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["preserved_global_rng"]


@contextmanager
def preserved_global_rng() -> Iterator[None]:
    """Restore the global RNG states of ``random``, NumPy and ``torch`` when the block exits.

    Example:
        >>> import torch
        >>> before = torch.get_rng_state()
        >>> with preserved_global_rng():
        ...     _ = torch.rand(3)
        >>> torch.equal(before, torch.get_rng_state())
        True
    """
    py_state = random.getstate()
    np_state = np.random.get_state()
    cpu_state = torch.random.get_rng_state()
    cuda_states = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = torch.cuda.get_rng_state_all()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
