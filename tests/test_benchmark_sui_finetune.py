"""The fine-tuning benchmark's harness (``benchmarks/sui_finetune.py``): recipe, samples, ``--quick``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _scripts import loaded_script
from scipy.stats import pearsonr, spearmanr

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sui_finetune.py"


@pytest.fixture(scope="module")
def bench():
    with loaded_script(SCRIPT, "_benchmark_sui_finetune_under_test") as module:
        yield module


def test_batch_schedule_is_a_seeded_permutation_per_epoch(bench):
    steps = bench.batch_schedule(23, 3, 10, seed=4)
    assert [len(s) for s in steps] == [10, 10, 3] * 3
    for e in range(3):
        assert sorted(torch.cat(steps[3 * e : 3 * e + 3]).tolist()) == list(range(23))
    again = bench.batch_schedule(23, 3, 10, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(steps, again))
    assert not torch.equal(torch.cat(steps[:3]), torch.cat(steps[3:6]))  # a new order per epoch


def test_leave_one_out_drops_only_that_sample(bench):
    """A linear model on MSE: the plain loop without sample i equals hand-written SGD over the
    same batches with i removed (the other samples' batches untouched)."""
    torch.manual_seed(0)
    x, y = torch.randn(12, 3), torch.randint(0, 2, (12,))
    steps = bench.batch_schedule(12, 2, 5, seed=1)
    net = torch.nn.Linear(3, 2).double()
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    bench.train_plain(net, x.double(), y, steps, 0.3, drop=7)
    w, b = w0.clone(), b0.clone()
    t = torch.nn.functional.one_hot(y, 2).double()
    for idx in steps:
        idx = [i for i in idx.tolist() if i != 7]
        r = x[idx].double() @ w.T + b - t[idx]  # d/dout of 1/2 ||out - t||^2, mean over batch
        w, b = w - 0.3 * r.T @ x[idx].double() / len(idx), b - 0.3 * r.mean(0)
    torch.testing.assert_close(net.weight.detach(), w)
    torch.testing.assert_close(net.bias.detach(), b)


def test_pick_samples_mixes_groups_and_spans_the_scores(bench):
    score = np.arange(20, dtype=float)
    flipped = np.zeros(20, dtype=bool)
    flipped[[1, 5, 9, 13, 17]] = True
    picked = bench.pick_samples(score, flipped, 6)
    assert sorted(set(picked) & {1, 5, 9, 13, 17}) == [1, 9, 17]  # min, middle, max flipped
    clean = sorted(set(picked) - {1, 9, 17})
    assert clean[0] == 0
    assert clean[-1] == 19
    assert len(clean) == 3


def test_rank_scores_reproduce_the_order(bench):
    order = torch.tensor([2, 0, 3, 1])
    s = bench.rank_scores(order, 4)
    assert np.argsort(-s, kind="stable").tolist() == order.tolist()


@pytest.mark.slow  # ~30 s on a loaded 2-core machine (two tiny fine-tunings with SUI, 8 retrainings)
def test_quick_run_writes_tables_with_valid_metrics(bench, tmp_path):
    out = tmp_path / "q"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    for name in ("resnet", "transformer"):
        payload = json.loads((out / f"{name}.json").read_text())
        det = next(iter(payload["detection"].values()))
        assert {"loss", "tracin"} <= set(det)
        assert any(m.startswith("sui_default_ranking") for m in det)
        for row in det.values():
            assert 0.0 <= row["auroc"] <= 1.0
            assert 0.0 <= row["prec_at_k"] <= 1.0
        fid = payload["fidelity"]
        # the plain loop reproduces the Lightning fine-tuning exactly (same batches, same ops)
        assert fid["lightning_vs_plain_max_abs"] == 0.0
        assert len(fid["samples"]) == len(fid["true_weight_change_sq"]) >= 3
        assert all(v > 0 for v in fid["true_weight_change_sq"])  # removing a sample changes w
        for name_sui, corr in fid["correlations"].items():
            est_w = fid["sui_weight_change_sq"][name_sui]
            est_f = fid["sui_function_change_sq"][name_sui]
            assert corr["weight_pearson"] == pytest.approx(
                pearsonr(est_w, fid["true_weight_change_sq"])[0]
            )
            assert corr["function_spearman"] == pytest.approx(
                spearmanr(est_f, fid["true_function_change_sq"])[0]
            )
