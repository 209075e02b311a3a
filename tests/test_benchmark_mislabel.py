"""The mislabel benchmark's harness (``benchmarks/mislabel.py``): metrics, ``--quick`` run, resume."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _scripts import loaded_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "mislabel.py"


@pytest.fixture(scope="module")
def bench():
    with loaded_script(SCRIPT, "_benchmark_mislabel_under_test") as module:
        yield module


def _brute_auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    pairs = list(itertools.product(scores[positives], scores[~positives]))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_auroc_and_precision_match_brute_force(bench):
    rng = np.random.default_rng(0)
    for trial in range(5):
        scores = rng.integers(0, 6, 50).astype(float)  # many ties
        positives = rng.random(50) < 0.3
        if trial == 0:
            scores[positives] += 2.0  # a separable-ish case
        assert bench.auroc(scores, positives) == pytest.approx(_brute_auroc(scores, positives))
    s = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    pos = np.array([True, False, False, True, False])
    assert bench.auroc(s, pos) == pytest.approx(5 / 6)
    assert bench.precision_at_k(s, pos) == pytest.approx(0.5)  # top 2 = {0.9, 0.8}
    # a tie at the cut-off counts by its mean positive rate: top 1 of {1, 1} with one positive
    assert bench.precision_at_k(np.array([1.0, 1.0, 0.0]), np.array([True, False, False])) == 0.5


def test_quick_run_scores_resumes_and_reports(bench, tmp_path, capsys):
    out = tmp_path / "mislabel"
    assert bench.main(["run", "--quick", "--out", str(out)]) == 0
    path = out / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]

    methods = set(bench.QUICK_METHODS)
    assert not {"cleanlab", "trak"} & methods  # the quick mode needs no optional package
    keys = [(bench.cell_key(r), r["method"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(bench.REGIMES) * len(methods)
    assert {r["regime"] for r in rows} == set(bench.REGIMES)
    assert {r["method"] for r in rows} == methods
    for r in rows:
        assert "error" not in r, r
        assert 0.0 <= r["auroc"] <= 1.0
        assert 0.0 <= r["prec_at_k"] <= 1.0
        assert r["seconds"] >= 0.0
        assert r["train_seconds"] > 0.0
        assert (r["dataset"], r["model"], r["optimizer"], r["noise"]) == (
            "digits",
            "mlp",
            "adam",
            0.3,
        )
        assert r["n_flipped"] == round(0.3 * r["n_train"])
        assert r["n_nan"] == 0
    by = {(r["regime"], r["method"]): r for r in rows}
    # a network that learned something ranks its flipped samples by loss: far above chance
    assert by[("moderate", "loss")]["auroc"] > 0.8
    assert by[("moderate", "loss")]["flipped_fit"] < 0.2  # the moderate regime: not yet fitted
    # the SUI columns carry the callback's settings (defaults, all samples scored)
    settings = by[("moderate", "sui_weight_default")]["settings"]
    assert settings["num_samples"] == rows[0]["n_train"]
    assert settings["linearize_at"] == "init"
    assert settings["num_heldout"] > 0

    # rerun: every cell is done, nothing is trained or appended
    before = path.read_text()
    capsys.readouterr()
    assert bench.main(["run", "--quick", "--out", str(out)]) == 0
    assert path.read_text() == before
    assert "done, skipped" in capsys.readouterr().out

    assert bench.main(["report", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sui_weight_default" in text
    assert "digits p=0.3 moderate" in text


def test_summary_compares_on_the_same_seeds_against_the_best_peer(bench):
    """Issue 15's criteria table: best peer by mean AUROC over the seeds SUI has, margins."""
    cell = {"dataset": "digits", "model": "mlp", "optimizer": "adam", "noise": 0.1}
    values = {  # method: [(seed, auroc, prec_at_k, seconds)]
        "loss": [(0, 0.90, 0.70, 0.0), (1, 0.80, 0.60, 0.0), (2, 0.10, 0.10, 0.0)],
        "grad_norm": [(0, 0.85, 0.75, 1.0), (1, 0.85, 0.75, 1.0)],
        "tracin": [(0, 0.70, 0.50, 1.0), (1, 0.70, 0.50, 1.0)],
        "cleanlab": [(0, 0.88, 0.80, 30.0), (1, 0.84, 0.70, 50.0)],
        "trak": [(0, 0.60, 0.40, 2.0), (1, 0.60, 0.40, 2.0)],
        "sui_looerr_defaults": [(0, 0.95, 0.90, 3.0), (1, 0.93, 0.80, 5.0)],
    }
    rows = [
        {**cell, "regime": "memorize", "seed": s, "method": m, "auroc": a, "prec_at_k": q,
         "seconds": t}
        for m, entries in values.items()
        for s, a, q, t in entries
    ]  # fmt: skip
    lines = bench.summary(rows).splitlines()
    assert len(lines) == 3  # header, rule, one cell
    fields = [f.strip() for f in lines[2].strip("|").split("|")]
    # seed 2 (loss only) is ignored, else the loss's mean would be 0.60 and its margin +0.34
    assert fields[5] == "0,1"
    assert fields[6] == "0.940"
    assert fields[7] == "0.860 (cleanlab)"  # (0.88 + 0.84) / 2 beats loss's 0.85
    assert fields[8] == "+0.080"
    assert fields[9] == "+0.090"  # against the loss on seeds 0, 1
    assert fields[10] == "0.85"
    assert fields[11] == "0.75 (grad_norm)"  # tie with cleanlab: the first in PEERS
    assert fields[12:] == ["4.0", "40.0"]


@pytest.mark.slow
def test_suite_mislabel_quick_cell(tmp_path):
    """Issue 19: one shrunken cell of the suite's mislabel harness (a held-out family with
    BatchNorm and SGD + cosine): every method scores, the metrics are valid, the report runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import _suite_mislabel

    lines = _suite_mislabel.run_cell(
        "tabular_warped_mlp_bn", 0.3, 0, tmp_path, epochs=2, max_train=200, optional_peers=False
    )
    errors = [line for line in lines if "error" in line]
    assert not errors, errors
    methods = {line["method"] for line in lines}
    assert {"loss", "tracin", "sui_looerr", "sui_weight"} <= methods
    assert not {"cleanlab", "trak"} & methods  # the quick cell needs no optional package
    for line in lines:
        assert 0.0 <= line["auroc"] <= 1.0
        assert 0.0 <= line["precision_at_k"] <= 1.0
        assert line["regime"] in ("moderate", "memorize")
    # the loss of a network that barely trained still ranks flipped labels above chance
    loss = [line for line in lines if line["method"] == "loss"]
    assert all(line["auroc"] > 0.5 for line in loss)
    assert "tabular_warped_mlp_bn" in _suite_mislabel.report(tmp_path)
