"""Shared test configuration: deterministic numerics, markers, small thread counts."""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

os.environ.setdefault("PL_DISABLE_FORK", "1")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="session")
def load_example():
    """``load_example(name)`` imports ``examples/<name>.py`` (scripts, not a package) as a module."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"gallery_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def pytest_collection_modifyitems(config, items):
    """Skip `cuda` tests when no GPU is present (CI here has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed the global RNGs before each test so that data generation is reproducible."""
    torch.manual_seed(0)
    np.random.seed(0)
    return


@pytest.fixture(autouse=True)
def _quiet_lightning():
    """Silence Lightning's chatty info warnings (tips about workers etc.) in tests."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield


@pytest.fixture(scope="module")
def single_thread():
    """One torch/BLAS thread for a module of small problems.

    Small eigensolves are as fast on one thread and do not stall when the 2-core machine is
    oversubscribed (seen: a 1000x1000 eigvalsh took 17 s on 2 busy threads, 1.6 s on one).
    Use it with ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
