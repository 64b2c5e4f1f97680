"""Images as sequences of patches, in pure torch: `patchify`, its inverse, and
`image_sequence`, which turns a batch of images of different widths into a padded seq2seq
source."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from seqkit.tokens import PAD

Order = Literal["rows", "columns"]


def patchify(images: Tensor, patch_size: int, order: Order = "rows") -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p), N = (H/p) * (W/p), each patch flattened channel-major
    as (C, p, p). rows: left to right, then top to bottom (ViT); columns: top to bottom,
    then left to right (reading a line of text, so an image's patches do not depend on how
    wide it is)."""
    b, c, h, w = images.shape
    check_divisible((h, w), patch_size, "images")
    p = patch_size
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
    grid = (0, 2, 3, 1, 4, 5) if order == "rows" else (0, 3, 2, 1, 4, 5)
    return patches.permute(*grid).reshape(b, -1, c * p * p)  # (B, N, C*p*p)


def unpatchify(
    patches: Tensor, patch_size: int, image_shape: Sequence[int], order: Order = "rows"
) -> Tensor:
    """The inverse of `patchify`: (B, N, C*p*p) -> (B, C, H, W) for `image_shape` (C, H, W)."""
    c, h, w = image_shape
    check_divisible((h, w), patch_size, "images")
    p = patch_size
    expected = ((h // p) * (w // p), c * p * p)
    if tuple(patches.shape[1:]) != expected:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not make images of shape {(c, h, w)} "
            f"with patch_size={p}: expected (B, {expected[0]}, {expected[1]})"
        )
    if order == "rows":
        grid = patches.reshape(-1, h // p, w // p, c, p, p)  # (B, H/p, W/p, C, p, p)
    else:
        grid = patches.reshape(-1, w // p, h // p, c, p, p).transpose(1, 2)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w)  # (B, C, H/p, p, W/p, p)


def image_sequence(images: Tensor, widths: Tensor | None, patch_size: int) -> tuple[Tensor, Tensor]:
    """A batch of images (B, C, H, W), each right-padded from its own width in `widths` (B,)
    to W, as a seq2seq source: patches (B, N, C*p*p) in reading order (columns left to right,
    each top to bottom) and a mask (B, N), True on patches inside the image. Padding is then
    at the end of every sequence, as with token ids. `widths=None`: no padding."""
    b, _, h, w = images.shape
    patches = patchify(images, patch_size, order="columns")
    if widths is None:
        return patches, torch.ones(patches.shape[:2], dtype=torch.bool, device=images.device)
    if (widths % patch_size).any() or (widths > w).any():
        raise ValueError(f"image widths {widths.tolist()} must be multiples of "
                         f"patch_size={patch_size} and at most {w}")  # fmt: skip
    per_column = h // patch_size
    column = torch.arange(patches.shape[1], device=images.device) // per_column  # (N,)
    return patches, column[None] < (widths.to(images.device) // patch_size)[:, None]


def check_divisible(size: Sequence[int], patch_size: int, what: str) -> None:
    h, w = size
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(
            f"{what}: patch_size={patch_size} does not divide the image size {h}x{w}; "
            f"choose one of {[p for p in range(1, min(h, w) + 1) if h % p == 0 == w % p]}"
        )


def source_embedding(vocab_size: int, patch_size: int, channels: int, dim: int) -> nn.Module:
    """What turns a source into vectors (B, S, dim): an embedding of token ids (B, S), or,
    when `patch_size` > 0, a linear map of flattened image patches (B, S, channels*p*p)."""
    if not patch_size:
        return nn.Embedding(vocab_size, dim, padding_idx=PAD)
    embed = nn.Linear(channels * patch_size**2, dim)
    nn.init.normal_(embed.weight, std=embed.in_features**-0.5)  # unit variance out of unit in
    nn.init.zeros_(embed.bias)
    return embed


def source_mask(src: Tensor) -> Tensor:
    """(B, S) mask, True on real positions: token ids that are not PAD, or every patch of an
    unpadded patch batch (a padded one comes with the mask `image_sequence` returns)."""
    if src.is_floating_point():
        return torch.ones(src.shape[:2], dtype=torch.bool, device=src.device)
    return src != PAD


def source_sizes_known(config) -> bool:
    """Whether a seq2seq config has its target vocabulary and a source vocabulary or patches."""
    patches = config.src_patch_size > 0 and config.src_channels > 0
    return config.tgt_vocab_size > 0 and (patches or config.src_vocab_size > 0)


def check_source_sizes(config) -> None:
    """Raise unless a seq2seq config knows its source (a vocabulary, or patches and channels)
    and target sizes: either comes from the data module when fitting starts."""
    if not source_sizes_known(config):
        raise ValueError(
            f"{type(config).__name__} needs tgt_vocab_size > 0 and either src_vocab_size > 0 "
            "(token source) or src_patch_size and src_channels > 0 (image source); fit with "
            "data to fill them"
        )
