"""A patch codebook: images as sequences of discrete tokens, one per square patch, each the
nearest of `num_codes` centroids found by k-means over training patches (Image GPT, Chen et al.
2020, clustered pixel colours into a 512-token palette; here whole patches are clustered, as
the first stage of a two-stage image generator like DALL-E's, without the learned encoder).

Pixels are floats in [0, 1] (uint8 images are divided by 255); tokens run in raster order
(left to right, then top to bottom, as `patchify(order="rows")`). Saved as
`codebook.safetensors` (the centroids) and `codebook.json` (the sizes): nothing is pickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from seqkit.errors import DataError
from seqkit.models.patches import check_divisible, patchify, unpatchify

CENTROIDS_FILE, META_FILE = "codebook.safetensors", "codebook.json"
FORMAT = "seqkit-patch-codebook"
PIXELS = "float in [0, 1] (uint8 / 255)"
"""How pixels are scaled before clustering; `codebook.json` records it."""


def as_unit_pixels(images: Tensor) -> Tensor:
    """(B, C, H, W) uint8 (0..255) or float ([0, 1]) images as float32 in [0, 1]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


class PatchCodebook:
    """`num_codes` centroids (K, C·p·p) of `patch_size` squares of images of `image_size`
    (H, W) with `channels` channels.

    Raises:
        ValueError: when the centroids do not have the shape the sizes give.
    """

    def __init__(
        self, centroids: Tensor, patch_size: int, image_size: tuple[int, int], channels: int
    ) -> None:
        check_divisible(image_size, patch_size, "PatchCodebook")
        dim = channels * patch_size**2
        if centroids.ndim != 2 or centroids.shape[1] != dim or len(centroids) < 1:
            raise ValueError(f"PatchCodebook: centroids of shape {tuple(centroids.shape)}; "
                             f"expected (K >= 1, {dim}) for {channels}-channel "
                             f"{patch_size}x{patch_size} patches")  # fmt: skip
        self.centroids = centroids.float().contiguous()
        self.patch_size, self.channels = patch_size, channels
        self.image_size = (int(image_size[0]), int(image_size[1]))

    @property
    def num_codes(self) -> int:
        """K, the number of tokens."""
        return len(self.centroids)

    @property
    def length(self) -> int:
        """Tokens per image, (H/p) · (W/p)."""
        h, w = self.image_size
        return (h // self.patch_size) * (w // self.patch_size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images it encodes and decodes."""
        return (self.channels, *self.image_size)

    @classmethod
    def fit(
        cls,
        images: Tensor,
        patch_size: int,
        size: int = 256,
        *,
        seed: int = 0,
        max_patches: int = 200_000,
    ) -> PatchCodebook:
        """Cluster the patches of `images` (N, C, H, W), uint8 or float in [0, 1], into `size`
        codes with scikit-learn's `MiniBatchKMeans` (Sculley, 2010), on at most `max_patches`
        patches drawn at random (fixed by `seed`). Codes are numbered darkest first (by mean
        pixel), so token 0 is the background of dark-background digits.

        Raises:
            ImportError: without scikit-learn.
            ValueError: for fewer distinct patches than codes.
        """
        try:
            from sklearn.cluster import MiniBatchKMeans
        except ImportError as err:
            raise ImportError(
                "PatchCodebook.fit needs scikit-learn: pip install scikit-learn"
            ) from err
        _, c, h, w = images.shape
        patches = patchify(as_unit_pixels(images), patch_size).reshape(-1, c * patch_size**2)
        rng = np.random.default_rng(seed)
        if len(patches) > max_patches:
            patches = patches[
                torch.from_numpy(rng.choice(len(patches), max_patches, replace=False))
            ]
        distinct = len(torch.unique(patches, dim=0))
        if distinct < size:
            raise ValueError(f"{distinct} distinct patches cannot make {size} codes; "
                             "lower the codebook size")  # fmt: skip
        kmeans = MiniBatchKMeans(n_clusters=size, random_state=seed, batch_size=4096, n_init=3)
        kmeans.fit(patches.numpy())
        centroids = torch.from_numpy(kmeans.cluster_centers_).float().clamp(0, 1)
        centroids = centroids[centroids.mean(1).argsort(stable=True)]
        return cls(centroids, patch_size, (h, w), c)

    def _check(self, images: Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images of shape {tuple(images.shape)}; this codebook encodes "
                             f"(B, {', '.join(map(str, self.image_shape))})")  # fmt: skip

    @torch.no_grad()
    def encode(self, images: Tensor, chunk: int = 65_536) -> Tensor:
        """Images (B, C, H, W), uint8 or float in [0, 1] -> tokens (B, L) int64 in [0, K),
        raster order: each patch's nearest centroid (squared Euclidean distance)."""
        self._check(images)
        patches = patchify(as_unit_pixels(images), self.patch_size)  # (B, L, P)
        flat = patches.reshape(-1, patches.shape[-1])
        codes = self.centroids.to(flat.device)
        norms = (codes * codes).sum(1)  # (K,)
        # ||x - c||² = ||x||² - 2 x·c + ||c||²; ||x||² is the same for every c.
        tokens = [(norms - 2 * part @ codes.T).argmin(1) for part in flat.split(chunk)]
        return torch.cat(tokens).view(patches.shape[:2])

    def decode(self, tokens: Tensor) -> Tensor:
        """Tokens (B, L) in [0, K) -> images (B, C, H, W) float in [0, 1].

        Raises:
            ValueError: for another length than `length` or a token out of range.
        """
        if tokens.ndim != 2 or tokens.shape[1] != self.length:
            raise ValueError(f"tokens of shape {tuple(tokens.shape)}; this codebook decodes "
                             f"(B, {self.length})")  # fmt: skip
        if len(tokens) and not 0 <= int(tokens.min()) <= int(tokens.max()) < self.num_codes:
            raise ValueError(f"tokens in [{int(tokens.min())}, {int(tokens.max())}], "
                             f"outside [0, {self.num_codes})")  # fmt: skip
        patches = self.centroids.to(tokens.device)[tokens]  # (B, L, P)
        return unpatchify(patches, self.patch_size, self.image_shape)

    def reconstruction_error(self, images: Tensor) -> tuple[float, float]:
        """(MSE, PSNR in dB) of `decode(encode(images))` against `images`, pixels in [0, 1]."""
        x = as_unit_pixels(images)
        mse = float(((self.decode(self.encode(x)) - x) ** 2).mean())
        return mse, 10 * math.log10(1 / mse) if mse > 0 else math.inf

    # -- persistence ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The sizes `codebook.json` holds (the centroids go to safetensors)."""
        return {"format": FORMAT, "version": 1, "patch_size": self.patch_size,
                "image_size": list(self.image_size), "channels": self.channels,
                "num_codes": self.num_codes, "pixels": PIXELS}  # fmt: skip

    def save(self, directory: str | Path) -> Path:
        """Write `codebook.safetensors` and `codebook.json` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"centroids": self.centroids.cpu()}, str(directory / CENTROIDS_FILE))
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        (directory / META_FILE).write_text(text, encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> PatchCodebook:
        """Read what `save` wrote, checking the JSON's fields and the centroids' shape.

        Raises:
            FileNotFoundError: for a missing file.
            DataError: naming the file, for one that is not such a codebook.
        """
        directory = Path(directory)
        meta_path, tensor_path = directory / META_FILE, directory / CENTROIDS_FILE
        for path in (meta_path, tensor_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not found; is {directory} a text-to-image "
                                        "model directory?")  # fmt: skip
        meta = _read_meta(meta_path)
        try:
            with safe_open(str(tensor_path), "pt") as f:
                shape = tuple(f.get_slice("centroids").get_shape())
                dim = meta["channels"] * meta["patch_size"] ** 2
                if shape != (meta["num_codes"], dim):
                    wanted = (meta["num_codes"], dim)
                    raise DataError(
                        f"{tensor_path}: centroids of shape {shape}, but {meta_path.name} "
                        f"makes {wanted}"
                    )
                centroids = f.get_tensor("centroids")
        except (SafetensorError, OSError, KeyError) as err:
            raise DataError(f"{tensor_path}: not a codebook's safetensors file ({err})") from None
        if not torch.isfinite(centroids).all():
            raise DataError(f"{tensor_path}: centroids hold NaN or infinite values")
        try:
            return cls(centroids, meta["patch_size"], tuple(meta["image_size"]), meta["channels"])
        except ValueError as err:
            raise DataError(f"{meta_path}: {err}") from None


def _read_meta(path: Path) -> dict:
    """`codebook.json`, its fields checked: positive ints, an (H, W) pair, the format name."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a {FORMAT} file")
    for key in ("patch_size", "channels", "num_codes"):
        if type(meta.get(key)) is not int or meta[key] < 1:
            raise DataError(f"{path}: {key}={meta.get(key)!r:.40} is not a positive int")
    size = meta.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(type(s) is int and s > 0
                                                             for s in size)):  # fmt: skip
        raise DataError(f"{path}: image_size={size!r:.40} is not [height, width]")
    return meta
