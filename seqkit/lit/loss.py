"""The seq2seq training loss."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from seqkit.tokens import PAD


def label_smoothed_nll(
    logits: Tensor, target: Tensor, smoothing: float, ignore_index: int = PAD
) -> tuple[Tensor, Tensor, int]:
    """Mean label-smoothed loss and mean NLL over non-padding tokens, and their count.

    Works on the whole (B*T, V) matrix with a mask on the (B*T,) rows: selecting the
    non-padding rows first would copy the largest tensor of the step and scatter it back.
    """
    logp = logits.float().log_softmax(-1).flatten(0, 1)  # (B*T, V)
    target = target.flatten()
    keep = target != ignore_index
    n_tokens = int(keep.sum())
    nll = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="sum") / n_tokens
    if not smoothing:
        return nll, nll.detach(), n_tokens
    uniform = -(logp.sum(-1) * keep).sum() / (n_tokens * logp.shape[-1])
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach(), n_tokens


def check_label_smoothing(value: float) -> float:
    """`value`, or a ValueError naming label_smoothing unless 0 <= value < 1."""
    if not 0 <= value < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {value}")
    return value
