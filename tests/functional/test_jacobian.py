"""Per-sample Jacobians and empirical NTK vs an explicit autograd loop and explicit J Jᵀ."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_info.functional.jacobian import (
    _ExplicitLinearization,
    _linearize,
    _Projector,
    _StructuredLinearization,
    empirical_ntk,
    jacobian_features,
    kernel_from_features,
    model_outputs,
    per_sample_jacobians,
)


def _mlp(k: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, k)
    ).double()
    # non-trivial running statistics so that eval-mode BatchNorm is not the identity
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 2.0)
    return model


def _loop_jacobian(model: nn.Module, x: torch.Tensor, names=None) -> torch.Tensor:
    """Reference: one sample and one output at a time with torch.autograd.grad, eval mode."""
    was = model.training
    model.eval()
    params = [p for n, p in model.named_parameters() if names is None or n in names]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        per_k = []
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], params, retain_graph=True)
            per_k.append(torch.cat([g.reshape(-1) for g in grads]))
        rows.append(torch.stack(per_k))
    model.train(was)
    return torch.stack(rows)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(
        4, 3, generator=gen, dtype=torch.float64
    )


def test_vmap_jacobian_matches_autograd_loop_and_restores_mode(data):
    x, _ = data
    model = _mlp()
    model.train()
    ref = _loop_jacobian(model, x)
    jac = per_sample_jacobians(model, x)
    assert jac.shape == (7, 2, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(jac, ref, rtol=1e-12, atol=1e-12)
    assert model.training
    assert model[1].training
    assert model[3].training


def test_chunked_equals_unchunked(data):
    x, _ = data
    model = _mlp()
    torch.testing.assert_close(
        per_sample_jacobians(model, x, chunk_size=2),
        per_sample_jacobians(model, x),
        rtol=1e-13,
        atol=1e-14,
    )


def test_batchnorm_eval_outputs_and_buffers_untouched(data):
    x, _ = data
    model = _mlp()
    model.train()
    before = model[1].running_mean.clone()
    out = model_outputs(model, x, chunk_size=3)
    model.eval()
    expected = model(x).detach()
    torch.testing.assert_close(out, expected)
    assert torch.equal(model[1].running_mean, before)
    per_sample_jacobians(model, x)
    assert torch.equal(model[1].running_mean, before)


def test_model_outputs_are_data_computed_in_bounded_chunks():
    """The default forward batch is bounded (one pass over N = 50,000 images took 17 GB of
    activations on a ResNet-20), the outputs carry no autograd graph, and they equal a
    per-sample loop."""

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
            )
            self.batches = []

        def forward(self, x):
            self.batches.append(x.shape[0])
            return self.net(x)

    torch.manual_seed(0)
    model = Recording().double()
    x = torch.randn(2500, 4, dtype=torch.float64)
    out = model_outputs(model, x)
    assert not out.requires_grad
    assert out.grad_fn is None
    assert model.batches == [1024, 1024, 452]
    with torch.no_grad():
        loop = torch.stack([model.net(xi) for xi in x])
    torch.testing.assert_close(out, loop, rtol=1e-12, atol=1e-14)
    model.batches.clear()
    model_outputs(model, x, chunk_size=1000)
    assert model.batches == [1000, 1000, 500]


def test_ntk_full_and_trace_equal_explicit_products(data):
    x, x2 = data
    model = _mlp(k=3)
    j1, j2 = _loop_jacobian(model, x), _loop_jacobian(model, x2)
    full = empirical_ntk(model, x, x2)
    torch.testing.assert_close(full, j1.reshape(-1, j1.shape[2]) @ j2.reshape(-1, j2.shape[2]).T)
    trace = empirical_ntk(model, x, x2, ntk="trace")
    expected = sum(j1[:, k] @ j2[:, k].T for k in range(3))
    torch.testing.assert_close(trace, expected)


def test_ntk_symmetric_psd_and_x2_none_matches_x2_equal_x1(data):
    x, _ = data
    model = _mlp()
    ntk = empirical_ntk(model, x)
    torch.testing.assert_close(ntk, ntk.T, rtol=0, atol=0)
    assert torch.linalg.eigvalsh(ntk).min() > -1e-10
    torch.testing.assert_close(ntk, empirical_ntk(model, x, x))


@pytest.mark.parametrize("ntk", ["full", "trace"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["x2=None", "x2"])
def test_streaming_blocks_equal_in_memory(data, ntk, symmetric):
    x, x2 = data
    model = _mlp()
    other = None if symmetric else x2
    ref = empirical_ntk(model, x, other, ntk=ntk)
    # a budget of 3 samples' Jacobians forces the block-by-block streaming path
    per_sample = 2 * sum(p.numel() for p in model.parameters()) * 8
    streamed = empirical_ntk(
        model, x, other, ntk=ntk, chunk_size=2, memory_budget_bytes=3 * per_sample
    )
    torch.testing.assert_close(streamed, ref, rtol=1e-12, atol=1e-12)


def test_params_selection_prefix_and_names(data):
    x, _ = data
    model = _mlp()
    full = _loop_jacobian(model, x)
    last = per_sample_jacobians(model, x, params="4.")
    n_last = model[4].weight.numel() + model[4].bias.numel()
    torch.testing.assert_close(last, full[:, :, -n_last:])
    only_w = per_sample_jacobians(model, x, params=["4.weight"])
    torch.testing.assert_close(only_w, _loop_jacobian(model, x, names={"4.weight"}))
    ntk_last = empirical_ntk(model, x, params="4.")
    torch.testing.assert_close(ntk_last, last.reshape(-1, n_last) @ last.reshape(-1, n_last).T)
    with pytest.raises(ValueError, match="selects no parameter"):
        per_sample_jacobians(model, x, params="nope")


def test_unprojected_features_are_the_jacobians(data):
    x, _ = data
    model = _mlp()
    torch.testing.assert_close(jacobian_features(model, x), per_sample_jacobians(model, x))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_projection_is_linear_seeded_and_blockwise_consistent(data, kind):
    x, _ = data
    model = _mlp()
    jac = per_sample_jacobians(model, x)
    p = jac.shape[2]
    d = 40
    feats = jacobian_features(model, x, projection_dim=d, projection=kind, seed=3)
    # recover R by projecting the identity; features are exactly J R
    proj = _Projector(p, d, kind, 3, jac, budget=2**30)(torch.eye(p, dtype=torch.float64))
    torch.testing.assert_close(feats, jac @ proj)
    # identical on every call, different for another seed
    torch.testing.assert_close(
        jacobian_features(model, x, projection_dim=d, projection=kind, seed=3),
        feats,
        rtol=0,
        atol=0,
    )
    other = jacobian_features(model, x, projection_dim=d, projection=kind, seed=4)
    assert not torch.allclose(other, feats)
    # P = 2500 > one 1024-row block: a budget below P x d regenerates blocks per call, same R
    big = torch.randn(3, 2, 2500, dtype=torch.float64)
    cached = _Projector(2500, d, kind, 3, big, budget=2**30)
    small = _Projector(2500, d, kind, 3, big, budget=1024 * d * 8)
    assert cached.cached is not None
    assert small.cached is None
    torch.testing.assert_close(small(big), cached(big))
    if kind == "rademacher":
        torch.testing.assert_close(proj.abs(), torch.full_like(proj, d**-0.5))


def test_projection_large_d_is_near_orthogonal_and_ntk_converges(data):
    x, _ = data
    model = _mlp()
    jac = per_sample_jacobians(model, x).reshape(14, -1)
    p = jac.shape[1]
    exact = jac @ jac.T
    errors = []
    for d in (p // 2, 16 * p, 256 * p):
        r = _Projector(p, d, "gaussian", 0, jac, budget=2**30)(torch.eye(p, dtype=torch.float64))
        errors.append(float((jac @ r @ (jac @ r).T - exact).norm() / exact.norm()))
        if d == 256 * p:  # d >> P: R Rᵀ ≈ I (orthogonal-ish, error ~ sqrt(P/d))
            assert float((r @ r.T - torch.eye(p, dtype=torch.float64)).abs().max()) < 0.2
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.05


def test_unsupported_outputs_raise(data):
    x, _ = data

    class Tuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2).double()

        def forward(self, x):
            return self.lin(x), x

    class Rank3(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4).double()

        def forward(self, x):
            return self.lin(x).view(-1, 2, 2)

    for bad in (Tuple(), Rank3()):
        with pytest.raises(ValueError, match="must"):
            model_outputs(bad, x)
        with pytest.raises(ValueError, match="must"):
            empirical_ntk(bad, x)


def test_invalid_options_raise(data):
    x, _ = data
    model = _mlp()
    with pytest.raises(ValueError, match="ntk"):
        empirical_ntk(model, x, ntk="diag")
    with pytest.raises(ValueError, match="chunk_size"):
        per_sample_jacobians(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        jacobian_features(model, x, projection_dim=10**6, memory_budget_bytes=1000)
    with pytest.raises(TypeError, match="inputs"):
        per_sample_jacobians(model, x.numpy())


# ---------------------------------------------------------------------------------------------
# structured (factored) form of nn.Linear Jacobians
# ---------------------------------------------------------------------------------------------
class _Mixed(nn.Module):
    """Conv + BatchNorm (explicit fallback) feeding Linear layers (structured), one without bias."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm1d(8)
        self.fc1 = nn.Linear(8, 6, bias=False)
        self.fc2 = nn.Linear(6, k)

    def forward(self, x):
        h = torch.tanh(self.conv(x.view(-1, 1, 4, 4))).flatten(1)  # (B, 2 * 2 * 2)
        return self.fc2(torch.tanh(self.fc1(self.norm(h))))


class _Tied(nn.Module):
    """Two Linear layers sharing one weight matrix (the structured form must not be used)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class _Reused(nn.Module):
    """One Linear applied twice, and one applied to a (B, T, in) sequence."""

    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.token = nn.Linear(2, 3)
        self.head = nn.Linear(4 + 3, 2)

    def forward(self, x):
        h = torch.tanh(self.block(torch.tanh(self.block(x))))
        seq = torch.tanh(self.token(x.view(-1, 2, 2))).mean(1)
        return self.head(torch.cat([h, seq], 1))


def _models():
    torch.manual_seed(3)
    mixed = _Mixed().double()
    mixed.norm.running_mean.uniform_(-0.5, 0.5)
    mixed.norm.running_var.uniform_(0.5, 2.0)
    single = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1), nn.Flatten(0)).double()
    return {
        "mixed": (mixed, 16),
        "tied": (_Tied().double(), 4),
        "reused": (_Reused().double(), 4),
        "scalar-output": (single, 4),
    }


@pytest.mark.parametrize("name", ["mixed", "tied", "reused", "scalar-output"])
@pytest.mark.parametrize("ntk", ["full", "trace"])
def test_structured_ntk_equals_explicit_autograd_products(name, ntk):
    model, dim = _models()[name]
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(6, dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, dim, generator=gen, dtype=torch.float64)
    j1, j2 = _loop_jacobian(model, x1), _loop_jacobian(model, x2)
    k = j1.shape[1]
    if ntk == "full":
        expected = j1.reshape(6 * k, -1) @ j2.reshape(4 * k, -1).T
    else:
        expected = sum(j1[:, c] @ j2[:, c].T for c in range(k))
    got = empirical_ntk(model, x1, x2, ntk=ntk, form="structured")
    torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)
    sym = empirical_ntk(model, x1, ntk=ntk, form="structured", chunk_size=4)
    expected_sym = empirical_ntk(model, x1, ntk=ntk, form="explicit")
    torch.testing.assert_close(sym, expected_sym, rtol=1e-11, atol=1e-12)


def test_structured_ntk_with_parameter_subsets():
    model, dim = _models()["mixed"]
    x = torch.randn(5, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for params in (["fc2.bias"], ["fc2.weight"], "fc", ["conv.weight", "fc2.bias"]):
        names = {n for n, _ in model.named_parameters() if any(n.startswith(p) for p in params)}
        if isinstance(params, str):
            names = {n for n, _ in model.named_parameters() if n.startswith(params)}
        jac = _loop_jacobian(model, x, names=names)
        expected = jac.reshape(-1, jac.shape[2]) @ jac.reshape(-1, jac.shape[2]).T
        got = empirical_ntk(model, x, params=params)
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)


def test_structured_ntk_streaming_blocks_equal_in_memory():
    model, dim = _models()["mixed"]
    gen = torch.Generator().manual_seed(2)
    x1 = torch.randn(9, dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(5, dim, generator=gen, dtype=torch.float64)
    for other in (None, x2):
        ref = empirical_ntk(model, x1, other, form="explicit")
        # a budget of ~2 samples' factored Jacobians forces the block-by-block path
        streamed = empirical_ntk(model, x1, other, chunk_size=2, memory_budget_bytes=1500)
        torch.testing.assert_close(streamed, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_structured_projected_features_equal_explicit_projection(kind):
    model, dim = _models()["mixed"]
    x = torch.randn(7, dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    jac = _loop_jacobian(model, x)
    p, d = jac.shape[2], 11
    r = _Projector(p, d, kind, 5, jac, budget=2**30)(torch.eye(p, dtype=torch.float64))
    expected = jac @ r
    for budget in (2**30, 1024 * d * 8):  # cached R, and R regenerated block by block (P > 1024)
        got = jacobian_features(
            model, x, projection_dim=d, projection=kind, seed=5, memory_budget_bytes=budget
        )
        torch.testing.assert_close(got, expected, rtol=1e-11, atol=1e-12)
    wide = nn.Sequential(nn.Linear(40, 60), nn.Tanh(), nn.Linear(60, 3)).double()  # P = 2643
    xw = torch.randn(4, 40, dtype=torch.float64)
    jw = _loop_jacobian(wide, xw)
    rw = _Projector(jw.shape[2], d, kind, 1, jw, budget=2**30)(torch.eye(2643, dtype=torch.float64))
    got = jacobian_features(
        wide, xw, projection_dim=d, projection=kind, seed=1, memory_budget_bytes=1024 * d * 8
    )
    torch.testing.assert_close(got, jw @ rw, rtol=1e-11, atol=1e-12)


def test_structured_path_never_forms_linear_jacobians(monkeypatch):
    """All-Linear MLP: the structured NTK and projected features never call the explicit
    ``vmap(jacrev)`` Jacobian (which would hold K x P numbers per sample)."""
    from lightning_info.functional import jacobian as jac_mod

    model = nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 10)).double()
    x = torch.randn(12, 30, dtype=torch.float64)
    reference = empirical_ntk(model, x, ntk="trace", form="explicit")
    ref_feats = jacobian_features(model, x, projection_dim=8, form="explicit")

    def forbidden(self, x):
        raise AssertionError("explicit Jacobian formed")

    monkeypatch.setattr(jac_mod._ExplicitLinearization, "_explicit_jacobian", forbidden)
    torch.testing.assert_close(empirical_ntk(model, x, ntk="trace"), reference)
    torch.testing.assert_close(jacobian_features(model, x, projection_dim=8), ref_feats)
    with pytest.raises(AssertionError, match="explicit Jacobian formed"):
        empirical_ntk(model, x, ntk="trace", form="explicit")


def test_structured_option_type_checked(data):
    x, _ = data
    with pytest.raises(TypeError, match="structured"):
        empirical_ntk(_mlp(), x, form=True)
    with pytest.raises(ValueError, match="form"):
        empirical_ntk(_mlp(), x, form="yes")


# ---------------------------------------------------------------------------------------------
# output_fn: models whose forward returns a tuple, a dict or an output object
# ---------------------------------------------------------------------------------------------
class _TupleOut(nn.Module):
    """Returns ``(logits, features)``, like many classifiers."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), torch.tanh(x)


class _DictOut(_TupleOut):
    """Returns ``{"logits": ..., "aux": ...}``."""

    def forward(self, x):
        logits = self.inner(x)
        return {"logits": logits, "aux": logits.pow(2)}


class _ObjectOut(_TupleOut):
    """Returns an object with a ``logits`` attribute (Hugging Face-style output)."""

    def forward(self, x):
        logits = self.inner(x)
        return SimpleNamespace(logits=logits, hidden_states=(x,))


_WRAPPERS = {
    "tuple": (_TupleOut, lambda out: out[0]),
    "dict": (_DictOut, lambda out: out["logits"]),
    "object": (_ObjectOut, lambda out: out.logits),
}


_IMPLEMENTATIONS = {"explicit": _ExplicitLinearization, "structured": _StructuredLinearization}


@pytest.mark.parametrize("wrapper", ["tuple", "dict", "object"])
@pytest.mark.parametrize("form", ["explicit", "structured"])
def test_output_fn_gives_the_plain_model_jacobians_and_kernels(wrapper, form):
    plain, dim = _models()["mixed"]  # conv + BatchNorm (explicit) and Linear layers (structured)
    make, output_fn = _WRAPPERS[wrapper]
    wrapped = make(plain)
    gen = torch.Generator().manual_seed(4)
    x1 = torch.randn(6, dim, generator=gen, dtype=torch.float64)
    x2 = torch.randn(4, dim, generator=gen, dtype=torch.float64)
    j1, j2 = _loop_jacobian(plain, x1), _loop_jacobian(plain, x2)  # reference on the plain model
    p = j1.shape[2]
    lin = _linearize(wrapped, x1, form=form, params=None, chunk_size=None, output_fn=output_fn)
    assert type(lin) is _IMPLEMENTATIONS[form]  # the structured form is used on the wrapper too

    outs = model_outputs(wrapped, x1, chunk_size=4, output_fn=output_fn)
    torch.testing.assert_close(outs, model_outputs(plain, x1, chunk_size=4), rtol=0, atol=0)
    jac = per_sample_jacobians(wrapped, x1, chunk_size=4, output_fn=output_fn)
    torch.testing.assert_close(jac, j1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jac, per_sample_jacobians(plain, x1, chunk_size=4), rtol=0, atol=0)

    full = empirical_ntk(wrapped, x1, x2, form=form, output_fn=output_fn)
    expected = j1.reshape(-1, p) @ j2.reshape(-1, p).T
    torch.testing.assert_close(full, expected, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(full, empirical_ntk(plain, x1, x2, form=form), rtol=0, atol=0)
    trace = empirical_ntk(wrapped, x1, ntk="trace", form=form, output_fn=output_fn)
    expected_trace = sum(j1[:, c] @ j1[:, c].T for c in range(j1.shape[1]))
    torch.testing.assert_close(trace, expected_trace, rtol=1e-11, atol=1e-12)
    # streaming blocks (a budget of a few samples) and projected features J R
    streamed = empirical_ntk(
        wrapped, x1, form=form, chunk_size=2, memory_budget_bytes=1500, output_fn=output_fn
    )
    torch.testing.assert_close(
        streamed, j1.reshape(-1, p) @ j1.reshape(-1, p).T, rtol=1e-11, atol=1e-12
    )
    feats = jacobian_features(wrapped, x1, projection_dim=6, seed=2, form=form, output_fn=output_fn)
    r = _Projector(p, 6, "gaussian", 2, j1, budget=2**30)(torch.eye(p, dtype=torch.float64))
    torch.testing.assert_close(feats, j1 @ r, rtol=1e-11, atol=1e-12)
    plain_feats = jacobian_features(plain, x1, projection_dim=6, seed=2, form=form)
    torch.testing.assert_close(feats, plain_feats, rtol=0, atol=0)


@pytest.mark.parametrize("wrapper", ["tuple", "dict"])
def test_non_tensor_output_without_output_fn_says_pass_output_fn(wrapper):
    plain, dim = _models()["mixed"]
    wrapped = _WRAPPERS[wrapper][0](plain)
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    calls = {
        "model_outputs": lambda: model_outputs(wrapped, x),
        "per_sample_jacobians": lambda: per_sample_jacobians(wrapped, x),
        "empirical_ntk explicit": lambda: empirical_ntk(wrapped, x, form="explicit"),
        "empirical_ntk structured": lambda: empirical_ntk(wrapped, x),
        "jacobian_features": lambda: jacobian_features(wrapped, x, projection_dim=4),
    }
    hint = r"pass `output_fn=`.*`output_fn=lambda out: out\[0\]`.*`output_fn=lambda out: out\[\"logits\"\]`"
    for call in calls.values():
        with pytest.raises(ValueError, match=hint):
            call()
    with pytest.raises(ValueError, match="`output_fn` must return a tensor"):
        empirical_ntk(wrapped, x, output_fn=lambda out: out)
    with pytest.raises(TypeError, match="output_fn"):
        empirical_ntk(wrapped, x, output_fn="logits")


def test_progress_observer_counts_the_work_and_changes_nothing():
    """The `progress=` observer sees every sample's Jacobians and every kernel block; the
    values are those computed without it (the functional layer itself never prints)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    x1, x2 = torch.randn(10, 4), torch.randn(7, 4)
    seen: list[tuple[str, int]] = []

    def hook(stage, amount):
        seen.append((stage, amount))

    def count(stage):
        return sum(a for s, a in seen if s == stage)

    plain = empirical_ntk(model, x1, x2, chunk_size=3)
    observed = empirical_ntk(model, x1, x2, chunk_size=3, progress=hook)
    assert torch.equal(plain, observed)
    assert count("jacobians") == 10 + 7
    assert count("kernel") == 1
    seen.clear()  # streamed (tiny budget): the chunks are recomputed, and every block is seen
    streamed = empirical_ntk(model, x1, chunk_size=2, memory_budget_bytes=600, progress=hook)
    torch.testing.assert_close(streamed, empirical_ntk(model, x1), rtol=1e-5, atol=1e-6)
    assert count("jacobians") > 10
    assert count("kernel") > 1
    seen.clear()
    feats = jacobian_features(model, x1, projection_dim=5, chunk_size=4, progress=hook)
    assert count("jacobians") == 10
    kernel_from_features(feats, progress=hook)
    assert count("kernel") == 1
