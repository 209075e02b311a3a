"""Import the project's scripts (``benchmarks/*.py``, ``examples/*.py``: not packages) in tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType


@contextmanager
def loaded_script(path: Path, name: str) -> Iterator[ModuleType]:
    """The script at ``path`` imported as module ``name``, registered in ``sys.modules`` while
    in use (dataclasses resolve their module through it) and removed afterwards."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
