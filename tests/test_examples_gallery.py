"""Smoke tests of the gallery examples' ``--quick`` modes, plus checks of their kNN estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest


@pytest.fixture(scope="module")
def intrinsic(load_example):
    return load_example("dse_intrinsic_dimension")


@pytest.fixture(scope="module")
def corruption(load_example):
    return load_example("dsmi_label_corruption")


def test_kozachenko_leonenko_matches_uniform_cube_entropy(intrinsic):
    # Closed form: the uniform density on [-1, 1]^d has differential entropy d * log2(2) = d bits.
    rng = np.random.default_rng(0)
    for d in (1, 3):
        x = rng.uniform(-1.0, 1.0, size=(3000, d))
        assert intrinsic.kozachenko_leonenko_entropy(x) == pytest.approx(d, abs=0.15)
    # A Gaussian N(0, s^2 I_2): 0.5 * 2 * log2(2 pi e s^2) bits.
    x = rng.normal(scale=2.0, size=(3000, 2))
    expected = math.log2(2 * math.pi * math.e * 4.0)
    assert intrinsic.kozachenko_leonenko_entropy(x) == pytest.approx(expected, abs=0.15)


def test_knn_mutual_information_limits(corruption):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    separated = 100.0 * np.eye(4, 3)[y] + rng.normal(size=(400, 3))
    assert corruption.knn_mutual_information(separated, y) == pytest.approx(2.0, abs=0.05)
    independent = rng.normal(size=(400, 3))
    assert corruption.knn_mutual_information(independent, y) < 0.1


def test_dse_intrinsic_dimension_quick(intrinsic, tmp_path, capsys):
    out = intrinsic.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    png = tmp_path / "dse_intrinsic_dimension.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    assert "DSE" in printed
    assert "CSE" in printed
    assert f"saved {png}" in printed
    res = out["results"]
    assert len(printed.splitlines()) >= len(out["noise_levels"]) * len(out["dims"])
    dse = res["dse"].mean(axis=2)  # (noise, dims)
    # The finding: DSE keeps rising with d at every noise level ...
    assert np.all(np.diff(dse, axis=1) > 0)
    # ... while binned Shannon entropy is pinned at log2 N (150 points) as soon as there is noise.
    assert np.allclose(res["cse"][1:], math.log2(150), atol=0.01)
    assert np.all(np.isfinite(res["knn"]))


def test_dsmi_label_corruption_quick(corruption, tmp_path, capsys):
    out = corruption.main(["--quick", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    png = tmp_path / "dsmi_label_corruption.png"
    assert png.is_file()
    assert png.stat().st_size > 10_000
    assert "DSMI" in printed
    assert "CSMI" in printed
    assert f"saved {png}" in printed
    dsmi = out["results"]["dsmi"].mean(axis=2)  # (branch counts, fractions 0, 0.5, 1)
    # The finding: DSMI falls as corruption rises, to about 0 for fully shuffled labels.
    assert np.all(np.diff(dsmi, axis=1) < 0)
    assert np.all(dsmi[:, 0] > 0.5)
    assert np.all(np.abs(dsmi[:, -1]) < 0.1)
    knn = out["results"]["knn"].mean(axis=2)
    assert np.all(knn[:, 0] > knn[:, -1])
