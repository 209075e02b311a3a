import pytest
import torch

from lightning_info.utilities.data import corrupt_labels, load_dataset, train_val_split


def test_digits_and_mnist_are_real_and_scaled():
    for name, n, d in [("digits", 1797, 64), ("mnist", 5000, 784)]:
        ds = load_dataset(name)
        assert ds.inputs.shape == (n, d)
        assert ds.inputs.dtype == torch.float32
        assert float(ds.inputs.min()) >= 0.0
        assert float(ds.inputs.max()) <= 1.0
        assert torch.bincount(ds.targets).numel() == 10
        # real images are not constant
        assert float(ds.inputs.std()) > 0.1


def test_unknown_dataset():
    with pytest.raises(ValueError, match="`name`"):
        load_dataset("cifar")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["flip", "permute"])
def test_corrupt_labels_fraction(mode):
    y = torch.arange(1000) % 10
    y2, bad = corrupt_labels(y, fraction=0.2, num_classes=10, seed=3, mode=mode)
    assert bool((y2[~bad] == y[~bad]).all())
    assert bool((y2[bad] != y[bad]).all())
    if mode == "flip":
        assert int(bad.sum()) == 200
    else:
        assert 150 < int(bad.sum()) <= 200
        # a permutation keeps the class histogram
        assert torch.equal(torch.bincount(y2), torch.bincount(y))
    y3, _ = corrupt_labels(y, fraction=0.2, num_classes=10, seed=3, mode=mode)
    assert torch.equal(y2, y3)


def test_split_is_disjoint_and_seeded():
    a = train_val_split(100, val_fraction=0.2, seed=1)
    b = train_val_split(100, val_fraction=0.2, seed=1)
    assert torch.equal(a[0], b[0])
    assert set(a[0].tolist()).isdisjoint(a[1].tolist())
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, val_fraction=1.0)
