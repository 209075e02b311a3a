"""SmoothUniqueInformation under 2-process CPU DDP (gloo), run in a subprocess with a timeout."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_info.functional.sui import smooth_unique_information
from lightning_info.models import MLPClassifier
from lightning_info.utilities.data import load_dataset

SCRIPT = Path(__file__).with_name("_ddp_sui_script.py")
N_TRAIN, N_VAL = 101, 31


@pytest.mark.ddp
def test_ddp_scores_identical_on_ranks_and_equal_single_process(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=str(SCRIPT.parents[2]),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["world_size"] == 2
    # every rank ends with the same scores; each dataset index exactly once (no padding duplicate)
    assert torch.equal(r0["indices"], r1["indices"])
    assert torch.equal(r0["weight_si"], r1["weight_si"])
    assert torch.equal(r0["functional_si"], r1["functional_si"])
    assert r0["indices"].tolist() == list(range(N_TRAIN))
    # only rank 0 wrote the score file, one row per index
    with open(tmp_path / "sui_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert [int(r["index"]) for r in rows] == list(range(N_TRAIN))

    # single-process reference: the engine on the initial weights and the whole dataset
    ds = load_dataset("digits")
    model = MLPClassifier(64, 10, hidden=(8,), loss="mse", optimizer="sgd", lr=0.05)
    model.load_state_dict(r0["init"])
    st = r0["settings"]
    assert (
        st["num_steps"] == r0["global_step"] == 4
    )  # ceil(101 / 2) = 51 samples per rank, batch 16
    ref = smooth_unique_information(
        model,
        ds.inputs[:N_TRAIN],
        ds.targets[:N_TRAIN],
        ds.inputs[N_TRAIN : N_TRAIN + N_VAL],
        learning_rate=st["learning_rate"],
        num_steps=st["num_steps"],
        method=st["method"],
        ntk="full",
    )
    torch.testing.assert_close(r0["weight_si"], ref.weight_si, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(r0["functional_si"], ref.functional_si, rtol=1e-6, atol=1e-12)


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("failure", "rank"), [("samples", 1), ("features", 1), ("solve", 0)], ids=str
)
def test_ddp_failure_on_one_rank_reaches_every_rank_and_validate_runs(tmp_path, failure, rank):
    """Issue 20: scoring fails on one rank only. Every rank learns of it (no rank waits in a
    collective), rank 0 reports the failing rank's own message, and a following
    `trainer.validate` completes on both ranks. A deadlock fails the test through the timeout."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path), failure],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        cwd=str(SCRIPT.parents[2]),
        start_new_session=True,  # its own process group: both ranks can be killed on a hang
    )
    try:
        _, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the rank it spawned
        proc.communicate()
        pytest.fail(f"DDP run with a {failure} failure on rank {rank} hung (killed after 240 s)")
    assert proc.returncode == 0, stderr[-3000:]
    r0 = torch.load(tmp_path / "failure0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "failure1.pt", weights_only=False)
    assert r0["scores_is_none"]
    assert r1["scores_is_none"]
    expected = (
        f"scoring failed on rank {rank}: PlantedError: planted {failure} failure on rank {rank}"
    )
    assert any(expected in m for m in r0["messages"]), r0["messages"]
    for r in (r0, r1):  # validation ran to completion on both ranks after the failure
        assert len(r["validate"]) == 1
        assert "val_loss" in r["validate"][0]
