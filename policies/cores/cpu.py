"""The CPU this process runs on: one line for cache keys (``cpu_identity``) and a summary for
benchmark reports (``cpu_info``)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys

ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx_ne_convert", "avx512f", "avx512bw",
             "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve", "sve2", "bf16",
             "i8mm")


def cpu_identity() -> str:
    """The CPU's model and instruction-set flags, as the OS reports them (one line)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:  # the first processor's block
            if not line.strip():
                if fields:
                    break
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
    keys = ("vendor_id", "cpu family", "model", "model name", "cpu implementer", "cpu architecture",
            "cpu variant", "cpu part")
    model = " ".join(fields[k] for k in keys if k in fields) or platform.processor()
    flags = " ".join(sorted((fields.get("flags") or fields.get("features") or "").split()))
    if not flags and sys.platform == "darwin":
        with contextlib.suppress(Exception):
            flags = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string", "hw.optional"],
                                   check=False, capture_output=True, text=True, timeout=5).stdout.replace("\n", " ")
    return f"{platform.machine()} | {model} | {flags}"


def cpu_info() -> dict:
    """The CPU for benchmark reports: model, the vector instruction sets that matter here, cores."""
    machine, model, flags = cpu_identity().split(" | ", 2)
    return {"model": model, "arch": machine, "isa": [f for f in ISA_FLAGS if f in flags.split()],
            "logical_cpus": os.cpu_count()}
