"""OverfittingEarlyStopping under 2-process CPU DDP (gloo), uneven shards, run with a timeout.

The script trains on 401 samples with permuted labels (validation 301): both shards are uneven and
padded by the DistributedSampler. The training loss is logged per rank (``sync_dist=False``), so
the ranks may judge an evaluation differently; the callback OR-reduces the stop decision
(``reduce_boolean_decision(all=False)``), so every rank must stop at the same epoch, at the first
epoch where *some* rank has seen ``patience`` consecutive suspicious evaluations. The rule is
re-derived here from the recorded (loss, DSMI) pairs with the documented formula.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_ddp_early_stopping_script.py")
MAX_EPOCHS = 15  # as in the script
# OverfittingEarlyStopping defaults
WINDOW, PATIENCE, MIN_DROP, MIN_GAIN, MAX_FRACTION = 3, 2, 0.02, 0.05, 0.25


def _suspicious(history):
    """The documented rule on one rank's [(epoch, loss, dsmi, _), ...] (10 classes)."""
    scale = math.log2(10)
    flags = []
    for k, (_, loss, dsmi, _) in enumerate(history):
        if k < WINDOW:
            flags.append(False)
            continue
        _, loss0, dsmi0, _ = history[k - WINDOW]
        flags.append(
            (loss0 - loss) / abs(loss0) >= MIN_DROP
            and (dsmi - dsmi0) / scale < MIN_GAIN
            and dsmi / scale < MAX_FRACTION
        )
    return flags


def _first_stop(flags):
    run = 0
    for k, flag in enumerate(flags):
        run = run + 1 if flag else 0
        if run >= PATIENCE:
            return k
    return None


@pytest.mark.ddp
def test_ddp_ranks_stop_together_with_uneven_shards(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PL_DISABLE_FORK", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a deadlock (one rank waiting in a collective) fails here
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["world_size"], r0["rank"], r1["rank"]) == (2, 0, 1)
    assert r0["probe"] == r1["probe"]
    assert len(r0["probe"]) == 200

    # the run was stopped, early, at the same epoch on both ranks
    assert r0["should_stop"]
    assert r1["should_stop"]
    assert r0["stopped_epoch"] == r1["stopped_epoch"] > 0
    assert r0["current_epoch"] == r1["current_epoch"] == r0["stopped_epoch"] + 1 < MAX_EPOCHS

    # identical logged values on both ranks, every epoch
    assert r0["rows"] == r1["rows"]
    assert all("info/dsmi_y/penultimate" in row for row in r0["rows"].values())
    # the same evaluations on both ranks, with the same (logged) DSMI; the loss is per rank
    h0, h1 = r0["history"], r1["history"]
    assert [h[0] for h in h0] == [h[0] for h in h1] == list(range(r0["stopped_epoch"] + 1))
    assert [h[2] for h in h0] == [h[2] for h in h1]
    for history, rows in ((h0, r0["rows"]), (h1, r1["rows"])):
        for epoch, _, dsmi, _ in history:
            assert dsmi == pytest.approx(rows[str(epoch)]["info/dsmi_y/penultimate"], rel=1e-6)

    # each rank applied the documented rule to its own values; the stop is the first epoch at
    # which any rank reached `patience` consecutive suspicious evaluations (OR over ranks)
    flags = [_suspicious(h0), _suspicious(h1)]
    assert [h[3] for h in h0] == flags[0]
    assert [h[3] for h in h1] == flags[1]
    stops = [s for s in map(_first_stop, flags) if s is not None]
    assert stops, flags
    assert r0["stopped_epoch"] == min(stops)
