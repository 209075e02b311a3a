"""Input validation helpers for the public boundary.

Each helper names the argument, what was expected and what was given, and raises
``ValueError`` (bad value) or ``TypeError`` (bad type). Nothing here does math beyond the
check itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_tensor(value: Any, name: str, *, allow_int: bool = True) -> Tensor:
    """Return ``value`` as a detached tensor (numpy arrays and lists are converted; no copy).

    A tensor is detached (a view of the same storage, not a copy): every public entry point
    validates its array inputs here, so no result keeps the caller's autograd graph alive.

    Returns:
        The tensor (``value.detach()`` if it is one).

    Raises:
        TypeError: if ``value`` is not array-like or has a non-numeric dtype.
    """
    if isinstance(value, Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray):
        if value.dtype == object or not (
            np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_
        ):
            raise TypeError(
                f"`{name}` must hold numbers; got a numpy array of dtype {value.dtype}."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(value))
    elif isinstance(value, (list, tuple)):
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"`{name}` must be a tensor or array of numbers; got {err}.") from err
    else:
        raise TypeError(
            f"`{name}` must be a torch.Tensor or numpy.ndarray; got {type(value).__name__}."
        )
    if tensor.is_complex():
        raise TypeError(f"`{name}` must be real-valued; got dtype {tensor.dtype}.")
    if not allow_int and not tensor.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {tensor.dtype}.")
    return tensor


def _check_ndim(tensor: Tensor, name: str, ndims: Iterable[int], shape_hint: str) -> None:
    """Check that ``tensor.ndim`` is one of ``ndims``.

    Raises:
        ValueError: naming ``name`` and the expected ``shape_hint``, otherwise.
    """
    ndims = tuple(ndims)
    if tensor.ndim not in ndims:
        raise ValueError(
            f"`{name}` must be {shape_hint}; got shape {tuple(tensor.shape)}"
            + (" (flatten it first, e.g. `x.flatten(1)`)." if tensor.ndim > max(ndims) else ".")
        )


def _check_finite(tensor: Tensor, name: str) -> None:
    """Check that a floating ``tensor`` holds no NaN or infinite value.

    Raises:
        ValueError: naming ``name`` and the number of non-finite values, otherwise.
    """
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        n_bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"`{name}` contains {n_bad} NaN or infinite value(s); all must be finite.")


def _check_positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as float after checking it is a finite number > 0 (or >= 0).

    Returns:
        ``float(value)``.

    Raises:
        TypeError: if ``value`` is not a real number (bools are rejected).
        ValueError: if it is not finite, or not > 0 (>= 0 with ``allow_zero``).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"`{name}` must be a number; got {type(value).__name__}.")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not np.isfinite(value) or not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {bound}; got {value}.")
    return value


def _check_int(
    value: Any, name: str, *, minimum: int | None = None, allow_none: bool = False
) -> int | None:
    """Return ``value`` as int after checking its type and lower bound.

    Returns:
        ``int(value)``, or None for None with ``allow_none``.

    Raises:
        TypeError: if ``value`` is not an integer (bools are rejected).
        ValueError: if it is below ``minimum``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer; got {type(value).__name__} {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return value


def _check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """Return ``value`` (a string or str-Enum) after checking it is one of ``choices``.

    Returns:
        The choice as a plain string.

    Raises:
        ValueError: if ``value`` is not one of ``choices``.
    """
    choices = tuple(choices)
    raw = getattr(value, "value", value)
    if raw not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {listed}; got {value!r}.")
    return str(raw)


def _check_bandwidth(value: Any, name: str = "sigma") -> float:
    """Return a Gaussian bandwidth after checking that ``1 / (2 sigma^2)`` is a finite number > 0.

    Returns:
        ``sigma`` as float.

    Raises:
        TypeError: if ``value`` is not a number (from ``_check_positive``).
        ValueError: if ``value`` is not > 0, or so small or large that ``sigma**2`` under- or
            overflows in float64.
    """  # noqa: DOC502 (the TypeError of the shared check is part of this contract)
    sigma = _check_positive(value, name)
    sq = sigma * sigma
    if sq == 0.0 or not np.isfinite(sq) or not np.isfinite(0.5 / sq):
        raise ValueError(
            f"`{name}` must be between about 1e-150 and 1e150 so that `{name}`**2 is a finite "
            f"positive float64; got {sigma}."
        )
    return sigma


def _check_filename(filename: Any) -> str:
    """A plain file name (no directory part).

    Returns:
        ``filename``.

    Raises:
        ValueError: for an empty name, a non-string or a path with a separator.
    """
    if not isinstance(filename, str) or not filename or os.sep in filename:
        raise ValueError(f"`filename` must be a plain file name; got {filename!r}.")
    return filename


def _check_image_shape(image_shape: Sequence[int] | None) -> tuple[int, ...] | None:
    """None, or an image shape (H, W) / (C, H, W) as a tuple of ints.

    Returns:
        The shape, or None.

    Raises:
        ValueError: for another number of dimensions.
    """
    if image_shape is None:
        return None
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"`image_shape` must be (H, W) or (C, H, W); got {shape!r}.")
    return shape
