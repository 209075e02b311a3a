"""Score files, TensorBoard summaries and PNG figures for the callbacks, the demo and benchmarks.

Everything here is I/O and presentation; there is no math beyond ranking and rescaling pixels.

* :func:`write_csv_atomic` writes a table so that a crash or a kill mid-write leaves either the
  previous complete file or none, never a partial one (temporary file in the same directory,
  ``fsync``, ``os.replace``), keeping the file's mode and following symlinks like ``open()``.
* :func:`tensorboard_writers`, :func:`log_histograms`, :func:`log_text_table`,
  :func:`log_image_grid` (and :func:`write_sui_summaries`, which combines them for SUI) write to the ``SummaryWriter`` of every TensorBoard logger of a trainer
  and silently do nothing for other loggers (CSV, MLflow, ...).
* :func:`image_grid`, :func:`markdown_table` and :func:`rank_descending` are small helpers shared
  by the above; :func:`save_image_grid_png`, :func:`save_histogram_png` and
  :func:`save_curves_png` draw PNGs with matplotlib (an optional dependency, imported lazily).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_info.utilities.compat import TENSORBOARD_LOGGER_TYPES

__all__ = [
    "image_grid",
    "log_histograms",
    "log_image_grid",
    "log_text_table",
    "markdown_table",
    "rank_descending",
    "read_csv_rows",
    "save_curves_png",
    "save_histogram_png",
    "save_image_grid_png",
    "tensorboard_writers",
    "write_csv_atomic",
    "write_sui_summaries",
    "write_text_atomic",
]


def _to_list(values: Any) -> list[Any]:
    """Return a column as a plain Python list (tensors and arrays are converted)."""
    if isinstance(values, Tensor):
        return values.detach().cpu().tolist()
    if isinstance(values, np.ndarray):
        return values.tolist()
    return list(values)


def _fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk (best effort; not supported on every OS)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    """The process's umask (read from ``/proc`` where possible, so it is never changed).

    Returns:
        The umask bits.
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it back
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_destination(path: str | os.PathLike[str], suffix: str) -> Iterator[Path]:
    """Yield a temporary file next to ``path``'s target; move it over the target on success.

    A symlink is followed (its target is rewritten; the link stays a link). The new file gets
    the mode of the file it replaces, or, for a new file, the mode ``open()`` would give it
    (0666 minus the umask). The temporary file has a unique name in the target's directory and
    is removed in any case (an exception, ``KeyboardInterrupt``) unless it was moved.

    Yields:
        The temporary file's path (empty; the caller writes and flushes it).
    """
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    moved = False
    try:
        os.close(fd)
        os.chmod(tmp_name, mode)
        yield Path(tmp_name)
        os.replace(tmp_name, target)
        moved = True
    finally:
        if not moved:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    _fsync_dir(target.parent)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically: the file is either the old one or the new one.

    The text goes to a temporary file (unique name, same directory), which is flushed,
    ``fsync``-ed and then moved over ``path`` with ``os.replace`` (atomic on POSIX and Windows).
    If anything fails or interrupts the write before the move, the temporary file is removed and
    ``path`` is untouched (a process killed outright, e.g. by SIGKILL, can leave a hidden
    ``.<name>.*.tmp`` file, never a partial ``path``). Like a plain ``open(path, "w")``: an
    existing file keeps its mode, a new one gets 0666 minus the umask, and a symlink is followed
    (its target is rewritten, the link stays a link).

    Args:
        path: destination file; its parent directories are created.
        text: the full content.

    Returns:
        The destination as a ``Path`` (as given, a symlink stays the path returned).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> write_text_atomic(d / "a.txt", "hello").read_text()
        'hello'
    """
    with (
        _atomic_destination(path, ".tmp") as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as handle,
    ):
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def write_csv_atomic(
    path: str | os.PathLike[str],
    columns: Mapping[str, Any],
    *,
    float_format: str = "{:.9g}",
    preamble: Sequence[str] = (),
) -> Path:
    """Write a table of equal-length columns as CSV, atomically (see :func:`write_text_atomic`).

    ``preamble`` lines come first, each as a comment line starting with ``# `` (read the file
    with :func:`read_csv_rows`, ``pandas.read_csv(path, comment="#")`` or
    ``numpy.genfromtxt(..., comments="#")``).

    Args:
        path: destination ``.csv`` file; parent directories are created.
        columns: ordered mapping of column name to values (tensor, array or sequence), all of the
            same length N. The header is the keys in order; one row per index.
        float_format: ``str.format`` pattern for floats (default: 9 significant digits, enough to
            read float32 values back exactly).
        preamble: comment lines written before the header (without the ``# ``; an entry with
            newlines gives several lines).

    Returns:
        The destination as a ``Path``.

    Raises:
        ValueError: if ``columns`` is empty or the columns have different lengths.

    Example:
        >>> import tempfile, pathlib, torch
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> p = write_csv_atomic(d / "s.csv", {"index": torch.tensor([3, 1]), "score": [0.5, 2.0]})
        >>> print(p.read_text().strip())
        index,score
        3,0.5
        1,2
    """
    if not columns:
        raise ValueError("`columns` must hold at least one column; got an empty mapping.")
    data = {name: _to_list(values) for name, values in columns.items()}
    lengths = {name: len(values) for name, values in data.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"`columns` must all have the same length; got lengths {lengths}.")

    def fmt(value: Any) -> Any:
        if isinstance(value, float):
            return float_format.format(value)
        return value

    class _Buffer:
        def __init__(self) -> None:
            self.parts: list[str] = []

        def write(self, text: str) -> None:
            self.parts.append(text)

    buffer = _Buffer()
    for entry in preamble:  # one comment line per line of each entry
        for line in str(entry).splitlines() or [""]:
            buffer.write(f"# {line}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(data))
    for row in zip(*data.values()):
        writer.writerow([fmt(v) for v in row])
    return write_text_atomic(path, "".join(buffer.parts))


def read_csv_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read a CSV written by :func:`write_csv_atomic`: its rows as dicts, comment lines skipped.

    Args:
        path: the CSV file.

    Returns:
        One ``{column: text}`` per row (lines starting with ``#`` before the header skipped).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> p = write_csv_atomic(d / "s.csv", {"a": [1, 2]}, preamble=["made by a test"])
        >>> read_csv_rows(p)
        [{'a': '1'}, {'a': '2'}]
    """
    with open(path, newline="", encoding="utf-8") as handle:
        lines = [line for line in handle if not line.startswith("#")]
    return list(csv.DictReader(lines))


def rank_descending(scores: Tensor) -> Tensor:
    """Return the rank of every score, 1 for the highest (ties broken by position, stable).

    Args:
        scores: (N,) scores.

    Returns:
        (N,) int64 ranks in ``1..N``.

    Example:
        >>> import torch
        >>> rank_descending(torch.tensor([0.1, 3.0, 2.0])).tolist()
        [3, 1, 2]
    """
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, order.numel() + 1)
    return ranks


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, digits: int = 4) -> str:
    """Format rows as a GitHub-flavoured Markdown table (floats rounded to ``digits``).

    Returns:
        The table as one string, a line per row after the header and separator.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, 0.123456], ["x", 2.0]]))
        | a | b |
        |---|---|
        | 1 | 0.1235 |
        | x | 2.0 |
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return str(round(value, digits))
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _as_image_batch(images: Tensor, image_shape: Sequence[int] | None) -> Tensor:
    """Return images as (N, C, H, W) float in [0, 1] (each image min-max scaled on its own).

    Returns:
        The float32 CPU batch.

    Raises:
        ValueError: if the images cannot be read as (N, C, H, W) with C in {1, 3}.
    """
    x = images.detach().cpu().float()
    if image_shape is not None:
        x = x.reshape(x.shape[0], *image_shape)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            "`images` must be (N, H, W), (N, 1|3, H, W) or flat with `image_shape`; "
            f"got shape {tuple(images.shape)}."
        )
    lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def image_grid(
    images: Tensor,
    *,
    nrow: int = 8,
    padding: int = 1,
    image_shape: Sequence[int] | None = None,
    pad_value: float = 1.0,
) -> Tensor:
    """Tile images into one (C, H', W') grid image with values in [0, 1] (no torchvision needed).

    Args:
        images: (N, H, W), (N, C, H, W) with C in {1, 3}, or flat (N, D) with ``image_shape``.
        nrow: images per row.
        padding: pixels between images.
        image_shape: shape of one image, e.g. ``(8, 8)`` or ``(3, 32, 32)``, for flat inputs.
        pad_value: value of the padding pixels.

    Returns:
        (C, rows*(H+padding)+padding, nrow*(W+padding)+padding) float tensor in [0, 1]; every
        image is min-max scaled on its own.

    Raises:
        ValueError: if the images cannot be read as (N, C, H, W).

    Example:
        >>> import torch
        >>> image_grid(torch.rand(5, 64), nrow=4, image_shape=(8, 8)).shape
        torch.Size([1, 19, 37])
    """  # noqa: DOC502 (raised by _as_image_batch; the contract)
    x = _as_image_batch(images, image_shape)
    n, c, h, w = x.shape
    ncol = max(1, min(nrow, n))
    nrows = max(1, math.ceil(n / ncol))
    grid = torch.full(
        (c, nrows * (h + padding) + padding, ncol * (w + padding) + padding), float(pad_value)
    )
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid


# --------------------------------------------------------------------------------------------
# TensorBoard: write through the SummaryWriter of each TensorBoard logger, ignore other loggers.
# --------------------------------------------------------------------------------------------


def tensorboard_writers(loggers: Any) -> list[Any]:
    """Return the TensorBoard ``SummaryWriter`` of each TensorBoard logger among ``loggers``.

    Args:
        loggers: a ``Trainer``, a logger, or a list of loggers. Loggers that are not TensorBoard
            loggers (CSV, MLflow, W&B, ...) are skipped, so the result may be empty.

    Returns:
        A list of writers that have ``add_histogram``, ``add_text`` and ``add_image``.

    Example:
        >>> tensorboard_writers([])
        []
    """
    if loggers is None:
        return []
    if hasattr(loggers, "loggers") and not hasattr(loggers, "experiment"):
        loggers = loggers.loggers  # a Trainer
    if not isinstance(loggers, (list, tuple)):
        loggers = [loggers]
    writers = []
    for logger in loggers:
        if not isinstance(logger, TENSORBOARD_LOGGER_TYPES):  # either Lightning package's
            continue
        try:
            experiment = logger.experiment
        except Exception:  # a logger that cannot start must not kill the run
            continue
        if all(hasattr(experiment, m) for m in ("add_histogram", "add_text", "add_image")):
            writers.append(experiment)
    return writers


def log_histograms(writers: Sequence[Any], values: Mapping[str, Tensor], *, step: int = 0) -> None:
    """Add one histogram per tag (finite values only) to every writer."""
    for tag, tensor in values.items():
        data = tensor.detach().cpu().double().flatten()
        data = data[torch.isfinite(data)]
        if data.numel() == 0:
            continue
        for writer in writers:
            writer.add_histogram(tag, data.numpy(), global_step=step)


def log_text_table(
    writers: Sequence[Any],
    tag: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    step: int = 0,
) -> None:
    """Add a Markdown table (see :func:`markdown_table`) as TensorBoard text to every writer."""
    text = markdown_table(header, list(rows))
    for writer in writers:
        writer.add_text(tag, text, global_step=step)


def log_image_grid(
    writers: Sequence[Any],
    tag: str,
    images: Tensor,
    *,
    step: int = 0,
    nrow: int = 8,
    image_shape: Sequence[int] | None = None,
) -> None:
    """Add the :func:`image_grid` of ``images`` (CHW) as an image to every writer."""
    if not writers or images.shape[0] == 0:
        return
    grid = image_grid(images, nrow=nrow, image_shape=image_shape)
    for writer in writers:
        writer.add_image(tag, grid.numpy(), global_step=step, dataformats="CHW")


# --------------------------------------------------------------------------------------------
# Matplotlib PNGs (lazy import; headless backend).
# --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PNG figures need matplotlib (pip install 'lightning-info[examples]')."
        ) from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_figure_atomic(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Save a matplotlib figure as a PNG atomically (see :func:`write_text_atomic`).

    Returns:
        The destination as a ``Path``.
    """
    try:
        with _atomic_destination(path, ".png.tmp") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    finally:
        _pyplot().close(fig)
    return Path(path)


def save_image_grid_png(
    path: str | os.PathLike[str],
    images: Tensor,
    *,
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    image_shape: Sequence[int] | None = None,
    suptitle: str | None = None,
) -> Path:
    """Save images as a PNG grid with an optional small title under each image.

    Args:
        path: destination PNG.
        images: (N, H, W), (N, C, H, W) or flat with ``image_shape``.
        titles: N short captions, one or more lines each (e.g.
            ``"given label: 3"`` and ``"model predicts: 5"`` on two lines); the rows are made tall enough for the
            longest.
        ncols: images per row.
        image_shape: shape of one image for flat inputs.
        suptitle: figure title (one or more lines).

    Returns:
        The destination as a ``Path``.

    Raises:
        ValueError: if ``titles`` does not have one entry per image.
    """
    x = _as_image_batch(images, image_shape)
    n = x.shape[0]
    if titles is not None and len(titles) != n:
        raise ValueError(f"`titles` must have one entry per image ({n}); got {len(titles)}.")
    plt = _pyplot()
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    caption_lines = max((t.count("\n") + 1 for t in titles or []), default=0)
    title_lines = suptitle.count("\n") + 1 if suptitle else 0
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(1.3 * ncols, (1.3 + 0.16 * caption_lines) * nrows + 0.2 * title_lines),
        squeeze=False,
    )
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = x[i].permute(1, 2, 0).numpy()
        ax.imshow(
            img[..., 0] if img.shape[-1] == 1 else img,
            cmap="gray_r" if img.shape[-1] == 1 else None,
        )
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()  # the captions between the rows, not over the images below them
    return _save_figure_atomic(fig, path)


def save_histogram_png(
    path: str | os.PathLike[str],
    groups: Mapping[str, Tensor | np.ndarray | Sequence[float]],
    *,
    bins: int = 40,
    xlabel: str = "score",
    log_x: bool = False,
    title: str | None = None,
) -> Path:
    """Save overlaid histograms of several groups of scores (e.g. clean vs flipped labels).

    Args:
        path: destination PNG.
        groups: label -> 1-D values.
        bins: number of bins (shared by all groups).
        xlabel: x-axis label.
        log_x: bin on a log10 scale (values <= 0 are dropped).
        title: figure title.

    Returns:
        The destination as a ``Path``.
    """
    plt = _pyplot()
    arrays = {k: np.asarray(_to_list(v), dtype=float) for k, v in groups.items()}
    if log_x:
        arrays = {k: np.log10(v[v > 0]) for k, v in arrays.items()}
        xlabel = f"log10 {xlabel}"
    finite = [v[np.isfinite(v)] for v in arrays.values() if v.size]
    lo = min((v.min() for v in finite if v.size), default=0.0)
    hi = max((v.max() for v in finite if v.size), default=1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, values in arrays.items():
        ax.hist(
            values[np.isfinite(values)], bins=edges, alpha=0.55, label=f"{label} (n={values.size})"
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure_atomic(fig, path)


def save_curves_png(
    path: str | os.PathLike[str],
    x: Sequence[float],
    curves: Mapping[str, Sequence[float] | tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
) -> Path:
    """Save line plots; a curve given as ``(mean, std)`` gets a shaded band.

    Args:
        path: destination PNG.
        x: shared x values.
        curves: label -> y values, or label -> ``(mean, std)``.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: figure title.

    Returns:
        The destination as a ``Path``.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    xs = np.asarray(list(x), dtype=float)
    for label, values in curves.items():
        if isinstance(values, tuple) and len(values) == 2:
            mean, std = (np.asarray(_to_list(v), dtype=float) for v in values)
            ax.plot(xs, mean, marker="o", ms=3, label=label)
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
        else:
            ax.plot(xs, np.asarray(_to_list(values), dtype=float), marker="o", ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure_atomic(fig, path)


def write_sui_summaries(
    writers: Sequence[Any],
    scores: Any,
    inputs: Tensor,
    *,
    step: int = 0,
    top_k: int = 16,
    image_shape: Sequence[int] | None = None,
    log_key_prefix: str = "sui/",
) -> None:
    """Write smooth-unique-information summaries to TensorBoard writers.

    Histograms ``{prefix}weight_si`` / ``{prefix}functional_si`` and their ``_log10``, the
    recipe behind the scores in words (text ``{prefix}recipe``, from ``scores.describe()`` when
    it has one), a text table ``{prefix}top_k`` of the ``top_k`` highest weight SI, and, for image inputs ((N, C, H, W)
    with C in 1/3, (N, H, W), or flat with ``image_shape``), the grids
    ``{prefix}most_informative`` / ``{prefix}least_informative``.

    Args:
        writers: from :func:`tensorboard_writers` (nothing happens for an empty list).
        scores: a :class:`~lightning_info.callbacks.SUIScores` (indices, labels, predicted,
            weight_si, functional_si).
        inputs: (N, ...) inputs of the scored samples, in the rows' order.
        step: global step of the summaries.
        top_k: rows of the table and images per grid (0: histograms only).
        image_shape: (H, W) or (C, H, W) of one image for flat inputs.
        log_key_prefix: prefix of every tag.
    """
    if not writers:
        return
    values = {f"{log_key_prefix}weight_si": scores.weight_si}
    if scores.functional_si is not None:
        values[f"{log_key_prefix}functional_si"] = scores.functional_si
    values.update({f"{tag}_log10": v.clamp_min(1e-300).log10() for tag, v in list(values.items())})
    log_histograms(writers, values, step=step)
    describe = getattr(scores, "describe", None)
    if callable(describe):  # the recipe behind the scores, in words
        text = "\n\n".join(describe())
        for writer in writers:
            writer.add_text(f"{log_key_prefix}recipe", text, global_step=step)
    if top_k == 0:
        return
    top = torch.argsort(scores.weight_si, descending=True, stable=True)[:top_k]
    fsi = scores.functional_si
    rows = [
        (
            r + 1,
            int(scores.indices[i]),
            scores.labels[i].item(),
            int(scores.predicted[i]),
            float(scores.weight_si[i]),
            float("nan") if fsi is None else float(fsi[i]),
        )
        for r, i in enumerate(top.tolist())
    ]
    header = ["rank", "index", "label", "predicted", "weight SI (nats)", "functional SI (nats)"]
    log_text_table(writers, f"{log_key_prefix}top_k", header, rows, step=step)
    is_image = (
        image_shape is not None
        or (inputs.ndim == 4 and inputs.shape[1] in (1, 3))
        or inputs.ndim == 3
    )
    if is_image:
        bottom = torch.argsort(scores.weight_si, descending=False, stable=True)[:top_k]
        for name, picked in (("most_informative", top), ("least_informative", bottom)):
            log_image_grid(
                writers,
                f"{log_key_prefix}{name}",
                inputs[picked],
                step=step,
                image_shape=image_shape,
            )
