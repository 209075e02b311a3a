"""Input fuzzing of the public functional API (issue 8, item 1).

Every generated input must either give a finite, documented value or raise ``ValueError`` /
``TypeError`` whose message names the offending argument (e.g. contains "`embeddings`"); never a
silent NaN or an exception of another type from deep inside torch/sklearn. Whether an input is
valid is decided by an independent oracle written here (2-D, N >= 2, finite after conversion),
not by the library. Library bugs found here keep a regression test each at the end
(``test_bug_*``), checked against closed-form values where there is one.
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from lightning_info.functional import (
    classic_shannon_entropy,
    classic_shannon_mutual_information,
    diffusion_kernel,
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
    unique_information_from_kernels,
)

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow],
)

DTYPES = ["float16", "float32", "float64", "int64", "int32", "bool"]
KINDS = ["random", "duplicated", "rank1", "constant", "shifted"]
SCALES = [1e-30, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e30]
#: at most one defect per generated input; about half the inputs have none
DEFECTS = ["none"] * 7 + ["nan", "inf", "-inf", "1d", "3d", "n0", "n1"]


# ---------------------------------------------------------------------------------------------
# generators and oracles
# ---------------------------------------------------------------------------------------------
def _make_array(n: int, d: int, kind: str, scale: float, seed: int) -> np.ndarray:
    """An (n, d) float64 array of the given structure, times ``scale``."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        x = rng.standard_normal((n, d))
    elif kind == "duplicated":
        uniq = rng.standard_normal((max(1, n // 3), d))
        x = uniq[rng.integers(0, len(uniq), n)]
    elif kind == "rank1":
        x = rng.standard_normal((n, 1)) @ rng.standard_normal((1, d))
    elif kind == "constant":
        x = np.full((n, d), rng.standard_normal())
    else:  # "shifted": far from the origin relative to the spread
        x = rng.standard_normal((n, d)) + 1e3
    return x * scale


def _convert(x: np.ndarray, dtype: str, as_numpy: bool, corrupt: str, seed: int, shape: str):
    """Cast/corrupt/reshape ``x`` and return it as a numpy array or a torch tensor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float16 overflow -> inf is intended
        if dtype.startswith("int"):
            y = np.round(np.clip(x, -(2**30), 2**30)).astype(dtype)
        elif dtype == "bool":
            y = x > np.median(x) if x.size else x.astype(bool)
        else:
            y = x.astype(dtype)
    if corrupt != "none" and y.size and y.dtype.kind == "f":
        rng = np.random.default_rng(seed + 1)
        y = y.copy()
        y.flat[rng.integers(0, y.size)] = float(corrupt)
    if shape == "1d":
        y = y.reshape(-1)
    elif shape == "3d":
        y = y[:, :, None]
    return y if as_numpy else torch.from_numpy(np.ascontiguousarray(y))


def _valid_2d(y) -> bool:
    """Independent oracle: 2-D, at least 2 rows, every value finite."""
    arr = np.asarray(y.numpy() if isinstance(y, torch.Tensor) else y)
    return arr.ndim == 2 and arr.shape[0] >= 2 and bool(np.isfinite(arr.astype(np.float64)).all())


@st.composite
def embeddings_st(
    draw,
    *,
    min_n: int = 0,
    min_d: int = 0,
    allow_bad: bool = True,
    kinds=KINDS,
    scales=SCALES,
    dtypes=DTYPES,
):
    defect = draw(st.sampled_from(DEFECTS)) if allow_bad else "none"
    n = {"n0": 0, "n1": 1}.get(defect) if defect in ("n0", "n1") else None
    n = draw(st.integers(max(min_n, 2), 40)) if n is None or n < min_n else n
    d = draw(st.integers(min_d, 8))
    kind = draw(st.sampled_from(kinds))
    scale = draw(st.sampled_from(scales))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(dtypes))
    as_numpy = draw(st.booleans())
    corrupt = defect if defect in ("nan", "inf", "-inf") else "none"
    shape = defect if defect in ("1d", "3d") else "2d"
    x = _make_array(n, d, kind, scale, seed)
    return _convert(x, dtype, as_numpy, corrupt, seed, shape)


def _event(text: str) -> None:
    """Record a hypothesis outcome event (a no-op outside a hypothesis test)."""
    if currently_in_test_context():
        event(text)


def _call(fn, *args, **kwargs):
    """Run ``fn``; return ``(value, None)`` or ``(None, exc)`` for ValueError/TypeError only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the "constant reference" UserWarning
        try:
            out = fn(*args, **kwargs), None
        except (ValueError, TypeError) as exc:
            _event(f"{fn.__name__}: {type(exc).__name__} {str(exc).split(';')[0][:40]}")
            return None, exc
    _event(f"{fn.__name__}: returned")
    return out


def _assert_names(exc: Exception | None, *names: str) -> None:
    assert exc is not None, f"expected a ValueError/TypeError naming one of {names}"
    msg = str(exc)
    assert any(f"`{name}`" in msg for name in names), f"message does not name {names}: {msg!r}"


def _finite_scalar(value) -> float:
    assert isinstance(value, torch.Tensor), value
    assert value.ndim == 0, value
    out = float(value)
    assert math.isfinite(out), f"non-finite result {out}"
    return out


# ---------------------------------------------------------------------------------------------
# DSE / DSMI
# ---------------------------------------------------------------------------------------------
@FUZZ
@given(x=embeddings_st(), sigma=st.sampled_from([1e-30, 1e-3, 1.0, 10.0, 1e30]))
def test_dse_fuzz(x, sigma):
    value, exc = _call(diffusion_spectral_entropy, x, sigma=sigma)
    if not _valid_2d(x):
        _assert_names(exc, "embeddings")
        return
    assert exc is None, exc
    h = _finite_scalar(value)
    n = x.shape[0]
    assert -1e-9 <= h <= math.log2(n) + 1e-6, (h, n)


@FUZZ
@given(x=embeddings_st(min_n=2, min_d=1, allow_bad=False), t=st.sampled_from([1, 2, 5.5]))
def test_dse_exact_options_fuzz(x, t):
    value, exc = _call(diffusion_spectral_entropy, x, t=t, dtype=torch.float32, max_samples=20)
    if not _valid_2d(x):  # float16 overflow of a 1e30-scaled input becomes inf
        _assert_names(exc, "embeddings")
        return
    assert exc is None, exc
    h = _finite_scalar(value)
    assert -1e-4 <= h <= math.log2(min(x.shape[0], 20)) + 1e-4


@FUZZ
@given(
    x=embeddings_st(
        min_n=10,
        min_d=1,
        allow_bad=False,
        kinds=["random", "shifted"],
        scales=[1.0, 3.0],
        dtypes=["float32", "float64"],
    ),
    sigma=st.sampled_from([1.0, 10.0]),
)
def test_dse_lanczos_fuzz(x, sigma):
    """The stochastic solver on generic full-rank data (degenerate data: see the test_bug_dse_lanczos_* tests)."""
    value, exc = _call(
        diffusion_spectral_entropy,
        x,
        sigma=sigma,
        solver="lanczos",
        num_lanczos_probes=4,
        num_lanczos_steps=8,
    )
    assert exc is None, exc
    h = _finite_scalar(value)
    # stochastic estimate: allow a loose margin around [0, log2 N]
    assert -0.5 <= h <= math.log2(x.shape[0]) + 0.5


def _reference_st():
    return st.sampled_from(["int", "bool", "float", "vector", "short", "nan", "3d", "0d", "str"])


def _make_reference(kind: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "int":
        return torch.from_numpy(rng.integers(0, 3, max(n, 0)))
    if kind == "bool":
        return rng.integers(0, 2, max(n, 0)).astype(bool)
    if kind == "float":
        return torch.from_numpy(rng.standard_normal(max(n, 0)) * 1e20)
    if kind == "vector":
        return rng.standard_normal((max(n, 0), 3)).astype(np.float32)
    if kind == "short":
        return torch.zeros(n + 1, dtype=torch.long)
    if kind == "nan":
        return torch.full((max(n, 0),), float("nan"))
    if kind == "3d":
        return torch.zeros(max(n, 0), 2, 2)
    if kind == "0d":
        return torch.tensor(1)
    return np.array(["a"] * max(n, 0))


_REF_BAD = {"short", "nan", "3d", "0d", "str"}


@FUZZ
@given(
    x=embeddings_st(),
    ref_kind=_reference_st(),
    seed=st.integers(0, 2**31 - 1),
    classic=st.booleans(),
)
def test_mutual_information_fuzz(x, ref_kind, seed, classic):
    n = x.shape[0]
    if ref_kind == "vector" and n == 2:  # num_clusters == N: see test_bug_cluster_reference_k_eq_n
        return
    reference = _make_reference(ref_kind, n, seed)
    if classic:
        value, exc = _call(
            classic_shannon_mutual_information, x, reference, num_clusters=2, seed=seed
        )
    else:
        value, exc = _call(
            diffusion_spectral_mutual_information, x, reference, num_clusters=2, num_repeats=2
        )
    if not _valid_2d(x):
        _assert_names(exc, "embeddings")
        return
    if ref_kind in _REF_BAD:
        _assert_names(exc, "reference")
        return
    if ref_kind == "vector" and n < 2:
        _assert_names(exc, "num_clusters", "reference", "embeddings")
        return
    assert exc is None, exc
    mi = _finite_scalar(value)
    if classic:
        h = float(classic_shannon_entropy(x))
        assert -1e-9 <= mi <= h + 1e-9, (mi, h)
    else:
        assert abs(mi) <= math.log2(n) + 1e-6, (mi, n)


# ---------------------------------------------------------------------------------------------
# classic Shannon entropy and the diffusion kernel
# ---------------------------------------------------------------------------------------------
@FUZZ
@given(x=embeddings_st(), num_bins=st.sampled_from([2, 3, 10, 1, 0, 2.5, True]))
def test_classic_entropy_fuzz(x, num_bins):
    value, exc = _call(classic_shannon_entropy, x, num_bins=num_bins)
    if not _valid_2d(x):
        _assert_names(exc, "embeddings")
        return
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        _assert_names(exc, "num_bins")
        return
    assert exc is None, exc
    h = _finite_scalar(value)
    n, d = x.shape
    assert -1e-9 <= h <= min(math.log2(n), d * math.log2(num_bins)) + 1e-9


@FUZZ
@given(
    x=embeddings_st(),
    sigma=st.sampled_from([1e-30, 1e-3, 1.0, 10.0, 1e3, 1e30, 0.0, -1.0, float("nan"), "1"]),
    dtype=st.sampled_from([None, torch.float32, torch.float64, "float32", torch.float16]),
)
def test_diffusion_kernel_fuzz(x, sigma, dtype):
    value, exc = _call(diffusion_kernel, x, sigma=sigma, dtype=dtype)
    bad_sigma = not isinstance(sigma, float) or not (math.isfinite(sigma) and sigma > 0)
    if bad_sigma:
        _assert_names(exc, "sigma", "embeddings")
        return
    if dtype is torch.float16:
        _assert_names(exc, "dtype", "embeddings")
        return
    if not _valid_2d(x):
        _assert_names(exc, "embeddings")
        return
    assert exc is None, exc
    n = x.shape[0]
    k = value
    assert k.shape == (n, n)
    assert k.dtype == (torch.float32 if dtype in (torch.float32, "float32") else torch.float64)
    kd = k.double()
    assert bool(torch.isfinite(kd).all())
    assert bool((kd >= 0).all())
    assert torch.allclose(kd, kd.T)
    # spectrum of D^{-1} G: real, within [-1, 1] (up to round-off), top eigenvalue 1
    ev = torch.linalg.eigvalsh(kd)
    tol = 1e-3 if k.dtype == torch.float32 else 1e-8
    assert float(ev.max()) == pytest.approx(1.0, abs=tol)
    assert float(ev.min()) >= -1.0 - tol


# ---------------------------------------------------------------------------------------------
# smooth unique information from kernels
# ---------------------------------------------------------------------------------------------
@st.composite
def sui_case(draw):
    n = draw(st.integers(2, 12))
    k = draw(st.sampled_from([1, 2]))
    trace = k > 1 and draw(st.booleans())
    rank = draw(st.integers(1, 8))
    scale = draw(st.sampled_from([1e-30, 1e-6, 1.0, 1e6, 1e30]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    size = n if (trace or k == 1) else n * k
    jac = rng.standard_normal((size, rank))
    ntk = (jac @ jac.T + 1e-3 * np.eye(size)) * scale
    m = draw(st.integers(1, 5))
    held = None
    if draw(st.booleans()):
        held = rng.standard_normal((m if (trace or k == 1) else m * k, rank)) @ jac.T * scale
        held = torch.from_numpy(held)
    f0 = rng.standard_normal((n, k)) if k > 1 else rng.standard_normal(n)
    if draw(st.booleans()):
        targets = torch.from_numpy(rng.integers(0, 2 if k == 1 else k, n))
    else:
        targets = torch.from_numpy(rng.standard_normal((n, k)))
    num_steps = draw(st.sampled_from([None, 1, 7, 30]))
    method = draw(st.sampled_from(["replay", "ridge"]))
    wd = draw(st.sampled_from([0.0, 1e-3, 0.1]))
    frac = draw(st.sampled_from([0.05, 0.5, 0.9, 1.5, 4.0]))
    ntk_dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    return {
        "ntk": torch.from_numpy(ntk).to(ntk_dtype) if scale <= 1e6 else torch.from_numpy(ntk),
        "held": held,
        "f0": torch.from_numpy(np.asarray(f0)),
        "targets": targets,
        "num_steps": num_steps,
        "method": method,
        "wd": wd,
        "frac": frac,
        "n": n,
        "k": k,
        "trace": trace,
    }


@FUZZ
@given(case=sui_case())
def test_unique_information_from_kernels_fuzz(case):
    n, k = case["n"], case["k"]
    theta = case["ntk"].double()
    if case["trace"]:
        theta = theta / k
    a_mat = theta + n * case["wd"] * torch.eye(theta.shape[0], dtype=torch.float64)
    lam_max = float(torch.linalg.eigvalsh(a_mat).max())
    lr = case["frac"] * 2.0 * n / lam_max  # frac < 1: stable GD (eta * lam_max < 2)
    value, exc = _call(
        unique_information_from_kernels,
        case["ntk"],
        case["held"],
        case["f0"],
        case["targets"],
        learning_rate=lr,
        num_steps=case["num_steps"],
        weight_decay=case["wd"],
        method=case["method"],
    )
    if case["frac"] > 1.0:
        _assert_names(exc, "learning_rate")
        return
    if exc is not None:
        # t = inf without weight decay needs a numerically positive-definite kernel
        assert case["wd"] == 0.0, exc
        assert case["num_steps"] is None or case["method"] == "ridge", exc
        _assert_names(exc, "ntk")
        return
    for field in (value.weight_si, value.weight_change_sq):
        assert field.shape == (n,)
        assert field.dtype == torch.float64
        assert bool(torch.isfinite(field).all()), field
        assert bool((field >= 0).all()), field
    assert value.self_prediction_change.shape == (n, k)
    assert bool(torch.isfinite(value.self_prediction_change).all())
    if case["held"] is None:
        assert value.functional_si is None
    else:
        assert value.functional_si.shape == (n,)
        assert bool(torch.isfinite(value.functional_si).all()), value.functional_si
        assert bool((value.functional_si >= 0).all())


@FUZZ
@given(
    bad=st.sampled_from(
        [
            "ntk_nan",
            "ntk_int",
            "ntk_asym",
            "ntk_shape",
            "f0_3d",
            "f0_inf",
            "tgt_len",
            "tgt_range",
            "tgt_nan",
            "held_shape",
            "lr_zero",
            "lr_str",
            "steps_zero",
            "steps_float",
            "wd_neg",
            "noise_zero",
            "method",
            "ridge_c",
            "n1",
            "ntk_list",
        ]
    ),
    n=st.integers(2, 8),
)
def test_unique_information_bad_arguments(bad, n):
    rng = np.random.default_rng(n)
    jac = rng.standard_normal((n, 3))
    ntk = torch.from_numpy(jac @ jac.T + 0.1 * np.eye(n))
    args = {
        "ntk": ntk,
        "heldout_ntk": None,
        "init_outputs": torch.zeros(n),
        "targets": torch.from_numpy(rng.integers(0, 2, n)),
    }
    kwargs = {
        "learning_rate": 0.1,
        "num_steps": 5,
        "weight_decay": 0.0,
        "noise_scale": 1.0,
        "method": "replay",
        "ridge_c": 0.5,
    }
    name = {
        "ntk_nan": "ntk",
        "ntk_int": "ntk",
        "ntk_asym": "ntk",
        "ntk_shape": "ntk",
        "ntk_list": "ntk",
        "f0_3d": "init_outputs",
        "f0_inf": "init_outputs",
        "tgt_len": "targets",
        "tgt_range": "targets",
        "tgt_nan": "targets",
        "held_shape": "heldout_ntk",
        "lr_zero": "learning_rate",
        "lr_str": "learning_rate",
        "steps_zero": "num_steps",
        "steps_float": "num_steps",
        "wd_neg": "weight_decay",
        "noise_zero": "noise_scale",
        "method": "method",
        "ridge_c": "ridge_c",
        "n1": None,
    }[bad]
    if bad == "ntk_nan":
        args["ntk"] = ntk.clone().fill_diagonal_(float("nan"))
    elif bad == "ntk_int":
        args["ntk"] = ntk.long()
    elif bad == "ntk_asym":
        asym = ntk.clone()
        asym[0, 1] += 1.0
        args["ntk"] = asym
    elif bad == "ntk_shape":
        args["ntk"] = ntk[:, :-1]
    elif bad == "ntk_list":
        args["ntk"] = [["a"] * n] * n
    elif bad == "f0_3d":
        args["init_outputs"] = torch.zeros(n, 1, 1)
    elif bad == "f0_inf":
        args["init_outputs"] = torch.full((n,), float("inf"))
    elif bad == "tgt_len":
        args["targets"] = args["targets"][:-1]
    elif bad == "tgt_range":
        args["targets"] = args["targets"] + 5
    elif bad == "tgt_nan":
        args["targets"] = torch.full((n,), float("nan"))
    elif bad == "held_shape":
        args["heldout_ntk"] = torch.zeros(2, n + 1, dtype=torch.float64)
    elif bad == "n1":
        args = {
            "ntk": ntk[:1, :1],
            "heldout_ntk": None,
            "init_outputs": torch.zeros(1),
            "targets": torch.zeros(1, dtype=torch.long),
        }
    else:
        key, val = {
            "lr_zero": ("learning_rate", 0.0),
            "lr_str": ("learning_rate", "0.1"),
            "steps_zero": ("num_steps", 0),
            "steps_float": ("num_steps", 2.5),
            "wd_neg": ("weight_decay", -1.0),
            "noise_zero": ("noise_scale", 0.0),
            "method": ("method", "bogus"),
            "ridge_c": ("ridge_c", -0.5),
        }[bad]
        kwargs[key] = val
    _, exc = _call(
        unique_information_from_kernels,
        args["ntk"],
        args["heldout_ntk"],
        args["init_outputs"],
        args["targets"],
        **kwargs,
    )
    if name is None:  # N = 1: leave-one-out is undefined
        assert isinstance(exc, ValueError), exc
        assert "at least 2" in str(exc), exc
    else:
        _assert_names(exc, name)


@FUZZ
@given(
    option=st.sampled_from(
        [
            ("sigma", 0.0),
            ("sigma", "a"),
            ("t", 0.5),
            ("t", float("inf")),
            ("solver", "qr"),
            ("num_lanczos_probes", 0),
            ("num_lanczos_steps", 1.5),
            ("seed", "x"),
            ("max_samples", 1),
            ("dtype", torch.int64),
            ("dtype", "float16"),
        ]
    ),
    mi=st.booleans(),
)
def test_dse_bad_options(option, mi):
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    key, val = option
    if mi:
        _, exc = _call(diffusion_spectral_mutual_information, x, torch.arange(10) % 2, **{key: val})
    else:
        _, exc = _call(diffusion_spectral_entropy, x, **{key: val})
    _assert_names(exc, key)


# ---------------------------------------------------------------------------------------------
# library bugs found by this fuzzing, fixed: one regression test each
# ---------------------------------------------------------------------------------------------
def _assert_finite_or_named(fn, names, *args, **kwargs):
    """Fails (the documented contract) on any exception other than a named ValueError/TypeError."""
    value, exc = _call(fn, *args, **kwargs)
    if exc is not None:
        _assert_names(exc, *names)
        return
    values = (
        value
        if isinstance(value, torch.Tensor)
        else torch.stack([v for v in (value.weight_si, value.functional_si) if v is not None])
    )
    assert bool(torch.isfinite(values).all()), values


_X10 = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_bug_dse_tiny_sigma():
    """Was: sigma=1e-300 underflowed sigma**2 -> ZeroDivisionError; now a ValueError naming `sigma`."""
    _assert_finite_or_named(diffusion_spectral_entropy, ["sigma"], _X10, sigma=1e-300)


def test_bug_diffusion_kernel_tiny_sigma():
    """Was: sigma=1e-200 underflowed sigma**2 -> ZeroDivisionError; now a ValueError naming `sigma`."""
    _assert_finite_or_named(diffusion_kernel, ["sigma"], _X10, sigma=1e-200)


def test_bug_dse_lanczos_huge_scale():
    _assert_finite_or_named(
        diffusion_spectral_entropy, ["embeddings"], _X10 * 1e30, solver="lanczos"
    )


def test_bug_dse_lanczos_two_clusters():
    x = torch.tensor([[1], [0], [1], [0], [0], [1], [1], [1], [0], [0]], dtype=torch.bool)
    for probes, steps in [(4, 8), (16, 32), (64, 32)]:
        h = float(
            diffusion_spectral_entropy(
                x, sigma=10.0, solver="lanczos", num_lanczos_probes=probes, num_lanczos_steps=steps
            )
        )
        assert -0.5 <= h <= math.log2(10) + 0.5, (probes, steps, h)


def test_bug_dse_lanczos_small_n():
    y = torch.randn(10, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    h = float(diffusion_spectral_entropy(y, sigma=10.0, solver="lanczos"))
    assert -0.5 <= h <= math.log2(10) + 0.5, h


def test_bug_diffusion_kernel_f32_tiny_sigma():
    """Was: dtype=float32, sigma=1e-30: -0.5/sigma**2 overflowed to -inf, 0 * -inf -> all-NaN kernel.

    Closed form: distinct rows are 'infinitely' far apart in units of sigma (G = I), and a
    duplicated row pair has G_ij = 1, degrees 2, so K holds 1/2 on that 2 x 2 block.
    """
    k = diffusion_kernel(_X10.float(), sigma=1e-30, dtype=torch.float32)
    assert torch.equal(k, torch.eye(10))
    dup = torch.cat([_X10, _X10[:1]]).float()  # rows 0 and 10 are equal
    k = diffusion_kernel(dup, sigma=1e-30, dtype=torch.float32)
    expected = torch.eye(11)
    expected[0, 0] = expected[10, 10] = expected[0, 10] = expected[10, 0] = 0.5
    torch.testing.assert_close(k, expected, rtol=0, atol=1e-6)  # rsqrt(2)**2 round-off


def test_bug_diffusion_kernel_f32_huge_scale():
    """Was: float32 data at scale 1e29: squared distances overflowed to inf, inf - inf -> NaN.

    The kernel depends on x / sigma only, so scaling data and sigma by 1e29 must give the float64
    kernel of the unscaled data (computed here with numpy); with sigma = 1 the rows are far apart
    (G = I).
    """
    x = torch.tensor([[1.2573e29], [-1.3210e29], [6.4042e29]])
    k = diffusion_kernel(x, sigma=1.0, dtype=torch.float32)
    assert torch.equal(k, torch.eye(3))
    unit = np.array([[1.2573], [-1.3210], [6.4042]])
    g = np.exp(-((unit - unit.T) ** 2) / 2.0)
    d = g.sum(1)
    expected = g / np.sqrt(np.outer(d, d))
    for scale in (1e29, 1e-29, 1e30):
        got = diffusion_kernel(x / 1e29 * scale, sigma=scale, dtype=torch.float32)
        assert bool(torch.isfinite(got).all()), (scale, got)
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("fn", ["dsmi", "classic"])
def test_bug_cluster_reference_k_eq_n(fn):
    ref = np.random.default_rng(0).standard_normal((3, 3))
    func = {
        "dsmi": diffusion_spectral_mutual_information,
        "classic": classic_shannon_mutual_information,
    }[fn]
    _assert_finite_or_named(func, ["num_clusters", "reference"], _X10[:3], ref, num_clusters=3)


def test_bug_classic_entropy_zero_dims():
    """Was: D = 0 features -> RuntimeError from torch.unique; now the documented value 0 (one cell)."""
    assert float(classic_shannon_entropy(torch.zeros(5, 0))) == 0.0
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert float(classic_shannon_mutual_information(np.zeros((5, 0)), labels)) == 0.0


def test_bug_sui_scalar_targets():
    ntk = _X10[:6, :] @ _X10[:6, :].T + 0.1 * torch.eye(6, dtype=torch.float64)
    _assert_finite_or_named(
        unique_information_from_kernels,
        ["targets"],
        ntk,
        None,
        torch.zeros(6),
        torch.tensor(1),
        learning_rate=0.1,
    )


def test_bug_sui_empty_heldout():
    ntk = _X10[:6, :] @ _X10[:6, :].T + 0.1 * torch.eye(6, dtype=torch.float64)
    _assert_finite_or_named(
        unique_information_from_kernels,
        ["heldout_ntk"],
        ntk,
        torch.zeros(0, 6, dtype=torch.float64),
        torch.zeros(6),
        torch.tensor([0, 1, 0, 1, 1, 0]),
        learning_rate=0.1,
        num_steps=5,
    )


_ODD_INPUTS = {
    "string": "abc",
    "none": None,
    "dict": {"a": 1},
    "complex": torch.randn(4, 2, dtype=torch.complex64),
    "object_array": np.array([[1, "a"], [2, None]], dtype=object),
    "str_array": np.array([["a", "b"], ["c", "d"]]),
    "ragged_list": [[1.0, 2.0], [3.0]],
}


@FUZZ
@given(
    odd=st.sampled_from(sorted(_ODD_INPUTS)),
    fn=st.sampled_from([diffusion_spectral_entropy, classic_shannon_entropy, diffusion_kernel]),
)
def test_non_numeric_embeddings(odd, fn):
    _, exc = _call(fn, _ODD_INPUTS[odd])
    assert isinstance(exc, TypeError), exc
    _assert_names(exc, "embeddings")


@FUZZ
@given(
    n=st.integers(2, 20),
    d=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    fn=st.sampled_from([diffusion_spectral_entropy, classic_shannon_entropy, diffusion_kernel]),
)
def test_list_input_matches_tensor(n, d, seed, fn):
    """A nested list of floats is accepted and gives the same value as the float64 tensor."""
    x = np.random.default_rng(seed).standard_normal((n, d))
    from_list = fn(x.tolist())
    from_tensor = fn(torch.from_numpy(x))
    assert torch.allclose(from_list.double(), from_tensor.double(), atol=1e-12)


@FUZZ
@given(
    n=st.integers(2, 30),
    kind=st.sampled_from(["ids", "negative_ids", "bool", "float", "short", "2d", "one_group"]),
    seed=st.integers(0, 2**31 - 1),
    classic=st.booleans(),
)
def test_precomputed_clusters(n, kind, seed, classic):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, 3)))
    ids = rng.integers(0, 4, n)
    clusters = {
        "ids": torch.from_numpy(ids),
        "negative_ids": ids - 10,
        "bool": ids % 2 == 0,
        "float": ids.astype(np.float32),
        "short": torch.from_numpy(ids[:-1]),
        "2d": torch.from_numpy(ids)[:, None],
        "one_group": np.zeros(n, dtype=np.int64),
    }[kind]
    fn = classic_shannon_mutual_information if classic else diffusion_spectral_mutual_information
    kwargs = {} if classic else {"num_repeats": 2}
    value, exc = _call(fn, x, None, clusters=clusters, **kwargs)
    if kind in ("float", "short", "2d"):
        _assert_names(exc, "clusters")
        return
    assert exc is None, exc
    mi = _finite_scalar(value)
    if kind == "one_group":  # a single group carries no information
        assert mi == pytest.approx(0.0, abs=1e-9)
    elif classic:
        assert -1e-9 <= mi <= float(classic_shannon_entropy(x)) + 1e-9
    else:
        assert abs(mi) <= math.log2(n) + 1e-6
