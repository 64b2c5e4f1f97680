"""The base of data modules built from handwritten digits 0-9 drawn side by side (digit strips,
text to image): the digit images split into train/val/test pools, each split's examples drawn
from its own pool, and token-bucketed loaders of whole batches."""

from __future__ import annotations

from typing import Any, Protocol

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from seqkit.data.batching import ResumableBatches, token_loader, whole_batch
from seqkit.data.images import ImagePool, check_split_sizes, load_digit_pools

STAGES = ("train", "val", "test")


class BatchDataset(Protocol):
    """One split's examples: `dataset[indices]` builds the whole batch of those rows."""

    lengths: Any  # tokens of each example, for batching by `max_tokens`

    def __len__(self) -> int: ...
    def __getitem__(self, indices: list[int]) -> dict[str, Any]: ...


class DigitPoolData(ResumableBatches, L.LightningDataModule):
    """A data module whose examples are drawn from pools of digit images split by
    `load_digit_pools`: a split's examples use only its own pool, so validation and test show
    unseen handwriting.

    A subclass calls `_take_options` in `__init__` (after `super().__init__()` and
    `save_hyperparameters()`), names itself in `purpose` (for errors), and implements `_draw`
    (each split's examples, once the pools exist) and `_dataset` (a split's `BatchDataset`).
    """

    purpose = "digits"
    path: str
    val_images: int | float
    test_images: int | float
    seed: int
    max_tokens: int
    eval_max_tokens: int
    num_workers: int

    def __init__(self) -> None:
        super().__init__()
        self._pool: ImagePool | None = None
        self._datasets: dict[str, BatchDataset] = {}

    def _take_options(
        self,
        *,
        path: str,
        sizes: tuple[int, int, int],
        digits: tuple[int, int],
        most_digits: int,
        val_images: int | float,
        test_images: int | float,
        seed: int,
        max_tokens: int,
        eval_max_tokens: int | None,
        num_workers: int,
    ) -> None:
        """Check and keep the options every such module has: the image source `path`, the
        examples per split `sizes` (train, val, test), the fewest and most digits of an
        example `digits` (at most `most_digits`), the val/test pools' sizes, the seed and
        the loaders' settings.

        Raises:
            ValueError: naming the options that are out of range.
        """
        check_split_sizes(val_images=val_images, test_images=test_images)
        low, high = digits
        if not 1 <= low <= high <= most_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= {most_digits}, got "
                             f"{low}, {high}")  # fmt: skip
        if min(sizes) < 1:
            raise ValueError(f"n_train, n_val, n_test: every split needs an example, got "
                             f"{', '.join(map(str, sizes))}")  # fmt: skip
        self.path, self.seed = str(path), seed
        self.sizes = dict(zip(STAGES, sizes, strict=True))
        self.min_digits, self.max_digits = low, high
        self.val_images, self.test_images = val_images, test_images
        self.max_tokens, self.eval_max_tokens = max_tokens, eval_max_tokens or max_tokens
        self.num_workers = num_workers

    def _draw(self, pool: ImagePool, pools: dict[str, np.ndarray]) -> None:
        """Draw every split's examples from `pools` (rows of `pool.images` per split)."""
        raise NotImplementedError

    def _dataset(self, stage: str) -> BatchDataset:
        """The examples of split `stage`, as batches."""
        raise NotImplementedError

    @property
    def pool(self) -> ImagePool:
        """The digit images; split into pools and drawn into examples on first use."""
        self._ensure_loaded()
        assert self._pool is not None
        return self._pool

    def _ensure_loaded(self) -> None:
        if self._pool is not None:
            return
        pool, pools = load_digit_pools(self.path, self.val_images, self.test_images, self.seed,
                                       self.purpose)  # fmt: skip
        self._draw(pool, pools)
        self._pool = pool

    def side_by_side(self, rows: np.ndarray, indices: list[int]) -> list[Tensor]:
        """The uint8 images (C, H, k*W) of the digit image rows `rows[i]` (-1: no digit) for
        each i of `indices`, digits side by side."""
        images = self.pool.images
        return [torch.cat([images[r] for r in rows[i] if r >= 0], dim=-1) for i in indices]

    def setup(self, stage: str | None = None) -> None:
        for name in STAGES:
            if name not in self._datasets:
                self._ensure_loaded()
                self._datasets[name] = self._dataset(name)

    def _loader(self, stage: str, max_tokens: int) -> DataLoader:
        self.setup()
        data = self._datasets[stage]
        return token_loader(self, data, data.lengths, max_tokens, stage == "train", whole_batch)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.max_tokens)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_max_tokens)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_max_tokens)
