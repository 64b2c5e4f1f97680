"""Inference precision of a trained network, under CTranslate2's names for compute types.

- "float32": as trained.
- "bfloat16": weights and activations in bfloat16; log-probabilities are still computed in
  float32 (`seqkit.decoding.next_token_logprobs`).
- "int8": every `nn.Linear` holds int8 weights, one scale per output row, and quantizes its
  input on the fly (PyTorch's dynamic quantization, `torch.ao.quantization.quantize_dynamic`;
  CTranslate2's "int8_float32"). Embeddings, LayerNorms and recurrent cells stay float32.
  Unlike CTranslate2, which scales each row of an input on its own, PyTorch quantizes a whole
  input at one scale: in int8 a sentence's output can depend on its batch-mates.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

ComputeType = Literal["float32", "bfloat16", "int8"]
COMPUTE_TYPES: tuple[str, ...] = ("float32", "bfloat16", "int8")


def set_compute_type(net: nn.Module, compute_type: str) -> nn.Module:
    """`net` (in eval mode) for inference in `compute_type`; "int8" returns a quantized copy
    that runs on the CPU only, the others convert `net` in place.

    Raises:
        ValueError: for a compute type not in `COMPUTE_TYPES`, or "int8" on another device.
    """
    if compute_type not in COMPUTE_TYPES:
        raise ValueError(f"compute_type {compute_type!r}: choose one of {', '.join(COMPUTE_TYPES)}")
    net.eval()
    if compute_type == "bfloat16":
        return net.to(torch.bfloat16)
    if compute_type == "int8":
        device = next(net.parameters()).device
        if device.type != "cpu":
            raise ValueError(f"compute_type 'int8' runs on the CPU, not on {device}")
        with warnings.catch_warnings():  # torch.ao's notice that torchao will take it over
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(net, {nn.Linear}, dtype=torch.qint8)
    return net


def floating_dtype(net: nn.Module) -> torch.dtype:
    """The dtype a network's floating inputs (image patches) must have."""
    return next(p.dtype for p in net.parameters() if p.is_floating_point())
