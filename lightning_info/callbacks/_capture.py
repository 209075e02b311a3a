"""Capture layer activations with forward hooks that live only for one probe pass.

The hooks are a resource owned by a ``with`` block (the ``LayerSummary.detach_hook`` pattern of
Lightning): they are registered on entry and removed on exit, also when the pass raises, and the
train/eval flag of every submodule is restored exactly as it was (a frozen ``BatchNorm`` inside a
training model stays in eval mode). Nothing here is pickled: the callback builds a new capture for
every pass, so no hook handle ever ends up in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

#: Suffix of a layer spec that captures a module's (first positional) input instead of its output.
INPUT_SUFFIX = ":input"


@dataclass(frozen=True)
class _LayerSpec:
    """Where to read one representation: the ``input`` or ``output`` of the submodule ``module_name``."""

    module_name: str
    side: Literal["input", "output"]


def _parse_layer(spec: str) -> _LayerSpec:
    """``"net.3"`` -> output of ``net.3``; ``"net.4:input"`` -> input of ``net.4``.

    Returns:
        The :class:`_LayerSpec`.
    """
    if spec.endswith(INPUT_SUFFIX):
        return _LayerSpec(spec[: -len(INPUT_SUFFIX)], "input")
    return _LayerSpec(spec, "output")


def _first_tensor(value: Any) -> Tensor | None:
    """The tensor itself, or the first tensor of a tuple/list/dict (e.g. an RNN's ``(out, h)``).

    Returns:
        The tensor found (depth first), or None if ``value`` holds none.
    """
    if isinstance(value, Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class _ActivationCapture:
    """Context manager: forward hooks on named submodules, eval mode, exact restore on exit.

    Each hook keeps the activation of the *last* call of its module in the current forward pass,
    detached and flattened to ``(B, -1)``; :meth:`pop` returns and clears them. A module called
    several times per forward pass (weight sharing) therefore reports its last call.

    Args:
        model: the root module; ``eval()`` is applied to it on entry when ``eval_mode`` is true.
        layers: ``{key: (submodule, side)}`` with ``side`` ``"input"`` or ``"output"``.
        eval_mode: switch the model to eval mode inside the block.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Mapping[str, tuple[nn.Module, Literal["input", "output"]]],
        *,
        eval_mode: bool = True,
    ) -> None:
        self.model = model
        self.layers = dict(layers)
        self.eval_mode = eval_mode
        self._handles: list[RemovableHandle] = []
        self._training_flags: list[tuple[nn.Module, bool]] = []
        self._captured: dict[str, Tensor] = {}

    def _make_hook(self, key: str, side: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            value = _first_tensor(args if side == "input" else output)
            if value is None:
                raise TypeError(
                    f"Layer `{key}` produced no tensor {side} (got {type(output).__name__}); "
                    "choose another layer."
                )
            self._captured[key] = (
                value.detach().flatten(1) if value.ndim > 1 else value.detach()[:, None]
            )

        return hook

    def __enter__(self) -> _ActivationCapture:
        self._training_flags = [(m, m.training) for m in self.model.modules()]
        try:
            for key, (module, side) in self.layers.items():
                self._handles.append(module.register_forward_hook(self._make_hook(key, side)))
            if self.eval_mode:
                self.model.eval()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, flag in self._training_flags:
            module.training = flag
        self._training_flags.clear()
        self._captured.clear()

    def pop(self) -> dict[str, Tensor]:
        """Return the activations captured since the last call, ``{key: (B, D)}``, and forget them.

        Raises:
            RuntimeError: if a hooked layer did not run in the forward pass.
        """
        missing = [key for key in self.layers if key not in self._captured]
        if missing:
            self._captured.clear()
            raise RuntimeError(
                f"Layer(s) {missing} did not run during the forward pass; choose layers that the "
                "model's forward() calls."
            )
        out, self._captured = self._captured, {}
        return out
