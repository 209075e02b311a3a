"""Tests for the classic binned Shannon entropy / mutual information baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _reference import ref_bin_scalar, ref_cse, ref_csmi

from lightning_info.functional import (
    classic_shannon_entropy,
    classic_shannon_mutual_information,
)

cse = classic_shannon_entropy
csmi = classic_shannon_mutual_information


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("num_bins", [2, 3, 5])
@pytest.mark.parametrize("dim", [1, 3, 6])
def test_cse_matches_loop_reference(num_bins, dim):
    x = np.random.default_rng(dim).normal(size=(120, dim))
    assert cse(torch.from_numpy(x), num_bins=num_bins).item() == pytest.approx(
        ref_cse(x, num_bins), abs=1e-12
    )


def test_cse_bounds_and_saturation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 40))  # 2^40 cells >> 64 samples: every sample in its own cell
    assert cse(x).item() == pytest.approx(math.log2(64), abs=1e-12)
    small = rng.normal(size=(500, 2))
    assert cse(small, num_bins=3).item() <= 2 * math.log2(3) + 1e-12


def test_cse_constant_dims_and_identical_points():
    assert cse(np.ones((30, 4))).item() == 0.0
    x = np.c_[np.r_[np.zeros(10), np.ones(10)], np.full(20, 7.0)]
    assert cse(x).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("num_bins", [2, 4])
def test_csmi_matches_loop_reference(num_bins):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    x = rng.normal(size=(150, 3)) + y[:, None]
    expected = ref_csmi(x, y, num_bins)
    assert csmi(x, y, num_bins=num_bins).item() == pytest.approx(expected, abs=1e-12)
    assert expected > 0.05


def test_csmi_properties():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    y = rng.integers(0, 4, 200)
    value = csmi(x, y).item()
    h_y = -sum(p * math.log2(p) for p in np.bincount(y) / 200)
    assert -1e-12 <= value <= min(cse(x).item(), h_y) + 1e-12
    assert abs(csmi(x, np.zeros(200, dtype=int)).item()) < 1e-12
    # the label is the first dimension's bin: CSMI = H(label) when it is all the cells encode
    z = rng.normal(size=(200, 1))
    lab = (z[:, 0] >= (z.min() + z.max()) / 2).astype(int)
    h_lab = -sum(p * math.log2(p) for p in np.bincount(lab) / 200)
    assert csmi(z, lab).item() == pytest.approx(h_lab, abs=1e-12)


def test_csmi_reference_handling_shared_with_dsmi():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(90, 4))
    s = rng.normal(size=90)
    binned = torch.from_numpy(ref_bin_scalar(s, 5))
    assert csmi(x, s, num_clusters=5).item() == csmi(x, None, clusters=binned).item()
    vectors = np.repeat(np.eye(3, 4) * 30, 30, axis=0) + rng.normal(size=(90, 4))
    groups = np.repeat(np.arange(3), 30)
    assert csmi(x, vectors, num_clusters=3).item() == pytest.approx(ref_csmi(x, groups), abs=1e-12)


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda: cse(np.ones((5, 2)), num_bins=1), ValueError, "`num_bins` must be >= 2"),
        (lambda: cse(np.array([[np.nan, 1.0], [0.0, 1.0]])), ValueError, "NaN or infinite"),
        (lambda: cse(np.ones((1, 2))), ValueError, "at least 2 samples"),
        (lambda: cse(np.ones((3, 2, 2))), ValueError, "must be 2-D"),
        (lambda: csmi(np.ones((5, 2)), np.arange(4)), ValueError, "got 5 and 4"),
        (lambda: csmi(np.ones((5, 2)), np.r_[np.arange(4.0), np.inf]), ValueError, "`reference`"),
        (lambda: csmi(np.ones((5, 2)), None), ValueError, "`reference` is required"),
    ],
    ids=["bins1", "nan", "one_row", "rank3", "length", "ref_inf", "no_ref"],
)
def test_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_zero_dimensional_embeddings_give_zero():
    """D = 0 features: every sample is in the one empty cell, so H = 0 and I = 0 (documented)."""
    assert float(classic_shannon_entropy(torch.zeros(7, 0))) == 0.0
    assert float(classic_shannon_entropy(np.zeros((3, 0)), num_bins=5)) == 0.0
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0])
    assert float(classic_shannon_mutual_information(torch.zeros(7, 0), labels)) == 0.0
