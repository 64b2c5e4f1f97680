"""The math library setting seqkit makes when it is imported: MKL's reproducibility mode on
x86 processors not made by Intel.

PyTorch's x86 builds do their float matrix products with Intel's oneMKL, which chooses its
kernels by processor vendor as well as by instruction set. On an AMD Zen 3 with AVX2 (this
project's machine), the products of decoding steps, 50 and 250 rows by 256 to 8,000 columns,
ran 1.1-1.5x faster with MKL's Conditional Numerical Reproducibility mode on
(`MKL_CBWR=AUTO`, documented by Intel) than with it off, MKL's default; training's, 1,700
rows, at the same speed (`bench/mkl_mode.py`). `MKL_VERBOSE=1` prints the mode of each call
("CNR:AUTO"). MKL reads the variable at its first call, so it counts only when seqkit is
imported before anything in the process has multiplied float matrices, as in `seqkit`'s
commands. A process that sets `MKL_CBWR` itself keeps its value (an empty value keeps the
mode off).
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def mkl_mode(cpuinfo: str) -> str | None:
    """The `MKL_CBWR` value for the processor `cpuinfo` describes (the text of Linux's
    /proc/cpuinfo): "AUTO" for an x86 processor not made by Intel that has AVX2 and FMA but no
    AVX-512 (the class measured, AMD Zen 2 and 3), None for any other."""
    fields = {}
    for line in cpuinfo.splitlines():
        if not line.strip():  # the first processor's block is enough
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    vendor = fields.get("vendor_id", "")
    if vendor and vendor != "GenuineIntel" and {"avx2", "fma"} <= flags and "avx512f" not in flags:
        return "AUTO"
    return None


def set_mkl_mode(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Set `MKL_CBWR` in `environ` to `mkl_mode` of this machine's processor, unless it is
    set already or this is not x86 Linux; returns the value set, if any."""
    if "MKL_CBWR" in environ or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        with CPUINFO.open() as f:
            head = f.read(16384)  # the first processor's block
    except OSError:
        return None
    mode = mkl_mode(head)
    if mode is not None:
        environ["MKL_CBWR"] = mode
    return mode
