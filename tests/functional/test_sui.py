"""Smooth unique information vs brute-force leave-one-out retraining (float64)."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from lightning_info.functional.jacobian import jacobian_features, per_sample_jacobians
from lightning_info.functional.sui import (
    smooth_unique_information,
    unique_information_from_features,
    unique_information_from_kernels,
)
from tests._reference_sui import brute_force_loo

F64 = torch.float64


def _problem(n, k, p, m, seed=0):
    gen = torch.Generator().manual_seed(seed)
    jac = torch.randn(n, k, p, generator=gen, dtype=F64)
    jac_star = torch.randn(m, k, p, generator=gen, dtype=F64)
    f0 = 0.3 * torch.randn(n, k, generator=gen, dtype=F64)
    y = torch.randn(n, k, generator=gen, dtype=F64)
    return jac, jac_star, f0, y


def _kernels(jac, jac_star):
    flat, flat_star = jac.flatten(0, 1), jac_star.flatten(0, 1)
    return flat @ flat.T, flat_star @ flat.T


def _stable_lr(theta, n, wd, frac=0.9):
    lam_max = float(torch.linalg.eigvalsh(theta).max()) + n * wd
    return frac * 2 * n / lam_max  # η λ_max = 1.8 < 2: oscillating but convergent GD


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


CASES = [
    {"id": "K1-tinf-wd", "n": 9, "k": 1, "p": 6, "t": None, "wd": 0.03},
    {"id": "K1-tinf-nowd", "n": 8, "k": 1, "p": 20, "t": None, "wd": 0.0},
    {"id": "K1-t40-nowd-singular", "n": 9, "k": 1, "p": 5, "t": 40, "wd": 0.0},
    {"id": "K1-t1-wd", "n": 7, "k": 1, "p": 12, "t": 1, "wd": 0.05},
    {"id": "K1-t60-wd", "n": 9, "k": 1, "p": 12, "t": 60, "wd": 0.02},
    {"id": "K3-tinf-wd", "n": 6, "k": 3, "p": 10, "t": None, "wd": 0.05},
    {"id": "K3-tinf-nowd", "n": 5, "k": 3, "p": 30, "t": None, "wd": 0.0},
    {"id": "K3-t25-nowd", "n": 6, "k": 3, "p": 14, "t": 25, "wd": 0.0},
    {"id": "K3-t25-wd", "n": 6, "k": 3, "p": 14, "t": 25, "wd": 0.04},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["id"])
def test_kernel_scores_equal_brute_force_loo(case):
    n, k, t, wd = case["n"], case["k"], case["t"], case["wd"]
    jac, jac_star, f0, y = _problem(n, k, case["p"], 4)
    theta, theta_star = _kernels(jac, jac_star)
    lr = _stable_lr(theta, n, wd)
    ref = brute_force_loo(jac, jac_star, f0, y, lr=lr, t=t, wd=wd)
    out = unique_information_from_kernels(
        theta, theta_star, f0, y, learning_rate=lr, num_steps=t, weight_decay=wd, noise_scale=0.5
    )
    assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8
    assert _rel(out.function_change_sq, ref["f_sq"]) < 1e-8
    assert _rel(out.self_prediction_change, ref["self_change"]) < 1e-8
    assert _rel(out.loo_residual, ref["loo_residual"]) < 1e-8
    torch.testing.assert_close(
        out.loo_error, ref["loo_residual"].square().sum(1), rtol=1e-7, atol=0
    )
    torch.testing.assert_close(out.weight_si, ref["w_sq"] / (2 * 0.5**2), rtol=1e-8, atol=0)
    torch.testing.assert_close(out.functional_si, ref["f_sq"] / (2 * 0.5**2), rtol=1e-8, atol=0)


def test_long_horizon_exact_matches_brute_force():
    jac, jac_star, f0, y = _problem(12, 1, 8, 3, seed=5)
    theta, theta_star = _kernels(jac, jac_star)
    lr = _stable_lr(theta, 12, 0.01, frac=0.5)
    ref = brute_force_loo(jac, jac_star, f0, y, lr=lr, t=700, wd=0.01)
    out = unique_information_from_kernels(
        theta, theta_star, f0, y, learning_rate=lr, num_steps=700, weight_decay=0.01
    )
    assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8
    assert _rel(out.function_change_sq, ref["f_sq"]) < 1e-8
    assert _rel(out.loo_residual, ref["loo_residual"]) < 1e-8


@pytest.mark.parametrize("t", [None, 30], ids=["tinf", "t30"])
def test_trace_kernel_equals_brute_force_when_kernel_is_kronecker(t):
    # J[i, k] = e_k ⊗ φ_i: the full kernel is exactly Θ1 ⊗ I_K and trace = K Θ1
    n, k, d = 7, 3, 4
    gen = torch.Generator().manual_seed(2)
    phi = torch.randn(n, d, generator=gen, dtype=F64)
    phi_star = torch.randn(3, d, generator=gen, dtype=F64)
    eye = torch.eye(k, dtype=F64)
    jac = torch.einsum("kl,nd->nkld", eye, phi).reshape(n, k, k * d)
    jac_star = torch.einsum("kl,nd->nkld", eye, phi_star).reshape(3, k, k * d)
    f0 = 0.2 * torch.randn(n, k, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    y = torch.nn.functional.one_hot(labels, k).to(F64)
    wd = 0.02
    lr = _stable_lr(phi @ phi.T, n, wd)
    ref = brute_force_loo(jac, jac_star, f0, y, lr=lr, t=t, wd=wd)
    trace, trace_star = k * phi @ phi.T, k * phi_star @ phi.T
    out = unique_information_from_kernels(
        trace, trace_star, f0, labels, learning_rate=lr, num_steps=t, weight_decay=wd
    )
    assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8
    assert _rel(out.function_change_sq, ref["f_sq"]) < 1e-8
    assert _rel(out.self_prediction_change, ref["self_change"]) < 1e-8
    if t is None:
        feats = unique_information_from_features(
            jac, jac_star, f0, labels, learning_rate=lr, weight_decay=wd, ntk="trace"
        )
        # trace features: concatenation over outputs / sqrt(K) gives (Θ_trace / K) ⊗ I_K
        assert _rel(feats.weight_change_sq, ref["w_sq"]) < 1e-8


@pytest.mark.parametrize(
    ("k", "t", "method"),
    [(1, None, "replay"), (3, None, "replay"), (1, 20, "ridge"), (3, 20, "ridge")],
)
def test_feature_space_path_equals_kernel_path(k, t, method):
    n = 10
    jac, jac_star, f0, y = _problem(n, k, 7, 5, seed=3)
    theta, theta_star = _kernels(jac, jac_star)
    kw = dict(
        learning_rate=_stable_lr(theta, n, 0.02), num_steps=t, weight_decay=0.02, method=method
    )
    a = unique_information_from_kernels(theta, theta_star, f0, y, **kw)
    b = unique_information_from_features(jac, jac_star, f0, y, **kw)
    for field in (
        "weight_change_sq",
        "function_change_sq",
        "self_prediction_change",
        "loo_residual",
    ):
        assert _rel(getattr(b, field), getattr(a, field)) < 1e-9


@pytest.mark.parametrize("ntk", ["full", "trace"])
def test_feature_space_path_in_sample_chunks_equals_kernel_path(monkeypatch, ntk):
    from lightning_info.functional import _sui_algebra as sui_algebra

    n, k = 11, 3
    jac, jac_star, f0, y = _problem(n, k, 9, 4, seed=5)
    theta, theta_star = _kernels(jac, jac_star)
    if ntk == "trace":  # (Θ_trace / K) ⊗ I_K, given to the kernel path in its trace form
        theta = sum(jac[:, c] @ jac[:, c].T for c in range(k))
        theta_star = sum(jac_star[:, c] @ jac[:, c].T for c in range(k))
    kw = dict(learning_rate=_stable_lr(theta, n, 0.05), weight_decay=0.05)
    a = unique_information_from_kernels(theta, theta_star, f0, y, **kw)
    monkeypatch.setattr(sui_algebra, "_FEATURE_CHUNK_BYTES", 1)  # one sample per chunk
    b = unique_information_from_features(jac, jac_star, f0, y, ntk=ntk, **kw)
    for field in (
        "weight_change_sq",
        "function_change_sq",
        "self_prediction_change",
        "loo_residual",
    ):
        assert _rel(getattr(b, field), getattr(a, field)) < 1e-9


def test_ridge_approximation_ranks_like_exact():
    jac, jac_star, f0, y = _problem(40, 1, 60, 20, seed=4)
    y = (y > 0).to(F64)
    theta, theta_star = _kernels(jac / 60**0.5, jac_star / 60**0.5)
    kw = dict(learning_rate=_stable_lr(theta, 40, 0.0, frac=0.4), num_steps=30)
    exact = unique_information_from_kernels(theta, theta_star, f0, y, **kw)
    ridge = unique_information_from_kernels(theta, theta_star, f0, y, method="ridge", **kw)
    assert spearmanr(exact.functional_si, ridge.functional_si)[0] > 0.9
    assert spearmanr(exact.weight_si, ridge.weight_si)[0] > 0.9
    # and it is an approximation, not the exact value
    assert _rel(ridge.weight_si, exact.weight_si) > 1e-3


def _train_linear(model, x, y, w0, *, lr, steps, wd):
    """Real full-batch GD (torch.optim.SGD) on mean MSE/2 + wd/2 ||w - w0||²."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((model(x) - y) ** 2).sum(1).mean()
        loss = loss + 0.5 * wd * sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), w0))
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("k", [1, 2])
def test_linear_model_scores_equal_actual_leave_one_out_training(k):
    n, steps, lr, wd = 8, 25, 0.3, 0.05
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    x_star = torch.randn(5, 3, generator=gen, dtype=F64)
    y = torch.randn(n, k, generator=gen, dtype=F64)
    torch.manual_seed(0)
    base = nn.Linear(3, k).double()
    w0 = [p.detach().clone() for p in base.parameters()]

    def fresh():
        m = nn.Linear(3, k).double()
        m.load_state_dict(base.state_dict())
        return m

    m_full = fresh()
    w_full = _train_linear(m_full, x, y, w0, lr=lr, steps=steps, wd=wd)
    w_sq, f_sq, own = [], [], []
    for i in range(n):
        keep = [j for j in range(n) if j != i]
        m_i = fresh()
        # principal-submatrix convention: λ = N wd on N-1 samples, i.e. wd' = wd N / (N-1)
        w_i = _train_linear(m_i, x[keep], y[keep], w0, lr=lr, steps=steps, wd=wd * n / (n - 1))
        w_sq.append(float(((w_i - w_full) ** 2).sum()))
        with torch.no_grad():
            f_sq.append(float(((m_i(x_star) - m_full(x_star)) ** 2).sum(1).mean()))
            own.append(m_i(x[i]) - m_full(x[i]))
    out = smooth_unique_information(
        base, x, y, x_star, learning_rate=lr, num_steps=steps, weight_decay=wd
    )
    torch.testing.assert_close(
        out.weight_change_sq, torch.tensor(w_sq, dtype=F64), rtol=1e-8, atol=0
    )
    torch.testing.assert_close(
        out.function_change_sq, torch.tensor(f_sq, dtype=F64), rtol=1e-8, atol=0
    )
    torch.testing.assert_close(out.self_prediction_change, torch.stack(own), rtol=1e-7, atol=1e-12)


def _mlp(k):
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k)).double()


@pytest.mark.parametrize("ntk", ["full", "trace"])
def test_model_level_matches_brute_force_on_explicit_jacobians(ntk):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(9, 4, generator=gen, dtype=F64)
    x_star = torch.randn(4, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0])
    model = _mlp(3)
    kw = dict(learning_rate=0.5, num_steps=15, weight_decay=0.01, ntk=ntk, params="2.")
    out = smooth_unique_information(model, x, labels, x_star, **kw)
    jac = per_sample_jacobians(model, x, params="2.")
    jac_star = per_sample_jacobians(model, x_star, params="2.")
    with torch.no_grad():
        f0 = model(x)
    y = torch.nn.functional.one_hot(labels, 3).to(F64)
    # the last linear layer's kernel is exactly Θ1 ⊗ I_K: trace and full agree with brute force
    ref = brute_force_loo(jac, jac_star, f0, y, lr=0.5, t=15, wd=0.01)
    assert _rel(out.weight_change_sq, ref["w_sq"]) < 1e-8
    assert _rel(out.function_change_sq, ref["f_sq"]) < 1e-8


def test_projection_auto_uses_feature_space():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(12, 4, generator=gen, dtype=F64)
    y = torch.randn(12, 2, generator=gen, dtype=F64)
    model = _mlp(2)
    kw = dict(learning_rate=0.2, weight_decay=0.05)
    out = smooth_unique_information(model, x, y, x[:3], projection_dim=8, seed=1, **kw)
    phi = jacobian_features(model, x, projection_dim=8, seed=1)
    phi_star = jacobian_features(model, x[:3], projection_dim=8, seed=1)
    with torch.no_grad():
        f0 = model(x)
    ref = unique_information_from_features(phi, phi_star, f0, y, **kw)
    torch.testing.assert_close(out.weight_si, ref.weight_si)
    # same projection through the kernel path
    flat, flat_star = phi.flatten(0, 1), phi_star.flatten(0, 1)
    kern = unique_information_from_kernels(flat @ flat.T, flat_star @ flat.T, f0, y, **kw)
    torch.testing.assert_close(out.weight_si, kern.weight_si, rtol=1e-8, atol=0)


def test_duplicating_a_sample_lowers_the_si_of_both_copies():
    jac, jac_star, f0, y = _problem(10, 1, 30, 5, seed=11)
    dup = lambda a: torch.cat([a, a[:1]])
    kw = dict(learning_rate=0.05, weight_decay=1e-3)
    theta, theta_star = _kernels(jac, jac_star)
    single = unique_information_from_kernels(theta, theta_star, f0, y, **kw)
    theta2, theta_star2 = _kernels(dup(jac), jac_star)
    double = unique_information_from_kernels(theta2, theta_star2, dup(f0), dup(y), **kw)
    for field in ("weight_si", "functional_si"):
        before, after = getattr(single, field)[0], getattr(double, field)
        assert after[0] < 0.5 * before
        assert after[-1] < 0.5 * before


def test_integer_labels_k1_are_zero_one_targets():
    jac, jac_star, f0, _ = _problem(6, 1, 9, 2)
    theta, _ = _kernels(jac, jac_star)
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    a = unique_information_from_kernels(
        theta, None, f0, labels, learning_rate=0.1, weight_decay=0.1
    )
    b = unique_information_from_kernels(
        theta, None, f0, labels.to(F64)[:, None], learning_rate=0.1, weight_decay=0.1
    )
    torch.testing.assert_close(a.weight_si, b.weight_si)
    assert a.functional_si is None
    assert a.function_change_sq is None


# ---------------------------------------------------------------------------------------------
# documented errors
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def small():
    jac, jac_star, f0, y = _problem(6, 1, 4, 3)
    theta, theta_star = _kernels(jac, jac_star)
    return theta, theta_star, f0, y


def test_error_not_positive_definite_at_t_inf(small):
    theta, theta_star, f0, y = small  # rank 4 < N = 6
    with pytest.raises(ValueError, match=r"weight_decay > 0.*finite `num_steps`"):
        unique_information_from_kernels(theta, theta_star, f0, y, learning_rate=0.1)
    # a finite horizon or weight decay works
    unique_information_from_kernels(theta, theta_star, f0, y, learning_rate=0.1, num_steps=5)
    unique_information_from_kernels(theta, theta_star, f0, y, learning_rate=0.1, weight_decay=0.1)


@pytest.mark.parametrize(("t", "method"), [(None, "replay"), (10, "replay"), (10, "ridge")])
def test_error_learning_rate_too_large(small, t, method):
    theta, theta_star, f0, y = small
    lam_max = float(torch.linalg.eigvalsh(theta).max()) + 6 * 0.1
    lr_max = 2 * 6 / lam_max
    kw = dict(num_steps=t, weight_decay=0.1, method=method)
    with pytest.raises(ValueError, match="max stable learning_rate"):
        unique_information_from_kernels(theta, theta_star, f0, y, learning_rate=1.05 * lr_max, **kw)
    unique_information_from_kernels(theta, theta_star, f0, y, learning_rate=0.9 * lr_max, **kw)
    jac, jac_star, _, _ = _problem(6, 1, 4, 3)
    with pytest.raises(ValueError, match="max stable learning_rate"):
        unique_information_from_features(
            jac, jac_star, f0, y, learning_rate=1.05 * lr_max, weight_decay=0.1
        )


def test_errors_shapes_and_values(small):
    theta, theta_star, f0, y = small
    kw = dict(learning_rate=0.1, weight_decay=0.1)
    with pytest.raises(ValueError, match="targets"):
        unique_information_from_kernels(theta, theta_star, f0, y[:5], **kw)
    with pytest.raises(ValueError, match="ntk"):
        unique_information_from_kernels(theta[:5, :5], theta_star, f0, y, **kw)
    with pytest.raises(ValueError, match="heldout_ntk"):
        unique_information_from_kernels(theta, theta_star[:, :5], f0, y, **kw)
    bad = theta.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        unique_information_from_kernels(bad, theta_star, f0, y, **kw)
    bad_y = y.clone()
    bad_y[2] = float("inf")
    with pytest.raises(ValueError, match=r"targets.*NaN or infinite"):
        unique_information_from_kernels(theta, theta_star, f0, bad_y, **kw)
    asym = theta.clone()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        unique_information_from_kernels(asym, theta_star, f0, y, **kw)
    with pytest.raises(ValueError, match=r"integer `targets` must lie in \[0, 1\]"):
        unique_information_from_kernels(theta, None, f0, torch.tensor([0, 1, 2, 0, 1, 0]), **kw)
    with pytest.raises(ValueError, match="at least 2"):
        unique_information_from_kernels(theta[:1, :1], None, f0[:1], y[:1], **kw)
    with pytest.raises(ValueError, match="learning_rate"):
        unique_information_from_kernels(theta, None, f0, y, learning_rate=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        unique_information_from_kernels(theta, None, f0, y, num_steps=0, **kw)
    with pytest.raises(ValueError, match="method"):
        unique_information_from_kernels(theta, None, f0, y, method="fast", **kw)
    jac, _, _, _ = _problem(6, 1, 4, 3)
    with pytest.raises(ValueError, match="method='replay'"):
        unique_information_from_features(jac, None, f0, y, num_steps=10, **kw)
    with pytest.raises(ValueError, match="weight_decay > 0"):
        unique_information_from_features(jac, None, f0, y, learning_rate=0.1)


def test_errors_model_level():
    x = torch.randn(6, 4, dtype=F64)
    model = _mlp(2)
    with pytest.raises(ValueError, match="same number of samples"):
        smooth_unique_information(model, x, torch.zeros(5, 2, dtype=F64), learning_rate=0.1)

    class Rank3(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4).double()

        def forward(self, x):
            return self.lin(x).view(-1, 2, 2)

    with pytest.raises(ValueError, match=r"\(B,\) or \(B, K\)"):
        smooth_unique_information(Rank3(), x, torch.zeros(6, 2, 2, dtype=F64), learning_rate=0.1)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="train_inputs"):
        smooth_unique_information(model, bad, torch.zeros(6, 2, dtype=F64), learning_rate=0.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_feature_path_leaves_the_callers_features_untouched_and_agrees_across_dtypes(dtype):
    """The trace rows are scaled in place only on the call's own float64 copy: float64 features
    passed by the caller are not modified, and float32 features give the float64 scores."""
    gen = torch.Generator().manual_seed(3)
    phi64 = torch.randn(30, 3, 8, generator=gen, dtype=torch.float64)
    phi = phi64.to(dtype)
    before = phi.clone()
    y = torch.randint(0, 3, (30,), generator=gen)
    kw = {"learning_rate": 0.05, "weight_decay": 0.1, "ntk": "trace", "method": "ridge"}
    out = unique_information_from_features(phi, None, torch.zeros(30, 3), y, **kw)
    assert torch.equal(phi, before)
    ref = unique_information_from_features(phi64.clone(), None, torch.zeros(30, 3), y, **kw)
    torch.testing.assert_close(out.weight_si, ref.weight_si, rtol=1e-5, atol=1e-9)
