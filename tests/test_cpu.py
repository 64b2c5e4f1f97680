"""MKL's reproducibility mode, which seqkit turns on for x86 processors not made by Intel."""

import os
import subprocess
import sys

import pytest
import torch

from seqkit.cpu import CPUINFO, mkl_mode, set_mkl_mode

AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx fma avx2\n\n"
INTEL = AMD.replace("AuthenticAMD", "GenuineIntel")


@pytest.mark.parametrize(
    ("cpuinfo", "mode"),
    [
        (AMD, "AUTO"),
        (INTEL, None),  # MKL's own processors: its default choice is its best
        (AMD.replace("avx2", "avx2 avx512f"), None),  # not measured
        (AMD.replace(" avx2", ""), None),
        (AMD.replace("fma ", ""), None),
        ("", None),  # no /proc/cpuinfo fields (another kernel)
        # Only the first processor's block is read.
        (AMD.replace(" avx2", "") + AMD.replace("processor\t: 0", "processor\t: 1"), None),
    ],
)
def test_mkl_mode_is_on_for_other_vendors_with_avx2_only(cpuinfo, mode):
    assert mkl_mode(cpuinfo) == mode


@pytest.mark.parametrize("value", ["", "COMPATIBLE"])
def test_a_value_already_set_is_kept(value):
    environ = {"MKL_CBWR": value}
    assert set_mkl_mode(environ) is None
    assert environ == {"MKL_CBWR": value}


@pytest.mark.skipif(not torch.backends.mkl.is_available(), reason="PyTorch built without MKL")
@pytest.mark.skipif(not CPUINFO.exists(), reason="no /proc/cpuinfo")
def test_importing_seqkit_sets_the_mode_mkl_runs_in():
    """MKL itself reports its mode ("CNR:AUTO" or "CNR:OFF") for a product that runs after
    `import seqkit`."""
    expected = mkl_mode(CPUINFO.read_text()[:16384]) or "OFF"
    env = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"} | {"MKL_VERBOSE": "1"}
    code = "import torch, seqkit; torch.mm(torch.ones(4, 4), torch.ones(4, 4))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)  # fmt: skip
    assert f"CNR:{expected} " in out.stdout + out.stderr
