"""``projection="kronecker"``: A ⊗ B rows for Conv2d / Linear weights (issue 23).

References are independent of the code under test: explicit Jacobians from an autograd loop
(one sample, one output at a time), R assembled here with ``torch.kron`` from factors drawn with
the documented generators, the exact empirical NTK for the unbiasedness check, and the
profiler's allocation sizes for the memory claim. Float64 throughout.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_info.functional import smooth_unique_information
from lightning_info.functional._jacobian_common import (
    _KRON_SEED_OFFSET,
    _Projector,
    _Selection,
    kronecker_factors,
    kronecker_weights,
)
from lightning_info.functional.jacobian import _linearize, empirical_ntk, jacobian_features
from tests.functional.test_jacobian import _loop_jacobian
from tests.functional.test_jacobian_layers import _cases


def _kron_reference_r(model: nn.Module, d: int, seed: int) -> torch.Tensor:
    """R (P x d) built here: torch.kron(A, B) for Conv2d / Linear weights, dense rows elsewhere.

    A (out x d1) and B (fan_in x d2) are drawn, as documented, from a generator seeded with
    ``seed * 1_000_003 + 2**41 + offset`` (A first); the other parameters' rows are the dense
    Gaussian projection of those parameters alone, in order.
    """
    d1, d2 = d // kronecker_factors(d)[1], kronecker_factors(d)[1]
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    kron_names = {
        f"{mn}.weight" for mn, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    }
    offsets = dict(zip(names, torch.tensor([0] + [p.numel() for p in params.values()]).cumsum(0)))
    num_dense = sum(params[n].numel() for n in names if n not in kron_names)
    dense = _Projector(num_dense, d, "gaussian", seed, params[names[0]], budget=2**30)
    dense_r = dense(torch.eye(num_dense, dtype=torch.float64)) if num_dense else None
    blocks, row = [], 0
    for name in names:
        w = params[name]
        if name in kron_names:
            gen = torch.Generator().manual_seed(
                seed * 1_000_003 + _KRON_SEED_OFFSET + int(offsets[name])
            )
            a = torch.randn(w.shape[0], d1, generator=gen, dtype=torch.float64) / math.sqrt(d1)
            b = torch.randn(w[0].numel(), d2, generator=gen, dtype=torch.float64) / math.sqrt(d2)
            blocks.append(torch.kron(a, b))
        else:
            blocks.append(dense_r[row : row + w.numel()])
            row += w.numel()
    return torch.cat(blocks, 0)


@pytest.mark.parametrize("name", ["conv", "seq", "fallback"])
def test_kronecker_features_equal_jacobian_times_kron_r(name):
    """Structured and explicit features both equal J @ (A ⊗ B ...), J from an autograd loop."""
    model, x = _cases()[name]
    jac = _loop_jacobian(model, x)
    d = 16
    ref = jac @ _kron_reference_r(model, d, seed=3)
    for form in ("structured", "explicit"):
        for budget in (2**30, 1024 * d * 8):  # dense rows cached, and regenerated per block
            got = jacobian_features(
                model,
                x,
                projection_dim=d,
                projection="kronecker",
                seed=3,
                form=form,
                memory_budget_bytes=budget,
            )
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-11)


def test_kronecker_structured_equals_explicit_on_a_cnn_with_batchnorm():
    """A ResNet-style CNN (Conv2d + BatchNorm + Linear): structured vs explicit at d = 512."""
    from lightning_info.models import ResNet

    torch.manual_seed(0)
    model = ResNet((4, 8), (1, 1), 10, 3, "conv").double().eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    x = torch.randn(5, 3, 8, 8, generator=gen, dtype=torch.float64)
    kw = dict(projection_dim=512, projection="kronecker", seed=7)
    structured = jacobian_features(model, x, form="structured", **kw)
    explicit = jacobian_features(model, x, form="explicit", **kw)
    torch.testing.assert_close(structured, explicit, rtol=1e-10, atol=1e-12)
    assert structured.abs().max() > 1e-3  # not trivially zero


def test_kronecker_on_a_bias_free_conv_only_model():
    """Every parameter Kronecker-projected (no dense row at all): still J @ (A ⊗ B)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.Flatten()).double()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    ref = _loop_jacobian(model, x) @ _kron_reference_r(model, 16, seed=2)
    for form in ("structured", "explicit"):
        got = jacobian_features(
            model, x, projection_dim=16, projection="kronecker", seed=2, form=form
        )
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_projector_rows_materialize_the_kronecker_product():
    """rows() over ranges that cross dense and Kronecker segments equals torch.kron by hand."""
    model, _ = _cases()["conv"]
    sel = _Selection.of(model, None)
    kron = kronecker_weights(model, sel)
    assert {w.start for w in kron} == {
        sel.offsets[n] for n in ("conv1.weight", "conv2.weight", "head.weight")
    }
    proj = _Projector(sel.num_params, 16, "kronecker", 5, sel.like, 2**30, kron=kron)
    ref = _kron_reference_r(model, 16, seed=5)
    for start, stop in [
        (0, sel.num_params),
        (3, 70),
        (50, 61),
        (sel.num_params - 9, sel.num_params),
    ]:
        torch.testing.assert_close(proj.rows(start, stop), ref[start:stop], rtol=0, atol=1e-15)


def test_kronecker_kernel_is_unbiased_over_seeds():
    """Mean over 200 seeds of the projected full kernel -> exact NTK, within 4.5 standard errors.

    Each seed's kernel entry is an independent draw of an unbiased estimator (different seeds,
    independent generators), so by the CLT the mean over S seeds deviates from the exact entry by
    about sd / sqrt(S), sd the sample standard deviation across seeds. A bound of 4.5 standard
    errors per entry has a two-sided false-alarm rate of 7e-6 per entry (~3e-4 over the
    entries here). A wrong scale of A or B (e.g. 1/d instead of 1/d1) moves the mean by a
    constant factor and fails.
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    ).double()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    exact = empirical_ntk(model, x, ntk="full")
    lin = _linearize(model, x, form="structured", params=None, chunk_size=None)
    jac = lin.features(x)  # exact (N, K, P) Jacobians, projected per seed below
    sel = _Selection.of(model, None)
    kron = kronecker_weights(model, sel)
    seeds = 200
    draws = []
    for seed in range(seeds):
        proj = _Projector(sel.num_params, 16, "kronecker", seed, sel.like, 2**30, kron=kron)
        phi = proj(jac).flatten(0, 1)
        draws.append(phi @ phi.T)
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(seeds)
    assert ((mean - exact).abs() <= 4.5 * se + 1e-12).all()
    # the structured path with the same seeds draws the same kernels
    phi0 = jacobian_features(model, x, projection_dim=16, projection="kronecker", seed=0)
    torch.testing.assert_close(phi0.flatten(0, 1) @ phi0.flatten(0, 1).T, draws[0])


@pytest.mark.parametrize("dim", [509, 8, 6])
def test_bad_projection_dim_for_kronecker_is_refused_naming_the_argument(dim):
    model, x = _cases()["conv"]
    with pytest.raises(ValueError, match=r"`projection_dim`.*kronecker.*power of two"):
        jacobian_features(model, x, projection_dim=dim, projection="kronecker")
    with pytest.raises(ValueError, match="`projection_dim`"):
        smooth_unique_information(
            model,
            x,
            torch.zeros(len(x), dtype=torch.long),
            learning_rate=0.1,
            ntk="trace",
            projection_dim=dim,
            projection="kronecker",
        )
    # the same d is fine for the dense projections
    assert jacobian_features(model, x, projection_dim=dim).shape[-1] == dim


def test_unknown_projection_names_the_valid_choices():
    model, x = _cases()["conv"]
    with pytest.raises(ValueError, match=r"`projection`.*'gaussian'.*'rademacher'.*'kronecker'"):
        jacobian_features(model, x, projection_dim=16, projection="kron")


@pytest.mark.parametrize(("dim", "factors"), [(16, (4, 4)), (512, (16, 32)), (2048, (32, 64))])
def test_kronecker_factors(dim, factors):
    assert kronecker_factors(dim) == factors


def _largest_allocation(fn) -> int:
    """Largest single CPU allocation (bytes) of any operator run by ``fn``, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max(e.cpu_memory_usage for e in prof.events())


def test_kronecker_structured_path_never_forms_the_conv_jacobian_block():
    """A wide conv: the Gaussian path allocates the (n, K, out·C·kh·kw) block, Kronecker never.

    The block of one chunk is n·K·P_conv·8 bytes; with ``projection="kronecker"`` no operator
    allocates even half of it (the largest tensors are the output gradients and the unfolded
    inputs, a few times smaller).
    """
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 64, 3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)
    ).double()
    x = torch.randn(8, 16, 8, 8, dtype=torch.float64)
    block = 8 * 10 * 64 * 16 * 9 * 8  # (n, K, P_conv) float64, one chunk of 8

    def run(kind):
        return lambda: jacobian_features(
            model, x, projection_dim=512, projection=kind, chunk_size=8
        )

    assert _largest_allocation(run("gaussian")) >= block  # the control: the dense path forms it
    assert _largest_allocation(run("kronecker")) < block / 2
    lin = {
        kind: _linearize(
            model,
            x,
            form="structured",
            params=None,
            chunk_size=None,
            projection_dim=512,
            projection=kind,
        )
        for kind in ("gaussian", "kronecker")
    }
    # chunk sizing counts the block for the dense projection only
    assert lin["kronecker"].explicit_columns < lin["gaussian"].explicit_columns / 3
    # the dense R covers only the non-factored parameters (the two biases)
    assert lin["kronecker"].projector.num_dense == 64 + 10
