import pytest
import torch

from lightning_info.utilities.batch import default_input_fn, default_target_fn


class Custom:
    def __init__(self):
        self.pixels = torch.zeros(2, 3)


def test_tuple_list_dict_tensor():
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    assert default_input_fn((x, y)) is x
    assert default_target_fn([x, y, "meta"]) is y
    assert default_input_fn({"inputs": x, "labels": y}) is x
    assert default_target_fn({"inputs": x, "labels": y}) is y
    assert default_input_fn(x) is x


@pytest.mark.parametrize("batch", [Custom(), {"foo": torch.zeros(1)}, ("text", 1)])
def test_unknown_batch_inputs_raise(batch):
    with pytest.raises(TypeError, match="input_fn"):
        default_input_fn(batch)


@pytest.mark.parametrize("batch", [torch.zeros(2), {"x": torch.zeros(1)}, (torch.zeros(2),)])
def test_unknown_batch_targets_raise(batch):
    with pytest.raises(TypeError, match="target_fn"):
        default_target_fn(batch)
