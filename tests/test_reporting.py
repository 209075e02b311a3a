"""reporting: atomic files, ranks, image grids, TensorBoard helpers, PNGs."""

from __future__ import annotations

import csv
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import lightning_info.reporting as reporting
from lightning_info.reporting import (
    image_grid,
    log_histograms,
    log_image_grid,
    log_text_table,
    markdown_table,
    rank_descending,
    read_csv_rows,
    save_curves_png,
    save_histogram_png,
    save_image_grid_png,
    tensorboard_writers,
    write_csv_atomic,
)


def test_csv_roundtrip_exact_float32(tmp_path):
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(50, generator=gen) * 10 ** torch.randint(-8, 8, (50,), generator=gen)
    idx = torch.arange(50) * 3
    path = write_csv_atomic(
        tmp_path / "sub" / "t.csv", {"index": idx, "v": values, "tag": ["a"] * 50}
    )
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["index", "v", "tag"]
    assert [int(r[0]) for r in rows[1:]] == idx.tolist()
    back = torch.tensor([float(r[1]) for r in rows[1:]], dtype=torch.float32)
    assert torch.equal(back, values)  # 9 significant digits read float32 back exactly


def test_csv_rejects_bad_columns(tmp_path):
    with pytest.raises(ValueError, match="same length"):
        write_csv_atomic(tmp_path / "a.csv", {"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError, match="at least one column"):
        write_csv_atomic(tmp_path / "a.csv", {})


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_atomic_write_failure_keeps_previous_or_none(tmp_path, monkeypatch, fail_at):
    target = tmp_path / "scores.csv"

    def boom(*args, **kwargs):
        raise OSError("killed")

    monkeypatch.setattr(reporting.os, fail_at, boom)
    with pytest.raises(OSError, match="killed"):
        write_csv_atomic(target, {"a": list(range(1000))})
    assert list(tmp_path.iterdir()) == []  # nothing, not a partial file or a temp file
    monkeypatch.undo()

    write_csv_atomic(target, {"a": [1, 2, 3]})
    before = target.read_bytes()
    monkeypatch.setattr(reporting.os, fail_at, boom)
    with pytest.raises(OSError, match="killed"):
        write_csv_atomic(target, {"a": list(range(1000))})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_rank_descending_matches_brute_force():
    scores = torch.tensor([0.3, 2.0, -1.0, 2.0, 0.3, 5.0])
    brute = [
        1 + sum(1 for j, t in enumerate(scores.tolist()) if t > s or (t == s and j < i))
        for i, s in enumerate(scores.tolist())
    ]
    assert rank_descending(scores).tolist() == brute


def test_image_grid_places_each_image():
    n, h, w = 5, 3, 4
    images = torch.zeros(n, h, w)
    for i in range(n):
        images[i, i % h, i % w] = 1.0  # one bright pixel, at a position depending on i
    grid = image_grid(images, nrow=2, padding=1, pad_value=0.5)
    assert grid.shape == (1, 3 * (h + 1) + 1, 2 * (w + 1) + 1)
    for i in range(n):
        r, q = divmod(i, 2)
        tile = grid[0, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w]
        expected = torch.zeros(h, w)
        expected[i % h, i % w] = 1.0
        assert torch.equal(tile, expected)
    assert float(grid[0, 0, 0]) == 0.5
    flat = image_grid(images.reshape(n, -1), nrow=2, padding=1, image_shape=(h, w), pad_value=0.5)
    assert torch.equal(flat, grid)
    with pytest.raises(ValueError, match="`images` must be"):
        image_grid(torch.zeros(3, 5))


def test_markdown_table():
    text = markdown_table(["a", "b|c"], [[1, math.pi], ["x|y", 2]], digits=2)
    assert text.splitlines() == ["| a | b|c |", "|---|---|", "| 1 | 3.14 |", "| x\\|y | 2 |"]


class _FakeWriter:
    def __init__(self):
        self.calls = []

    def add_histogram(self, tag, values, global_step=0):
        self.calls.append(("hist", tag, np.asarray(values).size))

    def add_text(self, tag, text, global_step=0):
        self.calls.append(("text", tag, text))

    def add_image(self, tag, img, global_step=0, dataformats="CHW"):
        self.calls.append(("image", tag, tuple(img.shape)))


def test_tensorboard_helpers_with_fake_writer_and_logger_filtering(tmp_path):
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    tb = TensorBoardLogger(save_dir=str(tmp_path))
    csv_logger = CSVLogger(save_dir=str(tmp_path))
    assert tensorboard_writers([csv_logger]) == []
    assert tensorboard_writers([csv_logger, tb]) == [tb.experiment]
    writer = _FakeWriter()
    log_histograms(
        [writer], {"s": torch.tensor([1.0, float("nan"), 2.0]), "empty": torch.tensor([])}
    )
    log_text_table([writer], "t", ["a"], [[1]])
    log_image_grid([writer], "img", torch.rand(3, 16), image_shape=(4, 4), nrow=3)
    assert writer.calls == [
        ("hist", "s", 2),
        ("text", "t", "| a |\n|---|\n| 1 |"),
        ("image", "img", (1, 6, 16)),
    ]


def test_pngs(tmp_path):
    magic = b"\x89PNG"
    p1 = save_image_grid_png(
        tmp_path / "g.png", torch.rand(3, 64), image_shape=(8, 8), titles=["a", "b", "c"]
    )
    p2 = save_histogram_png(
        tmp_path / "h.png", {"clean": torch.rand(20), "bad": [0.5, 2.0]}, log_x=True
    )
    p3 = save_curves_png(tmp_path / "c.png", [0.1, 0.5], {"a": [1, 2], "b": ([1, 1], [0.1, 0.2])})
    for p in (p1, p2, p3):
        assert Path(p).read_bytes()[:4] == magic
    with pytest.raises(ValueError, match="`titles`"):
        save_image_grid_png(tmp_path / "x.png", torch.rand(2, 4, 4), titles=["a"])


@pytest.mark.parametrize("kind", ["csv", "png"])
def test_atomic_rewrite_keeps_mode_and_new_files_respect_umask(tmp_path, kind):
    """Like a plain open(): an existing file keeps its mode; a new one is 0666 minus the umask."""

    def write(path):
        if kind == "csv":
            return write_csv_atomic(path, {"a": [1, 2]})
        return save_curves_png(path, [0, 1], {"c": [0.0, 1.0]})

    old = os.umask(0o022)
    try:
        fresh = tmp_path / f"new.{kind}"
        write(fresh)
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
        os.umask(0o077)  # the umask must not change an existing file's mode
        existing = tmp_path / f"old.{kind}"
        existing.write_bytes(b"x")
        os.chmod(existing, 0o640)
        write(existing)
        assert stat.S_IMODE(existing.stat().st_mode) == 0o640
        assert existing.read_bytes() != b"x"
    finally:
        os.umask(old)


def test_atomic_write_follows_symlinks(tmp_path):
    real = tmp_path / "data" / "scores.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "latest.csv"
    link.symlink_to(real)
    assert write_csv_atomic(link, {"a": [7]}) == link
    assert link.is_symlink()
    assert os.readlink(link) == str(real)
    assert read_csv_rows(real) == [{"a": "7"}]
    # a dangling link: the target is created, the link kept
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "data" / "later.csv")
    write_csv_atomic(dangling, {"b": [1]})
    assert dangling.is_symlink()
    assert read_csv_rows(tmp_path / "data" / "later.csv") == [{"b": "1"}]


@pytest.mark.parametrize("kind", ["csv", "png"])
def test_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch, kind):
    """A KeyboardInterrupt in the middle of the write: the old file intact, no temp file left."""
    target = tmp_path / f"out.{kind}"
    target.write_bytes(b"previous")
    if kind == "csv":
        real_fsync = os.fsync

        def interrupted(fd):
            real_fsync(fd)
            raise KeyboardInterrupt

        monkeypatch.setattr(reporting.os, "fsync", interrupted)
        with pytest.raises(KeyboardInterrupt):
            write_csv_atomic(target, {"a": list(range(100))})
    else:
        fig = reporting._pyplot().figure()

        def interrupted(path, **kwargs):
            Path(path).write_bytes(b"partial png")
            raise KeyboardInterrupt

        monkeypatch.setattr(fig, "savefig", interrupted)
        with pytest.raises(KeyboardInterrupt):
            reporting._save_figure_atomic(fig, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_csv_preamble_is_comments_and_readers_skip_it(tmp_path):
    path = write_csv_atomic(
        tmp_path / "s.csv", {"a": [1, 2], "b": [0.5, 1.5]}, preamble=["first", "two\nlines"]
    )
    lines = path.read_text().splitlines()
    assert lines[:4] == ["# first", "# two", "# lines", "a,b"]
    assert read_csv_rows(path) == [{"a": "1", "b": "0.5"}, {"a": "2", "b": "1.5"}]
    with open(path, newline="") as handle:  # what pandas.read_csv(comment="#") does
        plain = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert plain == read_csv_rows(path)
