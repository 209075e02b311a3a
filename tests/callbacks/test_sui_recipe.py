"""The training recipe SUI replays: read from a trainer and from its checkpoint, one replay rule.

Also: the callback scores models whose forward returns a tuple (default) or a dict
(``output_fn=``), against the functional engine on a plain wrapper of the same network.
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_info.callbacks import SmoothUniqueInformation
from lightning_info.functional import smooth_unique_information
from lightning_info.functional.training_recipe import TrainingRecipe
from lightning_info.models import MLPClassifier
from lightning_info.scoring import load_checkpoint
from lightning_info.utilities.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return ds.inputs[:120], ds.targets[:120]


def _fit(tmp_path, model, digits, callbacks, epochs=2):
    x, y = digits
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=40))
    return trainer


@pytest.mark.parametrize(
    ("optimizer", "expected_lr", "expected_steps"),
    [("sgd", 0.05, 6), ("sgd_momentum", 0.05 / (1 - 0.9), None), ("adam", 0.05, None)],
)
def test_recipe_from_trainer_and_from_checkpoint_replay_alike(
    tmp_path, digits, optimizer, expected_lr, expected_steps
):
    torch.manual_seed(0)
    model = MLPClassifier(64, 10, hidden=(8,), optimizer=optimizer, lr=0.05, weight_decay=1e-3)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="last")
    trainer = _fit(tmp_path, model, digits, [ckpt])
    live = TrainingRecipe.from_trainer(trainer)
    saved = TrainingRecipe.from_checkpoint(load_checkpoint(tmp_path / "last.ckpt"))
    assert live.steps_taken == saved.steps_taken == 6  # 3 batches x 2 epochs
    assert live.adaptive == saved.adaptive == (optimizer == "adam")
    assert live.plain_gradient_descent == saved.plain_gradient_descent == (optimizer == "sgd")
    for recipe in (live, saved):
        lr, wd, steps = recipe.replay()
        assert lr == pytest.approx(expected_lr)
        assert steps == expected_steps
        # "auto": leave-one-out smoothing for a converged replay, the optimizer's for a horizon
        assert wd == ("loo" if expected_steps is None else pytest.approx(1e-3))
        assert recipe.replay(weight_decay="optimizer")[1] == pytest.approx(1e-3)
        assert recipe.replay(weight_decay=0.5)[1] == 0.5
        assert recipe.replay(weight_decay="loo", num_steps=3)[1] == "loo"
        assert recipe.replay(num_steps="converged")[2] is None
        assert recipe.replay(num_steps=None)[2] is None
        assert recipe.replay(num_steps=4, learning_rate=0.3)[::2] == (0.3, 4)  # no momentum fix
        assert recipe.replay(num_steps=4)[::2] == (pytest.approx(expected_lr), 4)  # heavy ball


def test_recipe_without_learning_rate_says_what_to_pass():
    with pytest.raises(ValueError, match="learning_rate="):
        TrainingRecipe().replay()
    with pytest.raises(ValueError, match="'auto' or 'converged'"):
        TrainingRecipe(learning_rate=0.1).replay(num_steps="soon")
    with pytest.raises(ValueError, match="'auto', 'loo' or 'optimizer'"):
        TrainingRecipe(learning_rate=0.1).replay(weight_decay="lots")


class _TupleNet(pl.LightningModule):
    """Returns ``(logits, features)``, or a dict with ``as_dict``."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = nn.Sequential(nn.Linear(64, 8), nn.Tanh())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        h = self.body(x)
        logits = self.head(h)
        return {"scores": logits, "hidden": h} if self.as_dict else (logits, h)

    def logits(self, x):
        out = self(x)
        return out["scores"] if self.as_dict else out[0]

    def training_step(self, batch, batch_idx):
        x, y = batch
        return 0.5 * ((self.logits(x) - F.one_hot(y, 10).float()) ** 2).sum(1).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Plain(nn.Module):
    """The same network returning its logits only: the reference for the engine."""

    def __init__(self, net: _TupleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.logits(x)


@pytest.mark.parametrize("as_dict", [False, True], ids=["tuple-default", "dict-output_fn"])
def test_scores_models_returning_tuples_and_dicts(tmp_path, digits, as_dict):
    torch.manual_seed(0)
    net = _TupleNet(as_dict)
    init = _Plain(net)
    init_state = {k: v.clone() for k, v in net.state_dict().items()}
    output_fn = (lambda out: out["scores"]) if as_dict else None
    sui = SmoothUniqueInformation(max_samples=None, output_fn=output_fn)
    _fit(tmp_path, net, digits, [sui])
    assert sui.scores_ is not None
    x, y = digits
    net.load_state_dict(init_state)  # the initial weights: the linearization point of "init"
    expected = smooth_unique_information(init, x, y, learning_rate=0.05, num_steps=6)
    torch.testing.assert_close(sui.scores_.weight_si, expected.weight_si, rtol=1e-6, atol=1e-12)


def test_dict_output_without_output_fn_names_the_callback_and_the_argument(tmp_path, digits):
    torch.manual_seed(0)
    sui = SmoothUniqueInformation(dataset=TensorDataset(*digits))
    with pytest.raises(ValueError, match=r"SmoothUniqueInformation\(output_fn=None\).*output_fn="):
        _fit(tmp_path, _TupleNet(as_dict=True), digits, [sui], epochs=1)
