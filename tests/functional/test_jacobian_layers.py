"""Structured NTK beyond nn.Linear: Conv2d, BatchNorm, LayerNorm, Embedding, Linear on sequences.

Every kernel and projected feature is compared with explicit Jacobians from an autograd loop
(one sample, one output at a time), in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_info.functional import jacobian as jac_mod
from lightning_info.functional.jacobian import (
    _linearize,
    _Projector,
    empirical_ntk,
    jacobian_features,
)
from lightning_info.models import ResNet, TinyTransformer
from tests.functional.test_jacobian import _loop_jacobian


def _randomize_norms(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial affine parameters and running statistics (eval BatchNorm is not identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen, dtype=torch.float64))
                    m.weight.add_(0.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=torch.float64))
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


class _ConvNet(nn.Module):
    """Strided / dilated / padded Conv2d, BatchNorm2d, a bias-free conv, BatchNorm1d, a head."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 4, (3, 2), dilation=(1, 2), padding=(1, 0), bias=False)
        self.bn2 = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, k)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.tanh(self.conv2(h)).mean((2, 3))
        return self.head(self.bn2(h))


class _SeqNet(nn.Module):
    """Embedding (with padding_idx), LayerNorm on (B, T, dim), Linear on sequences, attention."""

    def __init__(self, k: int = 3):
        super().__init__()
        self.emb = nn.Embedding(7, 4, padding_idx=0)
        self.norm = nn.LayerNorm(4)
        self.qkv = nn.Linear(4, 12)
        self.proj = nn.Linear(4, 4, bias=False)
        self.norm2 = nn.LayerNorm([5, 4])
        self.head = nn.Linear(4, k)

    def forward(self, tokens):
        h = self.norm(self.emb(tokens))
        q, key, v = self.qkv(h).split(4, dim=-1)
        att = torch.softmax(q @ key.transpose(1, 2) / 2.0, dim=-1)
        h = h + self.proj(att @ v)
        return self.head(self.norm2(h).mean(1))


class _Fallbacks(nn.Module):
    """Layers no rule covers: grouped and reflect-padded conv, max_norm embedding, MHA."""

    def __init__(self):
        super().__init__()
        self.grouped = nn.Conv2d(2, 4, 3, groups=2)
        self.reflect = nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect")
        self.attn = nn.MultiheadAttention(2, 1, batch_first=True)
        self.head = nn.Linear(2, 2)

    def forward(self, x):
        h = self.reflect(torch.tanh(self.grouped(x)))  # (B, 2, 3, 3)
        seq = h.flatten(2).transpose(1, 2)  # (B, 9, 2)
        out, _ = self.attn(seq, seq, seq)
        return self.head(out.mean(1))


def _cases():
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = _randomize_norms(_ConvNet().double(), gen)
    seq = _randomize_norms(_SeqNet().double(), gen)
    fallback = _Fallbacks().double()
    tokens = torch.randint(0, 7, (6, 5), generator=gen)
    tokens[0, :2] = 0  # padding_idx present
    tokens[1] = 3  # one index repeated at every position
    return {
        "conv": (conv, torch.randn(6, 2, 7, 6, generator=gen, dtype=torch.float64)),
        "seq": (seq, tokens),
        "fallback": (fallback, torch.randn(6, 2, 5, 5, generator=gen, dtype=torch.float64)),
    }


def _reference(j1, j2, ntk):
    k = j1.shape[1]
    if ntk == "full":
        return j1.reshape(-1, j1.shape[2]) @ j2.reshape(-1, j2.shape[2]).T
    return sum(j1[:, c] @ j2[:, c].T for c in range(k))


@pytest.mark.parametrize("name", ["conv", "seq", "fallback"])
@pytest.mark.parametrize("ntk", ["full", "trace"])
def test_layer_rules_ntk_equal_autograd_loop(name, ntk):
    model, x = _cases()[name]
    x1, x2 = x[:4], x[4:]
    j1, j2 = _loop_jacobian(model, x1), _loop_jacobian(model, x2)
    got = empirical_ntk(model, x1, x2, ntk=ntk)
    torch.testing.assert_close(got, _reference(j1, j2, ntk), rtol=1e-10, atol=1e-11)
    sym = empirical_ntk(model, x, ntk=ntk, chunk_size=4)
    jall = _loop_jacobian(model, x)
    torch.testing.assert_close(sym, _reference(jall, jall, ntk), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", ["conv", "seq"])
def test_layer_rules_projected_features_equal_explicit_projection(name):
    model, x = _cases()[name]
    jac = _loop_jacobian(model, x)
    p, d = jac.shape[2], 9
    r = _Projector(p, d, "gaussian", 4, jac, budget=2**30)(torch.eye(p, dtype=torch.float64))
    for budget in (2**30, 1024 * d * 8 * 4):  # cached R, and R regenerated block by block
        got = jacobian_features(model, x, projection_dim=d, seed=4, memory_budget_bytes=budget)
        torch.testing.assert_close(got, jac @ r, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("name", ["conv", "seq"])
def test_covered_models_form_no_explicit_jacobian(name, monkeypatch):
    """Every parameter of these models has a rule: no ``jacrev`` Jacobian of a parameter."""
    model, x = _cases()[name]
    lin = _linearize(model, x, form="structured", params=None, chunk_size=None, projection_dim=5)
    assert lin.rest_names == []
    covered = {type(t.module) for t in lin.terms}
    expected = (
        {nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.Linear}
        if name == "conv"
        else {nn.Embedding, nn.LayerNorm, nn.Linear}
    )
    assert covered == expected
    reference = empirical_ntk(model, x, ntk="trace", form="explicit")

    def forbidden(self, x):
        raise AssertionError("explicit Jacobian formed")

    monkeypatch.setattr(jac_mod._ExplicitLinearization, "_explicit_jacobian", forbidden)
    torch.testing.assert_close(
        empirical_ntk(model, x, ntk="trace"), reference, rtol=1e-10, atol=1e-11
    )


def test_uncovered_layers_fall_back_to_explicit_jacobians():
    model, x = _cases()["fallback"]
    lin = _linearize(model, x, form="structured", params=None, chunk_size=None)
    assert [t.module_name for t in lin.terms] == ["head"]
    assert set(lin.rest_names) == {
        n for n, _ in model.named_parameters() if n.split(".")[0] != "head"
    }


def test_unbatched_layer_input_falls_back():
    """A position embedding is called on (T,) indices with no batch dimension: it must not be
    treated per sample (its per-sample output gradient is not the offset's gradient)."""
    torch.manual_seed(1)
    model = TinyTransformer(vocab=9, length=4, num_classes=2, dim=8, heads=2, depth=1).double()
    x = torch.randint(0, 9, (5, 4), generator=torch.Generator().manual_seed(2))
    lin = _linearize(model, x, form="structured", params=None, chunk_size=None)
    assert lin.rest_names == ["positions.weight"]
    jac = _loop_jacobian(model, x)
    torch.testing.assert_close(
        empirical_ntk(model, x, ntk="trace"), _reference(jac, jac, "trace"), rtol=1e-10, atol=1e-11
    )


def test_resnet_block_and_parameter_subset():
    """A small ResNet (pad shortcut, BatchNorm) with a parameter subset: bn weights only, and one
    convolution plus the head."""
    torch.manual_seed(2)
    gen = torch.Generator().manual_seed(3)
    model = _randomize_norms(ResNet((2, 4), (1, 1), num_classes=2, in_channels=1).double(), gen)
    x = torch.randn(5, 1, 6, 6, generator=gen, dtype=torch.float64)
    for params in (["layers.1.conv1", "fc"], ["bn.weight", "layers.0.bn2.bias"]):
        names = {n for n, _ in model.named_parameters() if any(n.startswith(p) for p in params)}
        jac = _loop_jacobian(model, x, names=names)
        got = empirical_ntk(model, x, params=params, ntk="full")
        torch.testing.assert_close(got, _reference(jac, jac, "full"), rtol=1e-10, atol=1e-11)


# ---------------------------------------------------------------------------------------------
# output_probes: the trace NTK from s random output combinations
# ---------------------------------------------------------------------------------------------
def _probe_case():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    jac = _loop_jacobian(model, x)
    return model, x, jac


def test_output_probes_exact_without_cross_output_blocks():
    """Linearizing only the head, J_k(x) J_l(x')ᵀ = 0 for k != l, so any ±1/sqrt(s) combination
    gives the trace NTK exactly (the diagonal of VᵀV is 1)."""
    model, x, _ = _probe_case()
    names = {"2.weight", "2.bias"}
    jac = _loop_jacobian(model, x, names=names)
    exact = _reference(jac, jac, "trace")
    for s in (1, 2, 3):
        got = empirical_ntk(model, x, params="2", ntk="trace", output_probes=s, seed=s)
        torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-11)


def test_output_probes_unbiased_and_exact_from_k():
    model, x, jac = _probe_case()
    exact = _reference(jac, jac, "trace")
    singles = [
        empirical_ntk(model, x, ntk="trace", output_probes=1, seed=seed) for seed in range(96)
    ]
    single_err = torch.stack([(e - exact).norm() for e in singles]).mean()
    mean_err = (torch.stack(singles).mean(0) - exact).norm()
    assert single_err > 1e-3 * exact.norm()  # the cross-output blocks are not negligible here
    assert mean_err < 0.25 * single_err  # ~1/sqrt(96) of one estimate's error if unbiased
    for s in (4, 9):  # s >= K: the K outputs themselves
        got = empirical_ntk(model, x, ntk="trace", output_probes=s)
        torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-11)
    # the projected features of the probes: (N, s, d), their summed kernel is the estimate
    phi = jacobian_features(model, x, projection_dim=7, output_probes=2, seed=3)
    assert phi.shape == (6, 2, 7)
    est = empirical_ntk(model, x, ntk="trace", projection_dim=7, output_probes=2, seed=3)
    torch.testing.assert_close(est, sum(phi[:, r] @ phi[:, r].T for r in range(2)))


def test_output_probes_reject_full_kernel_and_bad_values():
    model, x, _ = _probe_case()
    with pytest.raises(ValueError, match="output_probes"):
        empirical_ntk(model, x, ntk="full", output_probes=2)
    with pytest.raises(ValueError, match="output_probes"):
        empirical_ntk(model, x, ntk="trace", output_probes=0)


class _InplaceNet(nn.Module):
    """torchvision style: in-place ReLU after BatchNorm, in-place residual add."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.fc(self.relu(out).mean((2, 3)))


def test_inplace_operations_after_covered_layers():
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    model = _randomize_norms(_InplaceNet().double(), gen)
    x = torch.randn(5, 2, 4, 4, generator=gen, dtype=torch.float64)
    lin = _linearize(model, x, form="structured", params=None, chunk_size=None)
    assert lin.rest_names == []
    jac = _loop_jacobian(model, x)
    for ntk in ("full", "trace"):
        torch.testing.assert_close(
            empirical_ntk(model, x, ntk=ntk), _reference(jac, jac, ntk), rtol=1e-10, atol=1e-11
        )
