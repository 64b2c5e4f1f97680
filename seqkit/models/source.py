"""What a seq2seq network reads: token ids (B, S), or image patches (B, S, P) embedded by a
module the network is given (`build_model` makes it from an `ImageSource`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqkit.tokens import PAD


def source_mask(src: Tensor) -> Tensor:
    """(B, S) mask, True on real positions: token ids that are not PAD, or every patch of an
    unpadded patch batch (a padded one comes with the mask `image_sequence` returns)."""
    if src.is_floating_point():
        return torch.ones(src.shape[:2], dtype=torch.bool, device=src.device)
    return src != PAD


def source_sizes_known(config, image_source: object | None = None) -> bool:
    """Whether a seq2seq config knows its target vocabulary and its source: a vocabulary, or
    an image source."""
    return config.tgt_vocab_size > 0 and (image_source is not None or config.src_vocab_size > 0)


def check_source_sizes(config, src_embed: nn.Module | None = None) -> None:
    """Raise unless a seq2seq config knows its target vocabulary and its source (a vocabulary,
    or a given source embedding); both come from the data module when fitting starts.

    Raises:
        ValueError: naming the sizes that are missing.
    """
    if not source_sizes_known(config, src_embed):
        raise ValueError(
            f"{type(config).__name__} needs tgt_vocab_size > 0 and either src_vocab_size > 0 "
            "(token source) or an image source (ImageSource); fit with data to fill them"
        )
