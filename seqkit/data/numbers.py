"""The embedded default corpus: English number words -> German number words, no files needed."""

from __future__ import annotations

import json
import os
import random
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Literal

import datasets
from lightning.pytorch.utilities import rank_zero_info
from num2words import num2words

from seqkit.data.tokenizer_source import cache_key
from seqkit.data.translation import TranslationData

STAGES = ("train", "val", "test")


def number_pairs(numbers: list[int]) -> tuple[list[str], list[str]]:
    """English and German cardinal words for each number, e.g. 21 -> twenty-one, einundzwanzig."""
    english = [num2words(n, lang="en") for n in numbers]
    return english, [num2words(n, lang="de") for n in numbers]


def check_sizes(sizes: dict[str, int], low: int, high: int) -> None:
    """Raise ValueError unless `[low, high]` holds enough numbers for the (positive) sizes."""
    if low < 0 or high < low:
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    if any(size < 1 for size in sizes.values()):
        raise ValueError(f"every split needs at least one pair, got {sizes}")
    total, available = sum(sizes.values()), high - low + 1
    if total > available:
        raise ValueError(
            f"[{low}, {high}] holds {available} numbers, but the splits {sizes} need {total}; "
            "widen the range or shrink the splits"
        )


def sample_numbers(sizes: dict[str, int], low: int, high: int, seed: int) -> dict[str, list[int]]:
    """Disjoint random subsets of `[low, high]` with the given sizes, fixed by `seed`."""
    check_sizes(sizes, low, high)
    # One sample without replacement, then cut: the splits cannot overlap.
    numbers = random.Random(seed).sample(range(low, high + 1), sum(sizes.values()))
    result, start = {}, 0
    for stage, size in sizes.items():
        result[stage] = numbers[start : start + size]
        start += size
    return result


class NumberWordsData(TranslationData):
    """English number words to German ones, e.g. "three hundred and forty-two thousand, one
    hundred and five" -> "dreihundertzweiundvierzigtausendeinhundertfünf", made by `num2words`.

    The splits are disjoint random samples of `[low, high]`, fixed by `seed`. num2words takes
    ~0.1-0.3 ms a pair, so the generated text is cached under `cache_dir` too.

    Args:
        n_train: Training pairs.
        n_val: Validation pairs.
        n_test: Test pairs.
        low: Smallest number.
        high: Largest number (num2words' German output is checked up to 999,999).
        seed: Seed of the split sampling and of the batch order.
        vocab_size: BPE vocabulary size (at least 260).
        joint_vocab: One tokenizer for both languages instead of one per side.
        tokenizer: Directory with tokenizer file(s) to reuse instead of training one.
        min_frequency: Minimum count of a pair for a BPE merge.
        max_tokens: Token budget of a training batch, padding included.
        eval_max_tokens: Token budget of an evaluation batch (default: `max_tokens`).
        max_length: Longest sequence in tokens, EOS included, on either side.
        overlong: "truncate" or "drop" training pairs longer than `max_length`.
        num_workers: DataLoader worker processes.
        cache_dir: Cache directory (default: $SEQKIT_CACHE or ~/.cache/seqkit).
    """

    def __init__(
        self,
        n_train: int = 50_000,
        n_val: int = 1_000,
        n_test: int = 1_000,
        low: int = 0,
        high: int = 999_999,
        seed: int = 1234,
        vocab_size: int = 1000,
        joint_vocab: bool = True,
        tokenizer: str | None = None,
        min_frequency: int = 2,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_length: int = 64,
        overlong: Literal["truncate", "drop"] = "truncate",
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(
            path=None,
            src_lang="en",
            tgt_lang="de",
            splits={stage: stage for stage in STAGES},
            vocab_size=vocab_size,
            joint_vocab=joint_vocab,
            tokenizer=tokenizer,
            min_frequency=min_frequency,
            max_tokens=max_tokens,
            eval_max_tokens=eval_max_tokens,
            max_length=max_length,
            overlong=overlong,
            num_workers=num_workers,
            seed=seed,
            cache_dir=cache_dir,
        )
        self.save_hyperparameters()
        self.sizes = dict(zip(STAGES, (n_train, n_val, n_test), strict=True))
        self.low, self.high = low, high
        check_sizes(self.sizes, low, high)  # fail at construction, not at the first epoch

    def load_raw(self) -> dict[str, datasets.Dataset]:
        """The three splits, generated once and then read from the cache."""
        key = cache_key(self.sizes, self.low, self.high, self.seed, version("num2words"))
        path = self.cache_root / "numbers" / f"{key}.json"
        if path.is_file():
            texts = json.loads(path.read_text("utf-8"))
        else:
            texts = self.generate()
            _write_atomically(path, json.dumps(texts, ensure_ascii=False))
        return {stage: datasets.Dataset.from_dict(texts[stage]) for stage in STAGES}

    def generate(self) -> dict[str, dict[str, list[str]]]:
        """Stage -> {"source": English words, "target": German words}."""
        rank_zero_info(f"Generating {sum(self.sizes.values())} number-word pairs with num2words")
        numbers = sample_numbers(self.sizes, self.low, self.high, self.seed)
        texts = {}
        for stage in STAGES:
            source, target = number_pairs(numbers[stage])
            texts[stage] = {"source": source, "target": target}
        return texts


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp, path)
