"""What processor a timing ran on: speed ratios differ between machines of the same kind (an Intel Xeon with AMX,
an AMD EPYC with or without AVX-512), so every report records it."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# instruction-set extensions that decide which int8 / bf16 kernels a runtime can use
ISA_FLAGS = ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # the CPU has bf16 matmul kernels


@functools.cache  # read once: --teacher-precision auto asks on every teacher forward, and the CPU does not change
def cpu_has_bf16() -> bool:
    return any(flag in processor()["isa"] for flag in BF16_FLAGS)


def processor() -> dict[str, object]:
    """{"model", "cores", "isa": [flags among ISA_FLAGS]} from /proc/cpuinfo (platform strings elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": usable_cores(), "isa": [f for f in ISA_FLAGS if f in flags]}


def describe_processor(cpu: dict[str, object]) -> str:
    """`processor()`'s record in words: `AMD EPYC (avx2)`."""
    return f"{cpu.get('model')} ({', '.join(cpu.get('isa') or []) or 'no AVX2'})"


def usable_cores() -> int:
    """The CPUs this process may run on (taskset, container cpusets), not every CPU the host has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

