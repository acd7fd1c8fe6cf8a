"""Capture the output of any submodule during forward passes, and L2Normalize."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

# Attribute names under which wrappers keep the model they wrap: torch.compile's
# OptimizedModule, DistributedDataParallel / DataParallel, and a LightningModule's usual
# ``self.model``. A layer name is also looked for behind any chain of them.
WRAPPER_PREFIXES = ("_orig_mod", "module", "model")


class L2Normalize(nn.Module):
    """Normalise each sample's flattened features to unit L2 norm (the paper's "pattern norm").

    Models place it right before the layer EnD reads, so the Gram entries are cosines.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return nn.functional.normalize(flat, dim=1, eps=self.eps).reshape(x.shape)


class CapturedFeatures:
    """The outputs of the hooked layer during the model's latest forward pass, kept with
    their autograd graph; a new forward pass of the model starts a new list."""

    def __init__(self, layer_name: str) -> None:
        self.layer_name = layer_name
        self.outputs: list[Tensor] = []

    def get(self) -> Tensor:
        """The layer's output in the model's latest forward pass.

        Raises RuntimeError before any pass, and when the layer ran more than once in that
        pass (a shared encoder, a siamese network): :meth:`get_all` returns every call's.
        """
        if len(self.outputs) != 1:
            self._fail_if_empty()
            raise RuntimeError(
                f"layer {self.layer_name!r} ran {len(self.outputs)} times in the model's last "
                "forward pass: get_all() returns each call's output, in call order"
            )
        return self.outputs[0]

    def get_all(self) -> list[Tensor]:
        """Every output of the layer in the model's latest forward pass, in call order."""
        self._fail_if_empty()
        return list(self.outputs)

    def _fail_if_empty(self) -> None:
        if not self.outputs:
            raise RuntimeError(f"no features captured from layer {self.layer_name!r}: "
                               "run a forward pass of the model inside the block first")

    # Hooks: bound methods that only touch a list, so that torch.compile(fullgraph=True)
    # traces them as part of the model's graph.
    def _start_pass(self, _module: nn.Module, _args: Any) -> None:
        self.outputs.clear()

    def _record(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self.outputs.append(output)


def _strip_wrappers(name: str) -> str:
    parts = name.split(".")
    while len(parts) > 1 and parts[0] in WRAPPER_PREFIXES:
        parts = parts[1:]
    return ".".join(parts)


def find_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """``(name, submodule)`` for a dotted name (e.g. ``layer4.1.relu``) or a submodule of
    ``model``; a name is also found behind wrappers (``_orig_mod.``, ``module.``, ``model.``)
    on either side. A ValueError suggests the closest names to a misspelt one."""
    modules = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer and name:
                return name, module
        raise ValueError(f"layer {type(layer).__name__} is not a submodule of the model")
    if not isinstance(layer, str):
        raise ValueError(f"layer must be a name or a module, got {type(layer).__name__}")
    if layer in modules and layer:
        return layer, modules[layer]
    wanted = _strip_wrappers(layer)
    matches = [name for name in modules if name and _strip_wrappers(name) == wanted]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    if len(matches) > 1:
        raise ValueError(f"layer name {layer!r} is ambiguous: it matches {', '.join(matches)}")
    names = [name for name in modules if name]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
    hint = f"closest names: {', '.join(close)}" if close else (
        f"its top-level layers: {', '.join(name for name in names if '.' not in name)}"
    )
    raise ValueError(f"model has no layer named {layer!r} ({len(names)} layers); {hint}")


def guard_hooks_under_compile() -> None:
    """Make compiled code check the forward hooks it was traced with. By default dynamo
    skips that check, so a second model of the same class (a sweep's next trial) could
    reuse a graph traced for the first without the feature-capturing hook, and capture
    nothing. Process-wide; call it before compiling (the trainer's
    ``--compile`` does)."""
    import torch._dynamo.config  # imported here: it costs about 1.5 s, paid only to compile

    torch._dynamo.config.skip_nnmodule_hook_guards = False


@contextmanager
def capture_features(model: nn.Module, layer: str | nn.Module) -> Iterator[CapturedFeatures]:
    """Record the output of ``layer`` (a dotted name inside ``model``, or the submodule
    itself) during each forward pass of ``model`` inside the block.

    ``.get()`` returns the output of the latest pass, with its autograd graph, so a loss on
    it trains the layers below; a layer that runs several times per pass is kept once per
    call (``.get_all()``). The list restarts at each forward pass of ``model``, so the block
    may span a whole training loop. A wrapped model (``torch.compile``, DDP, a
    LightningModule holding ``self.model``) finds the layer by its unwrapped name.

    Under ``torch.compile`` enter the block outside the compiled function: the hooks run
    inside the compiled graph, but registering them cannot be traced. Where one process
    compiles several models of one class, call :func:`guard_hooks_under_compile` before
    compiling the first. The hooks are removed on exit, also when the block raises.
    """
    name, module = find_layer(model, layer)
    captured = CapturedFeatures(name)
    handles = [model.register_forward_pre_hook(captured._start_pass),
               module.register_forward_hook(captured._record)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
