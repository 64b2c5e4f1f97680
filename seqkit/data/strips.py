"""Images as the source of a seq2seq model: strips of 2-4 handwritten digits side by side,
"translated" into their number in English words (an image of 3 4 2 -> "three hundred and
forty-two"), built deterministically by seed from a digit image source (MNIST, digits)."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from num2words import num2words
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from seqkit.data.batching import Repeat, pad
from seqkit.data.digit_pools import STAGES, DigitPoolData
from seqkit.data.images import ImagePool, pixel_stats, shift_images
from seqkit.data.inputs import ModelInputs
from seqkit.data.patches import TrainPixelStats
from seqkit.data.tokenizer import BOS, Tokenizers
from seqkit.errors import DataError
from seqkit.models.patches import ImageSource, check_divisible, image_sequence, normalize


@cache
def number_words(number: int) -> str:
    """342 -> "three hundred and forty-two" (num2words, English cardinal)."""
    return num2words(number, lang="en")


def make_strips(
    labels: np.ndarray, rows: np.ndarray, n: int, min_digits: int, max_digits: int, seed: int
) -> tuple[np.ndarray, list[int]]:
    """`n` strips of `min_digits`..`max_digits` digits (the first never 0), each digit an image
    of that label drawn from `rows` of the pool: image rows (n, max_digits), -1 after a strip's
    last digit, and the numbers. Fixed by `seed`."""
    rng = np.random.default_rng(seed)
    by_digit = [rows[labels[rows] == d] for d in range(10)]
    missing = [d for d, found in enumerate(by_digit) if not len(found)]
    if missing:
        raise DataError(f"no image of digit(s) {missing} among the {len(rows)} to draw from")
    lengths = rng.integers(min_digits, max_digits + 1, size=n)
    digits = rng.integers(0, 10, size=(n, max_digits))
    digits[:, 0] = rng.integers(1, 10, size=n)
    images = np.empty((n, max_digits), dtype=np.int64)
    for d in range(10):
        where = digits == d
        images[where] = rng.choice(by_digit[d], size=int(where.sum()))
    images[np.arange(max_digits) >= lengths[:, None]] = -1
    numbers = [int("".join(map(str, row[:k]))) for row, k in zip(digits, lengths, strict=True)]
    return images, numbers


class _Strips(Dataset):
    """One split's strips; `dataset[indices]` builds the whole batch at once."""

    def __init__(self, data: DigitStripData, stage: str) -> None:
        self.pool = data.pool
        self.mean, self.std = data.mean, data.std
        self.rows, texts = data.strips[stage]
        self.texts = [number_words(n) for n in texts]
        self.targets = data.tokenizers.encode_target(self.texts)
        digit_patches = (self.pool.images.shape[2] // data.patch_size) * (
            self.pool.images.shape[3] // data.patch_size
        )
        self.lengths = (self.rows >= 0).sum(1) * digit_patches  # patches per strip

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        rows = torch.from_numpy(self.rows[indices])  # (B, max_digits)
        count = (rows >= 0).sum(1)  # (B,)
        rows = rows[:, : int(count.max())]  # (B, K)
        b, k = rows.shape
        _, c, h, w = self.pool.images.shape
        digits = normalize(self.pool.images[rows.clamp(min=0).flatten()], self.mean, self.std)
        digits = digits.view(b, k, c, h, w) * (rows >= 0)[:, :, None, None, None]
        strips = digits.permute(0, 2, 3, 1, 4).reshape(b, c, h, k * w)  # digits side by side
        targets = [self.targets[i] for i in indices]
        return {  # the data module cuts "image" into patches after the transfer
            "image": strips,
            "width": count * w,
            "tgt_in": pad([[BOS, *ids[:-1]] for ids in targets]),
            "tgt_out": pad(targets),
            "index": torch.as_tensor(indices, dtype=torch.long),
            "tgt_text": [self.texts[i] for i in indices],
            "repeat": isinstance(indices, Repeat),
        }


class DigitStripData(TrainPixelStats, DigitPoolData):
    """Strips of `min_digits`..`max_digits` digit images side by side (the first digit never
    0), each with its number in English words as the target: a seq2seq source of image patches
    {"src": (B, N, C*p*p), "src_mask": (B, N)} in reading order (see `image_sequence`),
    targets as `TranslationData` gives them.

    The digit images are first split into train/val/test pools (stratified, by `seed`); a
    split's strips use only its own pool, so test strips show unseen handwriting. Pixels are
    standardized by the train pool's mean and std, which the model keeps for `predict`.

    Args:
        path: "digits" (scikit-learn's 8x8 digits) or a directory of MNIST IDX files.
        n_train: Training strips.
        n_val: Validation strips.
        n_test: Test strips.
        min_digits: Fewest digits in a strip.
        max_digits: Most digits in a strip.
        patch_size: Side of the square patches; must divide the digit images.
        val_images: Digit images for the validation pool: a count or a fraction.
        test_images: Digit images for the test pool, as `val_images`.
        augment: Shift every digit of a training strip by up to 1 pixel per 14 (at least 1)
            within its cell, seeded by `seed`, the epoch and the strip; validation and test
            strips are never changed.
        seed: Seed of the pools, the strips, the batch order and the augmentation.
        vocab_size: BPE vocabulary size of the target words (at least 260).
        tokenizer: Directory with a tokenizer file to reuse instead of training one.
        max_tokens: Source patches per training batch, padding included.
        eval_max_tokens: Source patches per evaluation batch (default: `max_tokens`).
        num_workers: DataLoader worker processes.
    """

    purpose = "digit strips"  # named in errors

    def __init__(
        self,
        path: str = "digits",
        n_train: int = 20_000,
        n_val: int = 1_000,
        n_test: int = 1_000,
        min_digits: int = 2,
        max_digits: int = 4,
        patch_size: int = 4,
        val_images: int | float = 0.1,
        test_images: int | float = 0.1,
        augment: bool = True,
        seed: int = 0,
        vocab_size: int = 300,
        tokenizer: str | None = None,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._take_options(path=path, sizes=(n_train, n_val, n_test),
                           digits=(min_digits, max_digits), most_digits=6,
                           val_images=val_images, test_images=test_images, seed=seed,
                           max_tokens=max_tokens, eval_max_tokens=eval_max_tokens,
                           num_workers=num_workers)  # fmt: skip
        self.patch_size, self.augment = patch_size, augment
        self._offsets: tuple[int, Tensor] | None = None  # (epoch, shifts of every digit)
        self.vocab_size, self.tokenizer_dir = vocab_size, tokenizer
        self.strips: dict[str, tuple[np.ndarray, list[int]]] = {}
        self._tokenizers: Tokenizers | None = None
        self._stats: tuple[list[float], list[float]] | None = None

    def _draw(self, pool: ImagePool, pools: dict[str, np.ndarray]) -> None:
        check_divisible(pool.images.shape[2:], self.patch_size, f"{self.path} images")
        labels = pool.labels.numpy()
        for i, stage in enumerate(STAGES):
            self.strips[stage] = make_strips(labels, pools[stage], self.sizes[stage],
                                             self.min_digits, self.max_digits,
                                             seed=self.seed * 3 + i)  # fmt: skip
        if self._stats is None:  # else restored from a checkpoint
            self._stats = pixel_stats(pool.images[torch.from_numpy(pools["train"])])

    def _dataset(self, stage: str) -> _Strips:
        return _Strips(self, stage)

    @property
    def tokenizers(self) -> Tokenizers:
        """The target tokenizer (as a joint pair: the source is images): read from
        `tokenizer`, else trained on the training strips' words."""
        if self._tokenizers is None and self.tokenizer_dir:
            self._tokenizers = Tokenizers.load(self.tokenizer_dir)
        if self._tokenizers is None:
            words = sorted({number_words(n) for n in self.strips_of("train")[1]})
            rank_zero_info(f"Training a BPE tokenizer (vocab_size={self.vocab_size}) on "
                           f"{len(words)} distinct numbers")  # fmt: skip
            self._tokenizers = Tokenizers.train(words, words, self.vocab_size, joint=True)
        return self._tokenizers

    def strips_of(self, stage: str) -> tuple[np.ndarray, list[int]]:
        """A split's image rows (n, max_digits), -1 padded, and its numbers."""
        self._ensure_loaded()
        return self.strips[stage]

    def use_tokenizer(self, directory: str) -> None:
        """Encode targets with the tokenizer in `directory` (a fine-tuned model's)."""
        self.tokenizer_dir, self._tokenizers = str(directory), None
        self.hparams["tokenizer"] = self.tokenizer_dir

    @property
    def image_source(self) -> ImageSource:
        """How a seq2seq model reads these images, in training and in `Translator.read`."""
        _, c, h, _ = self.pool.images.shape
        return ImageSource(self.patch_size, c, h, self.mean, self.std)

    def model_inputs(self) -> ModelInputs:
        """What a seq2seq model needs from this data (`Seq2Seq.setup` reads it)."""
        return ModelInputs(self.tokenizers, self.image_source, self.max_length)

    @property
    def max_length(self) -> int:
        """The longest source, in patches."""
        _, _, h, w = self.pool.images.shape
        return self.max_digits * (h // self.patch_size) * (w // self.patch_size)

    def strip_images(self, stage: str, indices: list[int]) -> list[Tensor]:
        """The uint8 strips (C, H, k*W) of a split, e.g. to save or to `predict` on."""
        return self.side_by_side(self.strips_of(stage)[0], indices)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_max_tokens)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> Any:
        """Shift the digits of training strips (`augment`), then cut every strip into patches,
        on the device the batch was moved to."""
        images, widths = batch.pop("image"), batch.pop("width")
        trainer = self.trainer
        if self.augment and trainer is not None and trainer.training:
            images = self.shift(images, batch["index"], trainer.current_epoch)
        batch["src"], batch["src_mask"] = image_sequence(images, widths, self.patch_size)
        return batch

    def shift(self, images: Tensor, index: Tensor, epoch: int) -> Tensor:
        """Move each digit of training strips (B, C, H, K*W) by up to 1 pixel per 14 each way
        within its cell, fixed by `seed`, `epoch` and the strip's `index` (B,)."""
        b, c, h, width = images.shape
        w = self.pool.images.shape[3]
        k = max(1, round(min(h, w) / 14))
        if self._offsets is None or self._offsets[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 1])
            table = rng.integers(0, 2 * k + 1, size=(self.sizes["train"], self.max_digits, 2))
            self._offsets = (epoch, torch.from_numpy(table))
        n = width // w
        offsets = self._offsets[1][index.cpu(), :n].to(images.device).flatten(0, 1)  # (B*K, 2)
        cells = images.view(b, c, h, n, w).permute(0, 3, 1, 2, 4).flatten(0, 1)  # (B*K, C, H, W)
        fill = normalize(torch.zeros(1, c, 1, 1, dtype=torch.uint8), self.mean, self.std)
        moved = shift_images(cells, offsets, k, fill.to(images.device))
        return moved.view(b, n, c, h, w).permute(0, 2, 3, 1, 4).reshape(b, c, h, width)
