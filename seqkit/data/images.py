"""Image sources held in memory as uint8 (scikit-learn's 8x8 digits, MNIST IDX files, image
folders, Hugging Face datasets), stratified splits, normalization, and `load_images`."""

from __future__ import annotations

import gzip
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seqkit.errors import DataError

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes, 3 and 1 dimensions
IDX_FILE = re.compile(r"^(?P<prefix>.+)-(?P<kind>images|labels)[-.]idx[13]-ubyte(\.gz)?$")
TEST_PREFIXES = ("t10k", "test")  # IDX files of a source's own test split
IMAGE_COLUMNS, LABEL_COLUMNS = ("image", "img"), ("label", "labels")
GRAY_MODES = ("1", "L", "I", "I;16", "F")  # Pillow modes read as one channel

# --- sources ------------------------------------------------------------------------------


@dataclass
class ImagePool:
    """A whole image source in memory; the last `n_test` rows are the source's own test split."""

    images: Tensor  # uint8 (N, C, H, W), 0 = background
    labels: Tensor  # int64 (N,)
    class_names: list[str]
    n_test: int = 0


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """The uint8 array of an IDX file (optionally gzipped), checking its magic number."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {err}") from err
    ndim = magic & 0xFF
    found = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if found != magic or len(data) < 4 + 4 * ndim:
        shown = "missing" if found is None else f"{found:#010x}"
        raise DataError(
            f"{path}: IDX magic number is {shown}, expected {magic:#010x} "
            f"({'images' if magic == IDX_IMAGES else 'labels'} as unsigned bytes)"
            + ("" if found != magic else "; the header is cut short")
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(
            f"{path}: header says {dims} ({math.prod(dims)} bytes), data has {body.size}"
        )
    return body.reshape(dims)


def idx_files(directory: Path) -> dict[str, dict[str, Path]]:
    """Prefix (e.g. "t10k") -> {"images": path, "labels": path} of the IDX files in `directory`."""
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        if match := IDX_FILE.match(path.name):
            groups.setdefault(match["prefix"], {})[match["kind"]] = path
    for prefix, group in groups.items():
        for kind in {"images", "labels"} - set(group):
            raise DataError(f"{directory}: no {prefix}-{kind}-idx file beside {group}")
    return groups


def load_idx(directory: Path) -> ImagePool:
    """MNIST-style IDX files. With both train and test (t10k) files, the test ones are the
    source's test split; otherwise all files are pooled."""
    groups = idx_files(directory)
    test = [p for p in groups if p in TEST_PREFIXES] if len(groups) > 1 else []
    images, labels = [], []
    for prefix in [*(p for p in groups if p not in test), *test]:
        shape = images[0].shape[1:] if images else None
        x = read_idx(groups[prefix]["images"], IDX_IMAGES)
        y = read_idx(groups[prefix]["labels"], IDX_LABELS)
        if len(x) != len(y):
            raise DataError(
                f"{groups[prefix]['images']} holds {len(x)} images but "
                f"{groups[prefix]['labels'].name} holds {len(y)} labels"
            )
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"{groups[prefix]['images']}: images are {x.shape[1:]}, not {shape}")
        images.append(x)
        labels.append(y)
    y = np.concatenate(labels).astype(np.int64)
    names = [str(i) for i in range(int(y.max(initial=-1)) + 1)]
    n_test = sum(len(part) for part in labels[len(labels) - len(test) :])
    pool = torch.from_numpy(np.concatenate(images)[:, None].copy())  # (N, 1, H, W)
    return ImagePool(pool, torch.from_numpy(y), names, n_test)


def load_digits() -> ImagePool:
    """scikit-learn's bundled 8x8 digits (1,797 images), 0..16 rescaled to 0..255."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as err:
        raise ImportError("path='digits' needs scikit-learn: pip install scikit-learn") from err
    digits = sklearn_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    return ImagePool(torch.from_numpy(images), labels, [str(i) for i in range(10)])


def load_hub(
    path: str,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    folder: bool = False,
) -> ImagePool:
    """A Hugging Face dataset by name, or an image folder (class-named subfolders). A "test"
    split is the source's test split; the other splits are pooled."""
    import datasets

    what = "an image folder" if folder else "a Hugging Face dataset"
    try:
        if folder:
            splits = datasets.load_dataset("imagefolder", data_dir=path)
        else:
            splits = datasets.load_dataset(path)
    except Exception as err:  # a missing dataset raises one of several types
        raise DataError(f"{path}: cannot load it as {what}: {err}") from err
    names = [s for s in splits if s != "test"] + (["test"] if "test" in splits else [])
    first = splits[names[0]]
    image_column = _column(first, image_column, IMAGE_COLUMNS, path)
    label_column = _column(first, label_column, LABEL_COLUMNS, path)
    feature = first.features[label_column]
    classes = list(getattr(feature, "names", []))
    images, labels, where = [], [], []
    for name in names:
        data = splits[name]
        for start in range(0, len(data), 1000):
            rows = data[start : start + 1000]
            images += [_pixels(image, image_size) for image in rows[image_column]]
            labels += rows[label_column]
            where += [_image_name(image, path, f"{name} row {start + i}")
                      for i, image in enumerate(rows[image_column])]  # fmt: skip
    if labels and isinstance(labels[0], str):
        classes = sorted(set(labels))
        ids = {name: i for i, name in enumerate(classes)}
        labels = [ids[label] for label in labels]
    y = torch.tensor(labels, dtype=torch.int64)
    classes = classes or [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    n_test = len(splits["test"]) if "test" in splits and len(names) > 1 else 0
    return ImagePool(_stack(images, path, where), y, classes, n_test)


def _image_name(image: Any, root: str, fallback: str) -> str:
    """How an error names one image: its file (relative to an image folder), else its row."""
    filename = getattr(image, "filename", "")
    if not filename:
        return fallback
    try:
        return str(Path(filename).relative_to(Path(root).resolve()))
    except ValueError:
        return str(filename)


def _column(data: Any, given: str | None, defaults: Sequence[str], path: str) -> str:
    found = [given] if given else [c for c in defaults if c in data.column_names]
    if not found or found[0] not in data.column_names:
        raise DataError(
            f"{path}: no column {given or ' or '.join(defaults)} in {data.column_names}"
        )
    return found[0]


def eight_bit(image: Any, where: str) -> Any:
    """A Pillow image of 16- or 32-bit gray values ("I;16*", "I") scaled to 8 bits ("L"):
    Pillow's own `convert("L")` clips them at 255, which turns a 16-bit image white. "I"
    values up to 255 are taken as 8-bit, up to 65535 as 16-bit. Other modes as they are.

    Raises:
        DataError: naming `where`, for "I" values outside 0..65535.
    """
    if not image.mode.startswith("I"):
        return image
    from PIL import Image

    values = np.asarray(image, dtype=np.int64)
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if low < 0 or high > 65535:
        raise DataError(f"{where}: gray values in [{low}, {high}], expected 0..65535")
    if image.mode.startswith("I;16") or high > 255:
        values = np.rint(values / 257)
    return Image.fromarray(values.astype(np.uint8), mode="L")


def _pixels(image: Any, image_size: int | None, where: str = "image") -> np.ndarray:
    """A Pillow image -> uint8 (H, W) or (H, W, 3)."""
    image = eight_bit(image, where)
    image = image.convert("L" if image.mode in GRAY_MODES else "RGB")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size))
    return np.asarray(image, dtype=np.uint8)


def _stack(images: Sequence[np.ndarray], where: str, names: Sequence[str] | None = None) -> Tensor:
    """uint8 (H, W) or (H, W, 3) arrays -> (N, C, H, W); gray ones join color ones as RGB.
    `names` name the images in errors (default: "image i")."""
    if not images:
        raise DataError(f"{where}: no images")
    color = any(image.ndim == 3 for image in images)
    arrays = [np.repeat(x[..., None], 3, -1) if color and x.ndim == 2 else x for x in images]
    names = names or [f"image {i}" for i in range(len(arrays))]
    for i, x in enumerate(arrays):
        if x.shape != arrays[0].shape:
            raise DataError(
                f"{where}: {names[i]} is {x.shape[:2]} pixels (height, width), {names[0]} is "
                f"{arrays[0].shape[:2]}; give image_size= to resize them"
            )
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.permute(0, 3, 1, 2).contiguous() if color else stacked[:, None]


def load_source(
    path: str,
    image_column: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
) -> ImagePool:
    """`path`: "digits", a directory of IDX files, an image folder or a Hugging Face dataset."""
    if path == "digits":
        return load_digits()
    local = Path(path).expanduser()
    if local.is_dir():
        if idx_files(local):
            return load_idx(local)
        return load_hub(str(local), image_column, label_column, image_size, folder=True)
    if local.exists():
        raise DataError(f"{path}: a file; give a directory of IDX files or an image folder")
    if path.startswith((".", "/", "~")):
        raise DataError(f"{path}: no such directory")
    return load_hub(path, image_column, label_column, image_size)


# --- splits and pixels --------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, n_val: int, n_test: int, seed: int
) -> dict[str, np.ndarray]:
    """Disjoint sorted row indices "train", "val" (n_val rows) and "test" (n_test rows), each
    holding every class within one example of its share. Fixed by `seed`."""
    if n_val + n_test > len(labels):
        raise DataError(f"{len(labels)} images cannot make {n_val} val + {n_test} test")
    classes, counts = np.unique(labels, return_counts=True)
    sizes = np.array([n_test, n_val, len(labels) - n_val - n_test])
    table = _round_table(counts[:, None] * sizes, len(labels))  # (classes, 3)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"test": [], "val": [], "train": []}
    for label, row in zip(classes, table, strict=True):
        rows = rng.permutation(np.flatnonzero(labels == label))
        for name, part in zip(parts, np.split(rows, np.cumsum(row)[:2]), strict=True):
            parts[name].append(part)
    return {name: np.sort(np.concatenate(rows)) for name, rows in parts.items()}


def check_split_sizes(**sizes: int | float) -> None:
    """Raise ValueError unless each size is a count >= 1 or a fraction in (0, 1)."""
    for name, size in sizes.items():
        count = isinstance(size, int) and size >= 1
        if not (count or (isinstance(size, float) and 0 < size < 1)):
            raise ValueError(f"{name}={size!r}: give a count >= 1 or a fraction in (0, 1)")


def split_pool(
    pool: ImagePool, val_size: int | float, test_size: int | float, seed: int, where: str
) -> dict[str, np.ndarray]:
    """Rows of "train", "val" and "test": the source's own test split when it has one, else
    `test_size` pooled images; `val_size` pooled images; stratified by label, fixed by
    `seed`. Sizes are counts or fractions of the pooled images; `where` names the source."""
    n_pool = len(pool.labels) - pool.n_test
    n_val = _count(val_size, n_pool)
    n_test = 0 if pool.n_test else _count(test_size, n_pool)
    splits = stratified_split(pool.labels[:n_pool].numpy(), n_val, n_test, seed)
    if pool.n_test:
        splits["test"] = np.arange(n_pool, len(pool.labels))
    for name, rows in splits.items():
        if len(rows) == 0:
            raise DataError(f"{where}: the {name} split is empty ({n_pool} images pooled, "
                            f"val_size={val_size}, test_size={test_size})")  # fmt: skip
    return splits


def load_digit_pools(
    path: str | None, val_size: int | float, test_size: int | float, seed: int, purpose: str
) -> tuple[ImagePool, dict[str, np.ndarray]]:
    """The digit images of `path` (`load_source`) and their "train", "val", "test" rows
    (`split_pool`), for data built from the digits 0-9 (strips, text to image).

    Raises:
        DataError: naming `path` and `purpose` when the labels are not the digits 0-9, or a
            split would be empty.
    """
    pool = load_source(path)
    found = sorted(set(pool.labels.tolist()))
    if found != list(range(10)):
        raise DataError(f"{path}: for {purpose}, the images must show the digits 0-9; "
                        f"found labels {found}")  # fmt: skip
    return pool, split_pool(pool, val_size, test_size, seed, path)


def _count(size: int | float, n: int) -> int:
    return size if isinstance(size, int) else round(size * n)


def _round_table(numerators: np.ndarray, denominator: int) -> np.ndarray:
    """Round each cell of `numerators / denominator`, a table whose row and column sums are
    whole, down or up so that those sums stay. Which cells go up is a bipartite matching of
    rows to columns, found by augmenting paths (a solution always exists)."""
    table, remainder = np.divmod(numerators, denominator)
    up = np.zeros(table.shape, dtype=bool)
    room = (numerators.sum(0) // denominator - table.sum(0)).tolist()  # ups left per column

    def augment(row: int, seen: set[int]) -> bool:
        for col in np.flatnonzero((remainder[row] > 0) & ~up[row]).tolist():
            if col in seen:
                continue
            seen.add(col)
            if room[col] > 0:  # a free up in `col`
                room[col] -= 1
            else:  # or one whose row can go up in another column instead
                owners = np.flatnonzero(up[:, col]).tolist()
                moved = next((other for other in owners if augment(other, seen)), None)
                if moved is None:
                    continue
                up[moved, col] = False
            up[row, col] = True
            return True
        return False

    for row in range(len(table)):
        for _ in range(int(numerators[row].sum() // denominator - table[row].sum())):
            if not augment(row, set()):
                raise AssertionError("no rounding found")  # impossible for whole sums
    return table + up


def pixel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1]."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(1024):  # float64 of all of CIFAR-10 would take 1.2 GB
        x = chunk.double() / 255
        total += x.sum((0, 2, 3))
        squares += (x * x).sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean**2).clamp(min=0).sqrt()
    return mean.tolist(), [s if s > 0 else 1.0 for s in std.tolist()]


def load_images(
    images: Any, size: Sequence[int] | None = None, channels: int | None = None
) -> Tensor:
    """Images to predict on -> (B, C, H, W): uint8, or float32 in [0, 1] if any input is float.

    `images` is one item or a list of items: a file path (PNG, JPEG, ...: needs Pillow), or
    an array or tensor (H, W), (C, H, W) or (H, W, C) with C in {1, 3}; one array (B, C, H, W)
    is a batch. Integer pixels are 0..255, float pixels 0..1. `size` (H, W) resizes and
    `channels` (1 or 3) converts (gray <-> RGB); without them all images must agree.
    """
    tensors = [_image_tensor(item, channels) for item in image_items(images)]
    if not tensors:
        raise DataError("load_images: no images given")
    as_float = any(t.is_floating_point() for t in tensors)
    if as_float:
        tensors = [t.float() / 255 if t.dtype == torch.uint8 else t.float() for t in tensors]
    if size is not None:
        tensors = [resize(t[None], (size[0], size[1]))[0] for t in tensors]
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise DataError(
                f"load_images: image {i} is {tuple(t.shape)} (C, H, W), image 0 is "
                f"{tuple(tensors[0].shape)}; give size= or channels="
            )
    return torch.stack(tensors)


def image_items(images: Any) -> list[Any]:
    """The images `load_images` takes as a list: one (B, C, H, W) array is B images, one path,
    array or tensor is one image, anything else is a sequence of them."""
    if isinstance(images, np.ndarray | Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, str | Path | np.ndarray | Tensor):
        return [images]
    return list(images)


def _image_tensor(item: Any, channels: int | None) -> Tensor:
    """One image -> (C, H, W) uint8 or float in [0, 1]."""
    if isinstance(item, str | Path):
        return _read_image(Path(item), channels)
    x = torch.as_tensor(np.asarray(item) if not isinstance(item, Tensor) else item)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] in (1, 3) and x.shape[0] not in (1, 3):
        x = x.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if x.ndim != 3 or x.shape[0] not in (1, 3) or not x.shape[1] or not x.shape[2]:
        raise DataError(
            f"load_images: an array of shape {tuple(x.shape)}; expected (H, W), "
            "(C, H, W) or (H, W, C) with C in {1, 3} and H, W > 0, or a batch (B, C, H, W)"
        )
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):  # no min/max kernels for these
        x = x.to(torch.int64)
    low, high = (x.min().item(), x.max().item()) if x.numel() else (0, 0)
    if x.is_floating_point() and not 0 <= low <= high <= 1:
        raise DataError(
            f"load_images: float pixels in [{low}, {high}]; scale them to [0, 1] "
            "(divide 0..255 by 255, scikit-learn's digits by 16)"
        )
    if not x.is_floating_point():
        if not 0 <= low <= high <= 255:
            raise DataError(f"load_images: integer pixels in [{low}, {high}], expected 0..255")
        x = x.to(torch.uint8)
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif channels == 1 and x.shape[0] == 3:  # ITU-R 601 luma, as Pillow's convert("L")
        luma = (torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1) * x.float()).sum(0, keepdim=True)
        x = luma.round().to(torch.uint8) if x.dtype == torch.uint8 else luma
    return x


def _read_image(path: Path, channels: int | None) -> Tensor:
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("reading image files needs Pillow: pip install pillow") from err
    try:
        with Image.open(path) as opened:
            image = eight_bit(opened, str(path))
            gray = channels == 1 or (channels is None and image.mode in GRAY_MODES)
            pixels = np.asarray(image.convert("L" if gray else "RGB"), dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path}: cannot read the image: {err}") from err
    x = torch.from_numpy(pixels.copy())
    return x[None] if x.ndim == 2 else x.permute(2, 0, 1)


def shift_images(images: Tensor, offsets: Tensor, k: int, fill: Tensor) -> Tensor:
    """Move each image (B, C, H, W) by `offsets` (B, 2) minus `k` pixels down and right
    (offsets in [0, 2k]), filling the uncovered border with `fill` (1, C, 1, 1)."""
    b, _, h, w = images.shape
    # Background is `fill`: pad with it by padding zeros around images - fill.
    padded = F.pad(images - fill, (k, k, k, k)) + fill  # (B, C, H+2k, W+2k)
    rows = offsets[:, :1] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=images.device)  # (B, W)
    batch_rows = torch.arange(b, device=images.device)[:, None, None]
    moved = padded[batch_rows, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return moved.permute(0, 3, 1, 2).contiguous()


def resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) uint8 or float -> (B, C, *size), bilinear with antialiasing."""
    if tuple(images.shape[2:]) == size:
        return images
    x = F.interpolate(images.float(), size, mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else x
