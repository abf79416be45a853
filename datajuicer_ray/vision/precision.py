"""The precision the scorer computes in: ``vision.dtype`` resolved against the device that runs it.

``auto`` is the fastest precision the device runs natively: bf16 on CUDA, and on CPUs whose instruction set
has bf16 arithmetic (AVX512-BF16 or AMX: oneDNN then runs the matmuls on bf16 instructions); fp32 on every
other CPU, where bf16 would be converted in software and is no faster. ``fp32`` is one key away for anyone
who wants bit-stable scores.

The CPU's support is read from the kernel's flags (``/proc/cpuinfo``), not from torch: this module imports
no torch, so the driver names the precision in the run record without paying torch's import, and the flags
are the kernel's view of CPU *and* OS support (it hides AMX where the OS cannot save its state). torch's
public ``torch.backends.cpu.get_cpu_capability()`` names ATen's vector level ("AVX512"), which is the same
on AVX-512 CPUs with and without bf16, so it cannot decide this. Where there is no ``/proc/cpuinfo`` (not
Linux) ``auto`` stays fp32.
"""

from __future__ import annotations

import functools
from pathlib import Path

# Either is enough for oneDNN's native bf16 matmuls (Intel Cooper Lake / Sapphire Rapids+, AMD Zen 4+).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PRECISIONS = ("fp32", "bf16", "fp16")


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (the first processor's), empty where it reports none."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> str | None:
    """The flag that makes bf16 native on this CPU (``avx512_bf16`` or ``amx_bf16``), or None."""
    have = cpu_flags() if flags is None else flags
    return next((f for f in NATIVE_BF16_FLAGS if f in have), None)


def resolve(setting: str, device: str, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """``(precision, why)``: what ``vision.dtype=setting`` computes in on ``device`` ("cpu" or "cuda")."""
    if setting != "auto":
        if setting not in PRECISIONS:
            raise ValueError(f"vision.dtype: {setting!r} is not one of auto, {', '.join(PRECISIONS)}")
        return setting, "vision.dtype"
    if device.startswith("cuda"):
        return "bf16", "auto: CUDA"
    flag = cpu_native_bf16(flags)
    if flag:
        return "bf16", f"auto: the CPU has {flag}"
    return "fp32", "auto: the CPU has no native bf16 (avx512_bf16 or amx_bf16)"
