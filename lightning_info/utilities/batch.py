"""Getting inputs and targets out of users' batches.

Lightning users' batches are tensors, tuples/lists ``(x, y, ...)`` or dicts. The callbacks accept
these by default and let the user pass small extractor functions for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

#: Dict keys tried, in order, for the inputs of a dict batch.
INPUT_KEYS: tuple[str, ...] = ("x", "input", "inputs", "image", "images", "data", "features")
#: Dict keys tried, in order, for the targets of a dict batch.
TARGET_KEYS: tuple[str, ...] = ("y", "target", "targets", "label", "labels")

#: Keys tried, in order, for the tensor to linearize in a dict-like model output.
OUTPUT_KEYS: tuple[str, ...] = ("logits", "output", "outputs", "preds", "prediction", "y_hat")


def default_input_fn(batch: Any) -> Tensor:
    """Return the inputs of a batch: ``batch`` itself, ``batch[0]``, or a common dict key.

    Raises:
        TypeError: if no inputs can be found; pass ``input_fn=`` to the callback then.

    Example:
        >>> import torch
        >>> default_input_fn((torch.zeros(2, 3), torch.tensor([0, 1]))).shape
        torch.Size([2, 3])
        >>> default_input_fn({"image": torch.zeros(4, 1, 8, 8), "label": torch.zeros(4)}).shape
        torch.Size([4, 1, 8, 8])
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if key in batch and isinstance(batch[key], Tensor):
                return batch[key]
        raise TypeError(
            f"Cannot find the inputs in a dict batch with keys {sorted(map(str, batch))}; "
            f"expected one of {INPUT_KEYS}. Pass `input_fn=lambda batch: ...` to the callback."
        )
    if isinstance(batch, Sequence) and len(batch) > 0 and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        f"Cannot find the inputs in a batch of type {type(batch).__name__}; expected a tensor, a "
        "tuple/list (x, y, ...) or a dict. Pass `input_fn=lambda batch: ...` to the callback."
    )


def default_target_fn(batch: Any) -> Tensor:
    """Return the targets of a batch: ``batch[1]`` or a common dict key.

    Raises:
        TypeError: if no targets can be found; pass ``target_fn=`` to the callback then.

    Example:
        >>> import torch
        >>> default_target_fn((torch.zeros(2, 3), torch.tensor([0, 1])))
        tensor([0, 1])
    """
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch and isinstance(batch[key], Tensor):
                return batch[key]
        raise TypeError(
            f"Cannot find the targets in a dict batch with keys {sorted(map(str, batch))}; "
            f"expected one of {TARGET_KEYS}. Pass `target_fn=lambda batch: ...` to the callback."
        )
    if (
        isinstance(batch, Sequence)
        and not isinstance(batch, Tensor)
        and len(batch) > 1
        and isinstance(batch[1], Tensor)
    ):
        return batch[1]
    raise TypeError(
        f"Cannot find the targets in a batch of type {type(batch).__name__}; expected a tuple/list "
        "(x, y, ...) or a dict. Pass `target_fn=lambda batch: ...` to the callback."
    )


def default_output_fn(output: Any) -> Tensor:
    """Return the tensor to score from a model's output: itself, a tuple's first, or ``logits``.

    Models often return more than their predictions: ``(logits, features)`` tuples, or dicts and
    Hugging Face-style output objects with a ``logits`` entry. This picks the predictions.

    Args:
        output: what ``model(x)`` returned.

    Returns:
        The output tensor.

    Raises:
        TypeError: if none of the rules finds a tensor; pass ``output_fn=`` to the callback.

    Example:
        >>> import torch
        >>> default_output_fn((torch.zeros(2, 3), torch.ones(2, 8))).shape
        torch.Size([2, 3])
        >>> default_output_fn({"logits": torch.zeros(4, 2), "hidden": None}).shape
        torch.Size([4, 2])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        for key in OUTPUT_KEYS:
            if isinstance(output.get(key), Tensor):
                return output[key]
        raise TypeError(
            f"Cannot find the predictions in a model output with keys {sorted(map(str, output))}; "
            f"expected one of {OUTPUT_KEYS}. Pass `output_fn=lambda out: out[...]` to the callback."
        )
    if isinstance(output, Sequence) and len(output) > 0 and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"Cannot find the predictions in a model output of type {type(output).__name__}; expected "
        "a tensor, a tuple/list starting with one, or a dict with 'logits'. Pass "
        "`output_fn=lambda out: ...` to the callback."
    )
