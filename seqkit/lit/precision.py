"""A warning for mixed precision that costs more than it saves (shared by every
LightningModule's `on_fit_start`)."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn


def cpu_has_bf16() -> bool:
    """Whether PyTorch multiplies bfloat16 matrices on this CPU with oneDNN (AVX-512 or
    AMX, or Arm's BF16). Without, every bf16 matmul falls back to PyTorch's reference GEMM."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True  # unknown: do not warn


def warn_if_slow_bf16(precision: str, device: torch.device) -> None:
    """Warn when `precision` (the trainer's) asks for bfloat16 on a CPU without bf16 matmul
    kernels: a training step was 6-9x slower than with 32-true on a 2-core AVX2 CPU
    (bench/train_speed.py --precision bf16), each Linear's input gradient 10-180x."""
    if device.type == "cpu" and str(precision).startswith("bf16") and not cpu_has_bf16():
        rank_zero_warn(
            f"trainer.precision={precision} on a CPU without bfloat16 matrix instructions "
            f"(PyTorch's CPU capability here: {torch.backends.cpu.get_cpu_capability()}; "
            "oneDNN's bf16 kernels need AVX-512 or AMX): every bf16 matmul falls back to a "
            "reference kernel many times slower than fp32. Train with "
            "--trainer.precision 32-true on this machine."
        )
