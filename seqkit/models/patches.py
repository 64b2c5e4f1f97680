"""Images as sequences of patches, in pure torch: `patchify` and its inverse."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C*p*p): patches left to right, top to bottom, each flattened
    channel-major as (C, p, p). N = (H/p) * (W/p)."""
    b, c, h, w = images.shape
    check_divisible((h, w), patch_size, "images")
    p = patch_size
    patches = images.unfold(2, p, p).unfold(3, p, p)  # (B, C, H/p, W/p, p, p)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)  # (B, N, C*p*p)


def unpatchify(patches: Tensor, patch_size: int, image_shape: Sequence[int]) -> Tensor:
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
    images = patches.reshape(-1, h // p, w // p, c, p, p)  # (B, H/p, W/p, C, p, p)
    return images.permute(0, 3, 1, 4, 2, 5).reshape(-1, c, h, w)  # (B, C, H/p, p, W/p, p)


def check_divisible(size: Sequence[int], patch_size: int, what: str) -> None:
    h, w = size
    if patch_size < 1 or h % patch_size or w % patch_size:
        raise ValueError(
            f"{what}: patch_size={patch_size} does not divide the image size {h}x{w}; "
            f"choose one of {[p for p in range(1, min(h, w) + 1) if h % p == 0 == w % p]}"
        )
