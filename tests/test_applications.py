"""applications: suspicious samples, summarization, group aggregates vs brute-force references."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_info.applications import aggregate_by_group, summarize_dataset, suspicious_samples


def test_suspicious_samples_matches_sorted_reference():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (30,), generator=gen).double()  # many ties
    ref = sorted(range(30), key=lambda i: (-scores[i].item(), i))
    assert suspicious_samples(scores).tolist() == ref
    assert suspicious_samples(scores, k=4).tolist() == ref[:4]
    idx = torch.arange(30) * 7 + 1
    container = SimpleNamespace(weight_si=scores, functional_si=-scores, indices=idx)
    assert suspicious_samples(container).tolist() == [int(idx[i]) for i in ref]
    ref_f = sorted(range(30), key=lambda i: (scores[i].item(), i))
    assert suspicious_samples(container, by="functional_si", k=3).tolist() == [
        int(idx[i]) for i in ref_f[:3]
    ]


def test_suspicious_samples_auto_ranks_by_loo_error_when_the_container_has_it():
    weight = torch.tensor([3.0, 1.0, 2.0])
    loo = torch.tensor([0.1, 0.9, 0.5])
    with_loo = SimpleNamespace(weight_si=weight, loo_error=loo, indices=torch.tensor([7, 8, 9]))
    assert suspicious_samples(with_loo).tolist() == [8, 9, 7]  # by loo_error
    assert suspicious_samples(with_loo, by="weight_si").tolist() == [7, 9, 8]
    without = SimpleNamespace(weight_si=weight, indices=torch.tensor([7, 8, 9]))
    assert suspicious_samples(without).tolist() == [7, 9, 8]  # falls back to weight SI


def test_suspicious_samples_errors():
    with pytest.raises(ValueError, match="NaN"):
        suspicious_samples(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D"):
        suspicious_samples(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="`indices` must have one entry per score"):
        suspicious_samples(torch.zeros(3), indices=[1, 2])
    with pytest.raises(ValueError, match="`k` must be >= 0"):
        suspicious_samples(torch.zeros(3), k=-1)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.99, 1.0])
def test_one_shot_summary_keeps_top_fraction(fraction):
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(37, generator=gen)
    keep = summarize_dataset(scores, keep_fraction=fraction)
    n_keep = math.ceil(fraction * 37)
    ref = sorted(sorted(range(37), key=lambda i: -scores[i].item())[:n_keep])
    assert keep.tolist() == ref


def _reference_iterative(score_of, n, fraction, step):
    """Plain-Python reference of the authors' loop: drop ceil(step*|R|) lowest, rescore."""
    remaining = list(range(n))
    target = math.ceil(fraction * n)
    while len(remaining) > target:
        s = score_of(remaining)
        n_remove = min(len(remaining) - target, max(1, math.ceil(step * len(remaining))))
        order = sorted(range(len(remaining)), key=lambda j: (-s[j], j))
        remaining = [remaining[j] for j in order[: len(remaining) - n_remove]]
    return sorted(remaining)


def test_iterative_summary_rescores_remaining_set_and_matches_reference():
    # a sample is redundant (low score) while its "twin" (same value // 2) is still present:
    # one-shot scoring drops both twins, iterative rescoring keeps one of each pair.
    values = torch.arange(20)
    base = torch.linspace(0, 1, 20)

    def score_of(remaining):
        rem = torch.as_tensor(remaining)
        twins = (values[rem][:, None] // 2 == values[rem][None, :] // 2).sum(1) - 1
        return (base[rem] + 2.0 * (twins == 0).double()).tolist()

    calls = []

    def score_fn(idx):
        calls.append(idx.numel())
        return torch.tensor(score_of(idx.tolist()), dtype=torch.float64)

    keep = summarize_dataset(score_fn, keep_fraction=0.5, num_samples=20, step_fraction=0.05)
    assert keep.tolist() == _reference_iterative(score_of, 20, 0.5, 0.05)
    assert calls == list(range(20, 10, -1))  # one removal per round: ceil(0.05 * |R|) = 1
    assert len({int(i) // 2 for i in keep}) == 10  # one of each pair survives
    one_shot = summarize_dataset(torch.tensor(score_of(list(range(20)))), keep_fraction=0.5)
    assert len({int(i) // 2 for i in one_shot}) < 10


def test_iterative_summary_with_fixed_scores_equals_one_shot_and_validates():
    scores = torch.rand(25, generator=torch.Generator().manual_seed(3))
    fn = lambda idx: scores[idx]
    cands = torch.arange(25)
    assert torch.equal(
        summarize_dataset(fn, keep_fraction=0.3, indices=cands, step_fraction=0.1),
        summarize_dataset(scores, keep_fraction=0.3),
    )
    with pytest.raises(ValueError, match="`keep_fraction` must be in"):
        summarize_dataset(scores, keep_fraction=0.0)
    with pytest.raises(ValueError, match="`step_fraction` must be in"):
        summarize_dataset(fn, keep_fraction=0.5, num_samples=25, step_fraction=1.5)
    with pytest.raises(ValueError, match="must return shape"):
        summarize_dataset(lambda idx: torch.zeros(3), keep_fraction=0.5, num_samples=25)


def test_aggregate_by_group_matches_numpy():
    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(40, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 4, (40,), generator=gen)
    groups[0] = 9  # a singleton group
    out = aggregate_by_group(SimpleNamespace(weight_si=scores), groups)
    s, g = scores.numpy(), groups.numpy()
    uniq = np.unique(g)
    assert out.groups.tolist() == uniq.tolist()
    for j, gid in enumerate(uniq):
        members = s[g == gid]
        assert out.count[j] == members.size
        assert out.mean[j].item() == pytest.approx(members.mean())
        assert out.std[j].item() == pytest.approx(members.std(ddof=1) if members.size > 1 else 0.0)
        assert out.median[j].item() == pytest.approx(np.sort(members)[(members.size - 1) // 2])
        assert out.total[j].item() == pytest.approx(members.sum())
    assert out.as_rows()[-1][:2] == (9, 1)
    with pytest.raises(ValueError, match="`groups` must have one entry per score"):
        aggregate_by_group(scores, groups[:3])


def test_iterative_schedule_last_round_removes_only_what_is_needed():
    sizes = []
    scores = torch.rand(20, generator=torch.Generator().manual_seed(4))

    def score_fn(idx):
        sizes.append(idx.numel())
        return scores[idx]

    keep = summarize_dataset(score_fn, keep_fraction=0.5, num_samples=20, step_fraction=0.2)
    assert sizes == [20, 16, 12]  # remove ceil(0.2*20)=4, ceil(0.2*16)=4, then only 2
    assert keep.numel() == 10


def test_suspicious_samples_by_leave_one_out_error():
    from lightning_info.functional import unique_information_from_kernels

    g = torch.Generator().manual_seed(0)
    jac = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = (jac[:, 0] > 0).long()
    y[3] = 1 - y[3]  # one flipped label: the rest of the data predicts it worst
    out = unique_information_from_kernels(
        jac @ jac.T, None, torch.zeros(12), y, learning_rate=0.1, weight_decay=0.05
    )
    errors = out.loo_residual.square().sum(1)
    ranked = suspicious_samples(out, by="loo_error")
    assert ranked.tolist() == torch.argsort(errors, descending=True, stable=True).tolist()
