"""The GPU fast path: ``channels_last``, bf16 autocast and ``torch.compile`` as trainer options.

Each option is ``"auto"`` (on for CUDA, off for CPU), ``"on"`` or ``"off"``. On CPU they
change little (docs/design.md section 8) and ``torch.compile`` costs ~40 s of cold start, so
"auto" leaves the CPU path exactly as it was. On CUDA:

* ``channels_last`` lets cuDNN pick its NHWC convolution kernels (the fast ones for bf16);
* ``amp`` runs the forward pass under bf16 autocast (only where the GPU supports bf16;
  bf16 has float32's range, so no loss scaling is needed). The EnD terms are still
  summed in float32 (see ``endebias.regularizer``) and cross-entropy autocasts to float32;
* ``compile`` compiles the model in place (``nn.Module.compile``), which keeps the
  parameter names, so checkpoints load with the option on or off.

On a CPU with native bf16 (avx512_bf16 or AMX, :func:`cpu_bf16_native`) ``amp="on"`` runs
the same bf16 autocast through oneDNN: about 1.5x per training step here, quick and paper
presets (docs/benchmarks.md). "auto" still leaves it off on CPU: the check that bf16 keeps
the quick table's accuracy within its seed spread has not been run yet.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def cpu_bf16_native() -> str | None:
    """The CPU flag that makes bf16 matrix arithmetic native (``avx512_bf16``, ``amx_bf16``),
    or None (Linux ``/proc/cpuinfo``; elsewhere None)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle
                          if line.startswith("flags")), [])
    except OSError:
        return None
    return next((flag for flag in ("amx_bf16", "avx512_bf16") if flag in flags), None)


def _switch(value: str, auto: bool) -> bool:
    return auto if value == "auto" else value == "on"


@dataclass(frozen=True)
class FastPath:
    """Which fast-path options a run uses; all off is the plain eager float32 path."""

    amp: bool = False
    compile: bool = False
    channels_last: bool = False

    @classmethod
    def resolve(
        cls, device: torch.device, *, amp: str = "auto", compile: str = "auto",
        channels_last: str = "auto",
    ) -> FastPath:
        cuda = device.type == "cuda"
        # bf16 autocast only where the GPU computes in bf16 natively (Ampere and later);
        # on older GPUs it would be emulated and slower.
        bf16 = cuda and torch.cuda.get_device_capability(device)[0] >= 8
        return cls(
            amp=_switch(amp, bf16),
            compile=_switch(compile, cuda),
            channels_last=_switch(channels_last, cuda),
        )

    def apply(self, method: nn.Module) -> None:
        """Convert the method's weights and compile its model, in place. Call once the
        method is on its device and before the optimiser is built."""
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        if self.compile:
            model = getattr(method, "model", method)
            model.compile()

    def inputs(self, batch: Tensor) -> Tensor:
        if self.channels_last and batch.dim() == 4:
            return batch.contiguous(memory_format=torch.channels_last)
        return batch

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        on = [name for name in ("amp", "compile", "channels_last") if getattr(self, name)]
        return ", ".join(on) if on else "none"
