"""Images as sequences of patches: `ImageData`, the LightningDataModule of image sources
(see `seqkit.data.images`), and `patchify` / `unpatchify` (from `seqkit.models.patches`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from seqkit.data.batching import whole_batch
from seqkit.data.images import (
    ImagePool,
    check_split_sizes,
    load_source,
    pixel_stats,
    resize,
    shift_images,
    split_pool,
)
from seqkit.errors import DataError
from seqkit.models.patches import check_divisible, normalize, patchify, unpatchify

__all__ = ["ImageData", "patchify", "unpatchify"]

# --- the data module ----------------------------------------------------------------------


class Repeated(int):
    """A row that `EvenShards` repeats only so that every rank gets as many rows."""


class EvenShards(DistributedSampler):
    """DistributedSampler whose rows repeated to even out ranks come as `Repeated`, so that
    batches can flag them ("keep" is False) and evaluation counts every image once."""

    def __iter__(self):
        n = len(self.dataset)  # type: ignore[arg-type]
        for i, row in enumerate(super().__iter__()):
            # The parent pads the row list to total_size, then deals it out by rank.
            yield Repeated(row) if self.rank + i * self.num_replicas >= n else row


class _Split(Dataset):
    """Rows `index` of an image pool; `__getitems__` makes a whole normalized batch at once."""

    def __init__(self, pool: ImagePool, index: np.ndarray, mean: list[float], std: list[float]):
        self.images, self.labels = pool.images, pool.labels
        self.index = torch.from_numpy(index).long()
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, rows: list[int]) -> dict[str, Tensor]:
        index = self.index[torch.as_tensor(rows, dtype=torch.long)]
        image = normalize(self.images[index], self.mean, self.std)
        keep = torch.tensor([not isinstance(row, Repeated) for row in rows])
        return {"image": image, "label": self.labels[index], "index": index, "keep": keep}

    def __getitem__(self, row: int) -> dict[str, Tensor]:
        return {key: value[0] for key, value in self.__getitems__([row]).items()}


class TrainPixelStats:
    """`mean` and `std` of the train split's pixels in [0, 1], per channel, set when the data
    loads (`_ensure_loaded`) and kept in checkpoints (`state_dict`), so that a resumed run
    normalizes as the first one did."""

    _stats: tuple[list[float], list[float]] | None = None
    _ensure_loaded: Callable[[], None]  # the data module's: loads the images, sets `_stats`

    @property
    def mean(self) -> list[float]:
        """Per-channel mean of the train split's pixels in [0, 1]."""
        self._ensure_loaded()
        assert self._stats is not None
        return list(self._stats[0])

    @property
    def std(self) -> list[float]:
        """Per-channel standard deviation of the train split's pixels in [0, 1]."""
        self._ensure_loaded()
        assert self._stats is not None
        return list(self._stats[1])

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mean": self.mean, "std": self.std}  # type: ignore[misc]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._stats = (list(state_dict["mean"]), list(state_dict["std"]))


class ImageData(TrainPixelStats, L.LightningDataModule):
    """Labelled images held in memory as uint8, split by label-stratified sampling, served as
    normalized float batches {"image": (B, C, H, W), "label": (B,), "index": (B,)}.

    Pixels are scaled to [0, 1] and standardized per channel by the train split's mean and
    std, which the checkpoint keeps (`state_dict`). "index" is the image's row in the source.
    Predicting serves the test split.

    Args:
        path: "digits" (scikit-learn's bundled 8x8 digits, no files), a directory of MNIST
            IDX files (`*-images-idx3-ubyte[.gz]`, `*-labels-idx1-ubyte[.gz]`), an image
            folder (one subfolder per class), or a Hugging Face dataset name (e.g. mnist,
            fashion_mnist, cifar10). A source's own test split (IDX `t10k-*`/`test-*` files
            beside others, a dataset's "test" split) is the test split; the rest is pooled.
        image_column: Image column of a Hugging Face dataset (default: "image" or "img").
        label_column: Label column of a Hugging Face dataset (default: "label" or "labels").
        val_size: Validation images: a count, or a fraction of the pooled images.
        test_size: Test images, as `val_size`; unused when the source has a test split.
        num_classes: Number of classes; labels must lie in [0, num_classes). Default: the
            dataset's class names, else the largest label + 1.
        image_size: Resize the images of a dataset or image folder to this square size.
        augment: Shift training images by up to 1 pixel per 14 (at least 1), seeded by
            `seed`, the epoch and the image; validation and test images are never changed.
        seed: Seed of the split, the batch order and the augmentation.
        batch_size: Training batch size.
        eval_batch_size: Validation, test and predict batch size (default: `batch_size`).
        num_workers: DataLoader worker processes (persistent when > 0).
    """

    def __init__(
        self,
        path: str = "digits",
        image_column: str | None = None,
        label_column: str | None = None,
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        num_classes: int | None = None,
        image_size: int | None = None,
        augment: bool = False,
        seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_split_sizes(val_size=val_size, test_size=test_size)
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value}: must be >= 1")
        self.path = str(path)
        self.image_column, self.label_column = image_column, label_column
        self.val_size, self.test_size = val_size, test_size
        self.num_classes_given, self.image_size = num_classes, image_size
        self.augment, self.seed = augment, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self._pool: ImagePool | None = None
        self._splits: dict[str, np.ndarray] = {}
        self._stats: tuple[list[float], list[float]] | None = None
        self._offsets: tuple[int, Tensor] | None = None  # (epoch, shifts of every image)

    # --- data ---------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download a Hugging Face dataset into its cache (once per node); files need nothing."""
        local = self.path == "digits" or self.path.startswith((".", "/", "~"))
        if not local and not Path(self.path).expanduser().exists():
            import datasets

            try:
                datasets.load_dataset(self.path)
            except Exception as err:  # setup reports it, on every rank
                rank_zero_warn(f"{self.path}: download failed: {err}")

    def setup(self, stage: str | None = None) -> None:
        """Load the source, split it, and take the normalization from the train split."""
        if self._pool is not None:
            return
        pool = load_source(self.path, self.image_column, self.label_column, self.image_size)
        if self.image_size is not None:
            pool.images = resize(pool.images, (self.image_size, self.image_size))
        self._check_labels(pool)
        splits = split_pool(pool, self.val_size, self.test_size, self.seed, self.path)
        self._pool, self._splits = pool, splits
        if self._stats is None:  # else restored from a checkpoint
            self._stats = pixel_stats(pool.images[torch.from_numpy(splits["train"])])

    def _check_labels(self, pool: ImagePool) -> None:
        n = self.num_classes_given or len(pool.class_names)
        bad = torch.nonzero((pool.labels < 0) | (pool.labels >= n)).flatten()
        if len(bad):
            row = int(bad[0])
            raise DataError(
                f"{self.path}: label {int(pool.labels[row])} of image {row} is out of range "
                f"[0, {n}) ({len(bad)} such labels)"
            )
        if self.num_classes_given:  # more classes than the data shows; names for them
            names = pool.class_names + [str(i) for i in range(len(pool.class_names), n)]
            pool.class_names = names[:n]

    def _loaded(self) -> ImagePool:
        if self._pool is None:
            self.setup()
        assert self._pool is not None
        return self._pool

    def split_indices(self, stage: str) -> np.ndarray:
        """The source rows of a split ("train", "val" or "test"), sorted."""
        self._loaded()
        return self._splits[stage]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self._loaded().images.shape[1:]
        return c, h, w

    @property
    def num_classes(self) -> int:
        return len(self._loaded().class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._loaded().class_names)

    def _ensure_loaded(self) -> None:
        self._loaded()

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 (0..255) or float ([0, 1]) images -> what the batches hold."""
        return normalize(images, self.mean, self.std)

    def check_patch_size(self, patch_size: int) -> None:
        """Raise ValueError unless `patch_size` divides the image height and width."""
        check_divisible(self.image_shape[1:], patch_size, f"{self.path} images")

    # --- loaders ------------------------------------------------------------------------

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        split = _Split(self._loaded(), self._splits[stage], self.mean, self.std)
        trainer = self.trainer
        # A DistributedSampler that Lightning keeps under DDP and calls `set_epoch` on; with
        # explicit replicas and rank it needs no process group.
        sampler = EvenShards(
            split,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=shuffle,
            seed=self.seed,
        )
        return DataLoader(
            split,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=whole_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    # --- augmentation -------------------------------------------------------------------

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> Any:
        """Shift training batches (on the device, after the transfer) when `augment` is on."""
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            return self.shift(batch, trainer.current_epoch)
        return batch

    @property
    def max_shift(self) -> int:
        """Largest shift in pixels: 1 per 14 pixels of the smaller side, at least 1."""
        return max(1, round(min(self.image_shape[1:]) / 14))

    def shift(self, batch: dict[str, Tensor], epoch: int) -> dict[str, Tensor]:
        """Move each image by up to `max_shift` pixels each way, filling with background. The
        shifts are fixed by `seed`, `epoch` and the image's index, whatever the batching."""
        images, k = batch["image"], self.max_shift
        c = images.shape[1]
        if self._offsets is None or self._offsets[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            table = rng.integers(0, 2 * k + 1, size=(len(self._loaded().labels), 2))
            self._offsets = (epoch, torch.from_numpy(table).to(images.device))
        offsets = self._offsets[1].to(images.device)[batch["index"]]  # (B, 2)
        fill = self.normalize(torch.zeros(1, c, 1, 1, dtype=torch.uint8)).to(images.device)
        return {**batch, "image": shift_images(images, offsets, k, fill)}
