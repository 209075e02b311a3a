"""Per-sample Jacobians, NTKs, projected features and SUI of recurrent models (nn.GRU / LSTM / RNN).

``torch.func.vmap`` cannot evaluate ``nn.RNNBase`` modules (the zero hidden state they create in
``forward`` is written in place with a batched value); these models are computed one sample at a
time. The reference everywhere is a brute-force loop over samples and outputs with
``torch.autograd.grad`` written here, in float64.
"""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import SmoothUniqueInformation
from lightning_info.functional._jacobian_common import _Projector, _SampleMap
from lightning_info.functional.jacobian import (
    empirical_ntk,
    jacobian_features,
    per_sample_jacobians,
)
from lightning_info.functional.sui import (
    smooth_unique_information,
    unique_information_from_kernels,
)

pytestmark = pytest.mark.usefixtures("single_thread")

VOCAB, EMBED, HIDDEN, LENGTH, K = 7, 4, 5, 6, 3
CELLS = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}


class _RecurrentNet(nn.Module):
    """Embedding (tokens) or Linear (signals) -> recurrent layer -> last hidden -> Linear(K)."""

    def __init__(self, cell: type[nn.Module], tokens: bool, k: int = K) -> None:
        super().__init__()
        self.encode = nn.Embedding(VOCAB, EMBED) if tokens else nn.Linear(2, EMBED)
        self.rnn = cell(EMBED, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.encode(x))
        return self.head(out[:, -1])


def _model(cell: str = "gru", tokens: bool = True, k: int = K, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _RecurrentNet(CELLS[cell], tokens, k).double()


def _inputs(n: int, tokens: bool, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if tokens:
        return torch.randint(0, VOCAB, (n, LENGTH), generator=gen)
    return torch.randn(n, LENGTH, 2, generator=gen, dtype=torch.float64)


def _loop_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference (N, K, P): one sample and one output at a time with autograd, eval mode."""
    was = model.training
    model.eval()
    params = list(model.parameters())
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        per_k = []
        for k in range(out.shape[0]):
            grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
            flat = [
                (torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)
            ]
            per_k.append(torch.cat(flat))
        rows.append(torch.stack(per_k))
    model.train(was)
    return torch.stack(rows)


def _full(ja: torch.Tensor, jb: torch.Tensor) -> torch.Tensor:
    return ja.flatten(0, 1) @ jb.flatten(0, 1).T


def _trace(ja: torch.Tensor, jb: torch.Tensor) -> torch.Tensor:
    return ja.flatten(1) @ jb.flatten(1).T


@pytest.mark.parametrize("tokens", [True, False], ids=["embedding", "linear"])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_per_sample_jacobians_match_autograd_loop(cell, tokens):
    model = _model(cell, tokens)
    model.train()
    x = _inputs(5, tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recurrent models go to the loop up front, silently
        jac = per_sample_jacobians(model, x, chunk_size=2)
    ref = _loop_jacobian(model, x)
    assert jac.shape == ref.shape == (5, K, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(jac, ref, rtol=1e-10, atol=1e-12)
    assert model.training  # mode restored


@pytest.mark.parametrize("form", ["explicit", "structured"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("ntk", ["full", "trace"])
def test_ntk_matches_brute_force_kernel(cell, form, ntk):
    model = _model(cell)
    x1, x2 = _inputs(5, True, seed=1), _inputs(3, True, seed=2)
    j1, j2 = _loop_jacobian(model, x1), _loop_jacobian(model, x2)
    pair = _full if ntk == "full" else _trace
    steps: list[tuple[str, int]] = []
    train = empirical_ntk(
        model, x1, ntk=ntk, form=form, chunk_size=2, progress=lambda s, n: steps.append((s, n))
    )
    cross = empirical_ntk(model, x2, x1, ntk=ntk, form=form)
    torch.testing.assert_close(train, pair(j1, j1), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(cross, pair(j2, j1), rtol=1e-9, atol=1e-11)
    # the progress hook is passed through: chunks of 2 samples, N = 5 samples in all
    jac_steps = [n for s, n in steps if s == "jacobians"]
    assert sum(jac_steps) == 5
    assert max(jac_steps) == 2


@pytest.mark.parametrize("form", ["explicit", "structured"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_projected_features_are_jacobians_times_the_seeded_projection(cell, form):
    model = _model(cell, tokens=False)
    x = _inputs(4, False)
    ref_j = _loop_jacobian(model, x)
    num_params, dim = ref_j.shape[2], 16
    feats = jacobian_features(model, x, projection_dim=dim, seed=3, form=form, chunk_size=3)
    # R is the documented seeded matrix (its own tests live in test_jacobian.py)
    proj = _Projector(num_params, dim, "gaussian", 3, ref_j, 2**30)
    torch.testing.assert_close(feats, ref_j @ proj.cached, rtol=1e-9, atol=1e-11)


def test_smooth_unique_information_of_gru_equals_scores_of_brute_force_kernels():
    model = _model("gru", k=2)
    x, xh = _inputs(8, True, seed=1), _inputs(4, True, seed=2)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    kw = {"learning_rate": 0.1, "num_steps": None, "weight_decay": 0.01}
    info = smooth_unique_information(model, x, y, xh, ntk="full", **kw)
    j, jh = _loop_jacobian(model, x), _loop_jacobian(model, xh)
    with torch.no_grad():
        f0 = model.eval()(x)
    ref = unique_information_from_kernels(_full(j, j), _full(jh, j), f0, y, **kw)
    assert bool(torch.isfinite(info.weight_si).all())
    assert bool((info.weight_si > 0).any())
    torch.testing.assert_close(info.weight_si, ref.weight_si, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(info.functional_si, ref.functional_si, rtol=1e-7, atol=1e-12)


class _DataDependent(nn.Module):
    """A model ``vmap`` rejects (data-dependent control flow) that a per-sample loop evaluates."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return torch.tanh(out) if out.sum() > 0 else out * 2.0


def test_vmap_failure_falls_back_to_the_sample_loop_with_one_warning():
    torch.manual_seed(0)
    model = _DataDependent().double()
    x = torch.randn(6, 3, dtype=torch.float64)
    with pytest.warns(UserWarning, match="one sample at a time"):
        jac = per_sample_jacobians(model, x)
    torch.testing.assert_close(jac, _loop_jacobian(model, x), rtol=1e-10, atol=1e-12)


def test_an_error_the_loop_also_raises_is_the_original_vmap_error():
    def fn(shared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("unrelated failure")

    mapped = _SampleMap(fn, (None, 0), nn.Linear(1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeError, match="unrelated failure"):
            mapped(torch.ones(1), torch.ones(3, 2))
    assert not mapped.loop


class _GRUClassifier(pl.LightningModule):
    """Tokens -> GRU -> Linear(2), MSE on one-hot targets with plain SGD (SUI's setting)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _RecurrentNet(nn.GRU, tokens=True, k=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), F.one_hot(y, 2).float())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_callback_scores_a_gru_model_after_a_short_fit(tmp_path):
    torch.manual_seed(0)
    x = torch.randint(0, VOCAB, (24, LENGTH))
    y = (x[:, -1] > VOCAB // 2).long()
    train = DataLoader(
        TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    sui = SmoothUniqueInformation(ntk="full")
    trainer = pl.Trainer(
        callbacks=[sui],
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(_GRUClassifier(), train)
    scores = sui.scores_
    assert len(scores) == 24
    assert bool(torch.isfinite(scores.weight_si).all())
    assert bool((scores.weight_si > 0).any())


def test_recurrent_route_switches_cudnn_off_only_while_it_runs():
    """cuDNN's RNN backward refuses eval mode on CUDA; the loop must run with cuDNN off."""
    seen: list[bool] = []

    def fn(shared: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.backends.cudnn.enabled)
        return x * shared

    before = torch.backends.cudnn.enabled
    out = _SampleMap(fn, (None, 0), _model("gru"))(torch.tensor(2.0), torch.arange(3.0))
    torch.testing.assert_close(out, torch.tensor([0.0, 2.0, 4.0]))
    assert seen == [False, False, False]
    assert torch.backends.cudnn.enabled == before
    seen.clear()
    _SampleMap(fn, (None, 0), nn.Linear(2, 2))(torch.tensor(2.0), torch.arange(3.0))
    assert seen == [before]  # no recurrent layer: one vmap call over the 3 samples, cuDNN as is


class _Noisy(nn.Module):
    """Draws random numbers in its forward pass, even in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + 0.1 * torch.randn(x.shape[0], 2, dtype=x.dtype)


def test_random_forward_is_refused_without_touching_the_global_rng():
    torch.manual_seed(0)
    model = _Noisy().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.manual_seed(5)
    with pytest.raises(RuntimeError, match="randomness"):
        per_sample_jacobians(model, x)
    expected = torch.Generator().manual_seed(5)
    # the probe forward ran once on one sample (its draw is the model's own); no loop ran
    probe_draws = torch.randn(1, 2, generator=expected)
    assert probe_draws.shape == (1, 2)
    torch.testing.assert_close(torch.randn(3), torch.randn(3, generator=expected))
