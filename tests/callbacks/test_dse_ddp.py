"""2-process CPU DDP (gloo): every rank logs the identical DSE/DSMI, equal to one process's value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_ddp_dse_script.py")


@pytest.mark.ddp
def test_ddp_ranks_log_identical_values_equal_to_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("PL_DISABLE_FORK", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a deadlock fails here instead of hanging the suite
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["world_size"], r1["rank"]) == (2, 1)
    assert r0["probe"] == r1["probe"]
    assert len(r0["probe"]) == 101
    keys = {"info/dse/penultimate", "info/dsmi_y/penultimate", "info/dsmi_x/penultimate"}
    for epoch in ("0", "1"):
        assert set(r0["rows"][epoch]) == keys
        assert r0["rows"][epoch] == r1["rows"][epoch]  # bit-identical on both ranks
    for key, value in r0["functional"].items():  # whole probe, one process, final weights
        assert r0["rows"]["1"][key] == pytest.approx(value, abs=1e-5), key
