"""Images as sequences of patches, in pure torch: `patchify`, its inverse, `image_sequence`,
which turns a batch of images of different widths into a padded seq2seq source, and
`ImageSource`, everything a seq2seq model needs to read images as its source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

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


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) uint8 pixels (0..255) or floats in [0, 1] -> float32, standardized."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    mean_ = torch.tensor(mean, device=x.device).view(-1, 1, 1)
    return (x - mean_) / torch.tensor(std, device=x.device).view(-1, 1, 1)


def patch_embedding(patch_dim: int, width: int) -> nn.Linear:
    """A linear map of flattened patches (B, S, patch_dim) to (B, S, width), initialized so
    that unit-variance pixels give unit-variance vectors."""
    embed = nn.Linear(patch_dim, width)
    nn.init.normal_(embed.weight, std=patch_dim**-0.5)
    nn.init.zeros_(embed.bias)
    return embed


@dataclass(frozen=True)
class ImageSource:
    """How a seq2seq model reads images: cut into `patch_size` squares of `channels` channels,
    scaled to `height` pixels (any width), standardized by the training pixels' `mean` and
    `std` per channel, and read column by column (`image_sequence`).

    Raises:
        ValueError: when `patch_size` does not divide `height`, or the statistics do not have
            one value per channel.
    """

    patch_size: int
    """Side of the square patches, in pixels."""
    channels: int
    """Image channels (1 gray, 3 RGB)."""
    height: int
    """Image height in pixels; images of another height are scaled to it."""
    mean: tuple[float, ...]
    """Mean of the training pixels (0..1) per channel."""
    std: tuple[float, ...]
    """Standard deviation of the training pixels per channel."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels < 1 or not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"ImageSource: {self.channels} channel(s) need as many means and "
                             f"stds, got {self.mean} and {self.std}")  # fmt: skip
        check_divisible((self.height, self.height), self.patch_size, "ImageSource")

    @property
    def patch_dim(self) -> int:
        """Values in one flattened patch, C·p·p."""
        return self.channels * self.patch_size**2

    @property
    def per_column(self) -> int:
        """Patches in one column of the image."""
        return self.height // self.patch_size

    def cut(self, images: Tensor, widths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Images (B, C, height, W), uint8 or float in [0, 1], each right-padded from its own
        width in `widths` (B,), as a standardized seq2seq source: patches (B, N, C·p·p) and
        their mask (B, N)."""
        return image_sequence(normalize(images, self.mean, self.std), widths, self.patch_size)

    def restore(self, patches: Tensor) -> np.ndarray:
        """The picture (H, W, 3) uint8 that one image's real patches (N, C·p·p), in reading
        order, were cut from: put back in place, the standardization undone."""
        p, c, h = self.patch_size, self.channels, self.height
        w = len(patches) // self.per_column * p
        x = unpatchify(patches[None].float().cpu(), p, (c, h, w), order="columns")[0]
        x = x * torch.tensor(self.std).view(-1, 1, 1) + torch.tensor(self.mean).view(-1, 1, 1)
        x = x.clamp(0, 1).mul(255).round().to(torch.uint8)  # (C, H, W)
        return x.expand(3, h, w).permute(1, 2, 0).numpy() if c == 1 else x.permute(1, 2, 0).numpy()

    def to_dict(self) -> dict:
        """Plain, JSON-ready fields (config.json, checkpoints)."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "image_source") -> ImageSource:
        """Inverse of `to_dict`; `where` names the data in errors."""
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
