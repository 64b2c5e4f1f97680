"""Prompts in words paired with images of what they name: "seven" or "sieben" with an image of
a handwritten 7, "forty two" with a 4 and a 2 side by side (digit strips read the other way),
the image written as patch-codebook tokens (`seqkit.codebook`), digit cell after digit cell."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from num2words import num2words
from torch.utils.data import Dataset

from seqkit.codebook import PatchCodebook
from seqkit.data.batching import Repeat, pad
from seqkit.data.digit_pools import STAGES, DigitPoolData
from seqkit.data.images import ImagePool
from seqkit.data.tokenizer import Tokenizers
from seqkit.errors import DataError
from seqkit.image_generator import prompt_words
from seqkit.models.text2image import OFFSET
from seqkit.tokens import BOS, EOS, PAD

LANGUAGES = ("en", "de")


@cache
def number_prompt(number: int, lang: str) -> str:
    """The prompt naming `number` in `lang` (num2words): 42 -> "forty two", "zweiundvierzig"."""
    return " ".join(prompt_words(num2words(number, lang=lang)))


def known_words(max_digits: int, languages: tuple[str, ...]) -> list[str]:
    """Every word of the prompts of 0 .. 10**max_digits - 1 in `languages`, sorted."""
    numbers = range(10**max_digits)
    return sorted(
        {w for n in numbers for lang in languages for w in number_prompt(n, lang).split()}
    )


def sample_numbers(
    n: int, min_digits: int, max_digits: int, rng: np.random.Generator
) -> tuple[list[int], np.ndarray]:
    """`n` numbers, each of a digit count drawn uniformly from `min_digits`..`max_digits`, then
    uniformly among the numbers of that many digits (one digit: 0-9; more: no leading 0), and
    their digits (n, max_digits), -1 after the last. Drawn from `rng`."""
    counts = rng.integers(min_digits, max_digits + 1, size=n)
    low = np.where(counts == 1, 0, 10 ** (counts - 1))
    numbers = rng.integers(low, 10**counts)
    digits = np.full((n, max_digits), -1, dtype=np.int64)
    for i, (number, k) in enumerate(zip(numbers.tolist(), counts.tolist(), strict=True)):
        digits[i, :k] = [int(d) for d in str(number).zfill(k)]
    return numbers.tolist(), digits


def draw_images(
    labels: np.ndarray, rows: np.ndarray, digits: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """For each digit (n, K) (-1: none) an image row of that label among `rows` of the pool
    (-1 where no digit), drawn from `rng`.

    Raises:
        DataError: when `rows` lack a digit that is needed.
    """
    images = np.full(digits.shape, -1, dtype=np.int64)
    for d in range(10):
        where = digits == d
        found = rows[labels[rows] == d]
        if where.any() and not len(found):
            raise DataError(f"no image of digit {d} among the {len(rows)} to draw from")
        images[where] = rng.choice(found, size=int(where.sum())) if where.any() else []
    return images


@dataclass(frozen=True)
class TextToImageInputs:
    """What `TextToImageData` hands a text-to-image model (`TextToImage.setup` reads it)."""

    tokenizers: Tokenizers
    """The prompt tokenizer (joint: the target side is the codebook)."""
    codebook: PatchCodebook
    """How images become tokens: the target vocabulary."""
    words: tuple[str, ...]
    """Every word a prompt may use."""
    max_cells: int
    """The most digit cells an image has."""

    @property
    def max_length(self) -> int:
        """The longest target, in tokens, EOS included."""
        return self.max_cells * self.codebook.length + 1


class _Pairs(Dataset):
    """One split's (prompt, image) pairs; `dataset[indices]` builds the whole batch."""

    def __init__(self, data: TextToImageData, stage: str) -> None:
        numbers, rows, langs = data.pairs[stage]
        self.prompts = [number_prompt(n, lang) for n, lang in zip(numbers, langs, strict=True)]
        self.src = data.tokenizers.encode_source(self.prompts)
        codes = data.codes  # (N, L) codebook tokens of every pool image
        cells = torch.from_numpy(rows)  # (n, max_digits) image rows, -1 after the last
        self.targets = [[*(codes[r[r >= 0]].flatten() + OFFSET).tolist(), EOS] for r in cells]
        self.lengths = [len(t) for t in self.targets]
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        targets = [self.targets[i] for i in indices]
        src = pad([self.src[i] for i in indices])
        return {
            "src": src,
            "src_mask": src != PAD,
            "tgt_in": pad([[BOS, *t[:-1]] for t in targets]),
            "tgt_out": pad(targets),
            "index": torch.as_tensor(indices, dtype=torch.long),
            "src_text": [self.prompts[i] for i in indices],
            "number": [self.numbers[i] for i in indices],
            "repeat": isinstance(indices, Repeat),
        }


class TextToImageData(DigitPoolData):
    """Prompts naming numbers in words, each paired with an image of the number's digits side
    by side, written as codebook tokens: {"src": (B, S) prompt ids, "src_mask", "tgt_in",
    "tgt_out": (B, T) codebook tokens + `OFFSET`, cells left to right, each in raster order,
    then EOS}.

    The digit images are split into train/val/test pools (stratified, by `seed`); a split's
    pairs use only its own pool. The codebook is fitted on the train pool (k-means), the
    prompt tokenizer (byte-level BPE) on the prompts of every number the data can name.

    Args:
        path: "digits" (scikit-learn's 8x8 digits, no files) or a directory of MNIST IDX files.
        languages: Prompt languages, each pair's drawn at random: "en" ("seven", "forty two")
            and/or "de" ("sieben", "zweiundvierzig"); any num2words language works.
        n_train: Training pairs.
        n_val: Validation pairs.
        n_test: Test pairs.
        min_digits: Fewest digits a prompt's number has.
        max_digits: Most digits a prompt's number has (drawn side by side).
        patch_size: Side of the square codebook patches; must divide the digit images.
        codebook_size: Codebook tokens (k-means clusters).
        val_images: Digit images for the validation pool: a count or a fraction.
        test_images: Digit images for the test pool, as `val_images`.
        seed: Seed of the pools, the pairs, the codebook and the batch order.
        vocab_size: Most BPE tokens of the prompts (at least 260); 500 makes whole words of
            the number words ("zwei", "undvierzig"), which the model learns faster.
        max_tokens: Target tokens per batch, padding included.
        eval_max_tokens: Target tokens per evaluation batch (default: `max_tokens`).
        num_workers: DataLoader worker processes.
    """

    purpose = "text to image"  # named in errors

    def __init__(
        self,
        path: str = "digits",
        languages: tuple[str, ...] = LANGUAGES,
        n_train: int = 20_000,
        n_val: int = 500,
        n_test: int = 500,
        min_digits: int = 1,
        max_digits: int = 2,
        patch_size: int = 2,
        codebook_size: int = 128,
        val_images: int | float = 0.1,
        test_images: int | float = 0.1,
        seed: int = 0,
        vocab_size: int = 500,
        max_tokens: int = 2048,
        eval_max_tokens: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._take_options(path=path, sizes=(n_train, n_val, n_test),
                           digits=(min_digits, max_digits), most_digits=4,
                           val_images=val_images, test_images=test_images, seed=seed,
                           max_tokens=max_tokens, eval_max_tokens=eval_max_tokens,
                           num_workers=num_workers)  # fmt: skip
        if not languages:
            raise ValueError("languages: give at least one, e.g. [en, de]")
        for lang in languages:
            try:
                number_prompt(7, lang)
            except NotImplementedError:
                raise ValueError(f"languages: num2words has no language {lang!r}") from None
        self.languages = tuple(languages)
        self.patch_size, self.codebook_size = patch_size, codebook_size
        self.vocab_size = vocab_size
        self.pairs: dict[str, tuple[list[int], np.ndarray, list[str]]] = {}
        self._codebook: PatchCodebook | None = None
        self._codes: torch.Tensor | None = None
        self._pools: dict[str, np.ndarray] = {}
        self._tokenizers: Tokenizers | None = None

    def _draw(self, pool: ImagePool, pools: dict[str, np.ndarray]) -> None:
        labels = pool.labels.numpy()
        for i, stage in enumerate(STAGES):
            # One generator drawn in turn: generators seeded alike would tie the language
            # to the digit count (their first draws are the same numbers).
            rng = np.random.default_rng([self.seed, i])
            n, low, high = self.sizes[stage], self.min_digits, self.max_digits
            numbers, digits = sample_numbers(n, low, high, rng)
            rows = draw_images(labels, pools[stage], digits, rng)
            langs = [self.languages[j] for j in rng.integers(len(self.languages), size=n)]
            self.pairs[stage] = (numbers, rows, langs)
        self._pools = pools

    def _dataset(self, stage: str) -> _Pairs:
        return _Pairs(self, stage)

    def pool_rows(self, stage: str) -> np.ndarray:
        """The rows of `pool.images` in a split's pool of digit images ("train", "val",
        "test"), sorted."""
        self._ensure_loaded()
        return self._pools[stage]

    def pairs_of(self, stage: str) -> tuple[list[int], np.ndarray, list[str]]:
        """A split's numbers, their digits' image rows (n, max_digits; -1 after the last) and
        their prompts' languages."""
        self._ensure_loaded()
        return self.pairs[stage]

    @property
    def codebook(self) -> PatchCodebook:
        """The patch codebook, fitted on the train pool's images on first use."""
        if self._codebook is None:
            train = self.pool.images[torch.from_numpy(self.pool_rows("train"))]
            rank_zero_info(f"Fitting a codebook of {self.codebook_size} tokens to the "
                           f"{self.patch_size}x{self.patch_size} patches of {len(train)} "
                           "images")  # fmt: skip
            self._codebook = PatchCodebook.fit(train, self.patch_size, self.codebook_size,
                                               seed=self.seed)  # fmt: skip
        return self._codebook

    @property
    def codes(self) -> torch.Tensor:
        """The codebook tokens (N, L) of every image of `pool`."""
        if self._codes is None:
            self._codes = self.codebook.encode(self.pool.images)
        return self._codes

    @property
    def words(self) -> tuple[str, ...]:
        """Every word of every prompt the data can make."""
        return tuple(known_words(self.max_digits, self.languages))

    @property
    def tokenizers(self) -> Tokenizers:
        """The prompt tokenizer, trained on the prompts of every number the data can name."""
        if self._tokenizers is None:
            prompts = [number_prompt(n, lang) for n in range(10**self.max_digits)
                       for lang in self.languages]  # fmt: skip
            self._tokenizers = Tokenizers.train(prompts, [], self.vocab_size, joint=True)
        return self._tokenizers

    def model_inputs(self) -> TextToImageInputs:
        """What a text-to-image model needs from this data (`TextToImage.setup` reads it)."""
        return TextToImageInputs(self.tokenizers, self.codebook, self.words, self.max_digits)

    def images_of(self, stage: str, indices: list[int]) -> list[torch.Tensor]:
        """The uint8 images (C, H, k*W) of a split's pairs, digits side by side."""
        return self.side_by_side(self.pairs_of(stage)[1], indices)
