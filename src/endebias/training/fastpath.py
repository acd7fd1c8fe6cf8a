"""The fast path: ``channels_last``, bf16 autocast and ``torch.compile`` as trainer options.

Each option is ``"auto"``, ``"on"`` or ``"off"``. On CUDA "auto" turns all three on:

* ``channels_last`` lets cuDNN pick its NHWC convolution kernels (the fast ones for bf16);
* ``amp`` runs the forward pass under bf16 autocast (only where the GPU supports bf16;
  bf16 has float32's range, so no loss scaling is needed). The EnD terms are still
  summed in float32 (see ``endebias.regularizer``) and cross-entropy autocasts to float32;
* ``compile`` compiles the model in place (``nn.Module.compile``), which keeps the
  parameter names, so checkpoints load with the option on or off.

On CPU "auto" turns on ``amp`` alone, and only where bf16 is native (avx512_bf16 or AMX,
:func:`cpu_bf16_native`): oneDNN's bf16 kernels made a quick-preset training step 1.55x
faster, and the quick table at rho 0.997 over 3 seeds kept float32's accuracy (unbiased
64.55 +- 4.57 against 64.57 +- 4.43, no seed more than 0.3 points apart; docs/benchmarks.md).
``channels_last`` changes little on CPU, so it stays off. ``torch.compile`` stays off under
"auto" too: for the main network alone its gain on CPU is small and moves with the load
(0.63-1.04x the eager step time), but ``--compile on`` makes a step of RUBi, LearnedMixin
and ReBias about 1.8x faster, since their 1x1 bias-only network is memory-bound in eager
mode (benchmarks/bench_compile.py, docs/benchmarks.md). ``amp="off"`` gives the same
float32 arithmetic on every CPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from endebias.hooks import guard_hooks_under_compile


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
        # bf16 autocast only where the hardware computes in bf16 natively: Ampere and later
        # GPUs, CPUs with avx512_bf16 or AMX. Elsewhere it would be emulated and slower.
        if cuda:
            bf16 = torch.cuda.get_device_capability(device)[0] >= 8
        else:
            bf16 = device.type == "cpu" and cpu_bf16_native() is not None
        return cls(
            amp=_switch(amp, bf16),
            compile=_switch(compile, cuda),
            channels_last=_switch(channels_last, cuda),
        )

    def apply(self, method: nn.Module) -> None:
        """Convert the method's weights and compile its ``networks()``, in place (a
        :class:`~endebias.methods.Method` or a pack). Call once the method is on its
        device and before the optimiser is built."""
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        if self.compile:
            guard_hooks_under_compile()
            # ``nn.Module.compile`` compiles in place and keeps parameter names, so the
            # checkpoint is the same either way.
            for network in method.networks():
                network.compile()

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
