"""Parallel text as a LightningDataModule: raw pairs -> BPE -> cached token ids -> batches."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import datasets
import lightning as L
import numpy as np
import pyarrow.compute as pc
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from seqkit.data.batching import ResumableBatches, TokenBatchDataset, token_loader
from seqkit.data.mixing import check_mixing, mix_pairs
from seqkit.data.sources import DataError, load_pairs, read_columns
from seqkit.data.tokenizer import EOS, Tokenizers
from seqkit.data.tokenizer_source import CACHE_VERSION, TokenizerMixin, cache_key

log = logging.getLogger(__name__)
# What str.splitlines() ends a line at (seqkit.translator.LINE_BREAKS), as a regex class.
LINE_BREAK_PATTERN = "[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]"

DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
FEATURES = datasets.Features(
    {
        "source": datasets.Value("string"),
        "target": datasets.Value("string"),
        "index": datasets.Value("int64"),  # row in the raw split
        "src_ids": datasets.Sequence(datasets.Value("int32")),
        "tgt_ids": datasets.Sequence(datasets.Value("int32")),
        "length": datasets.Value("int32"),  # max(len(src_ids), len(tgt_ids)), for batching
        "overlong": datasets.Value("bool"),  # was truncated to max_length
    }
)


class TranslationData(TokenizerMixin, ResumableBatches, L.LightningDataModule):
    """Parallel text read by `load_pairs`, tokenized with BPE, batched by token count.

    The tokenizer is trained on the train split (or read from `tokenizer`); tokenizer and
    tokenized splits are cached under `cache_dir`, keyed by the data content and the settings,
    so a second run and every DDP rank reuse them. Subclasses supply other data by
    overriding `load_raw`, and call `self.save_hyperparameters()` in their `__init__`.

    Args:
        path: Data directory, table file or Hugging Face dataset name (see `load_pairs`).
        src_lang: Source language code; also the default source column.
        tgt_lang: Target language code; also the default target column.
        splits: Stage ("train", "val", "test", optionally "predict") -> split name.
            Default: train/val/test_2016_flickr (Multi30k). Predict uses "test" unless given.
        source_column: Source column of a table or dataset (default: `src_lang`).
        target_column: Target column of a table or dataset (default: `tgt_lang`).
        vocab_size: BPE vocabulary size per tokenizer (at least 260).
        joint_vocab: One tokenizer for both languages instead of one per side.
        tokenizer: Directory with tokenizer file(s) to reuse instead of training one, e.g.
            the model directory being fine-tuned (`seqkit fit` hands over `init_from`'s).
            Default: one trained on the train split.
        extend_vocab: With `tokenizer` (fine-tuning): learn this many more BPE merges on
            the train split's sides in a language the model was not trained on and append
            them, new tokens after the old ids; the model grows to match
            (`seqkit.data.vocab_extension`, `seqkit.models.resize`). 0 (default): none.
        min_frequency: Minimum count of a pair for a BPE merge.
        max_tokens: Token budget of a training batch, padding included.
        eval_max_tokens: Token budget of an evaluation batch (default: `max_tokens`).
        max_length: Longest sequence in tokens, EOS included, on either side.
        overlong: What to do with training pairs longer than `max_length`: "truncate" them
            (keeping EOS last) or "drop" them. Val/test pairs are always truncated, never
            dropped; the count is reported either way.
        held_out: When `path` is a single table file: how many pairs to hold out, picked by
            `seed`, for each of the val and test stages; the rest is the train stage.
            0 (default): every stage reads the whole file.
        mix_with: Other parallel data (read as `path` is, same languages and columns) whose
            train split is mixed into the train stage, against forgetting the original
            task when fine-tuning: e.g. the data the model was pre-trained on. Val and test
            stay the user's own. Needs `mix_ratio`.
        mix_ratio: The share of the train stage drawn from `mix_with`, 0 <= r < 1: for N own
            pairs, round(r * N / (1 - r)) pairs drawn by `seed`, without replacement while
            `mix_with` has enough (then whole copies plus a draw). 0 (default): no mixing.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the batch order.
        cache_dir: Cache directory (default: $SEQKIT_CACHE or ~/.cache/seqkit).
    """

    def __init__(
        self,
        path: str | None = None,
        src_lang: str = "en",
        tgt_lang: str = "de",
        splits: dict[str, str] | None = None,
        source_column: str | None = None,
        target_column: str | None = None,
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        tokenizer: str | None = None,
        extend_vocab: int = 0,
        min_frequency: int = 2,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_length: int = 256,
        overlong: Literal["truncate", "drop"] = "truncate",
        held_out: int = 0,
        mix_with: str | None = None,
        mix_ratio: float = 0.0,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        # Plain strings in the hyperparameters: a Path would stop weights_only checkpoint loads.
        path = None if path is None else str(path)
        cache_dir = None if cache_dir is None else str(cache_dir)
        tokenizer = None if tokenizer is None else str(tokenizer)
        mix_with = None if mix_with is None else str(mix_with)
        if type(self) is TranslationData:
            # A subclass saves its own arguments: Lightning would merge both signatures, and
            # load_from_checkpoint would then pass the subclass arguments it does not take.
            self.save_hyperparameters()
        _check_lengths(max_length, max_tokens, eval_max_tokens, overlong)
        self.path, self.src_lang, self.tgt_lang = path, src_lang, tgt_lang
        self.splits = dict(splits if splits is not None else DEFAULT_SPLITS)
        self.source_column, self.target_column = source_column, target_column
        self.vocab_size, self.joint_vocab = vocab_size, joint_vocab
        self.min_frequency = min_frequency
        self.tokenizer_dir = tokenizer
        if extend_vocab < 0:
            raise ValueError(f"extend_vocab={extend_vocab}: the number of BPE merges to add "
                             "must be >= 0")  # fmt: skip
        self.extend_vocab = extend_vocab
        self.max_tokens, self.eval_max_tokens = max_tokens, eval_max_tokens or max_tokens
        self.max_length, self.overlong = max_length, overlong
        if held_out < 0:
            raise ValueError(f"held_out must be >= 0, got {held_out}")
        self.held_out = held_out
        check_mixing(mix_with, mix_ratio)
        self.mix_with, self.mix_ratio = mix_with, mix_ratio
        self.num_workers, self.seed = num_workers, seed
        default_cache = os.environ.get("SEQKIT_CACHE") or Path.home() / ".cache" / "seqkit"
        self.cache_root = Path(cache_dir or default_cache).expanduser()
        self.datasets: dict[str, datasets.Dataset] = {}  # stage -> tokenized split
        self._raw: dict[str, datasets.Dataset] | None = None
        self._raw_fingerprints: dict[str, str] = {}
        self._tokenizers: Tokenizers | None = None

    # --- raw data ---------------------------------------------------------------------------

    def load_raw(self) -> dict[str, datasets.Dataset]:
        """Stage -> Dataset with string columns "source" and "target"; override for other data."""
        if self.path is None:
            raise ValueError(f"{type(self).__name__}: give path= (a directory, file or dataset)")
        one_file = Path(self.path).expanduser().is_file()
        if self.held_out and not one_file:
            raise ValueError(f"held_out={self.held_out} needs path= to be one table file")
        splits = {"train": "train"} if self.held_out else self.splits
        raw = load_pairs(
            self.path, self.src_lang, self.tgt_lang, splits, self.source_column, self.target_column
        )
        if not self.held_out:
            return raw
        data = raw["train"]
        if len(data) <= 2 * self.held_out:
            raise DataError(
                f"{self.path}: {len(data)} pairs cannot spare held_out={self.held_out} "
                "for each of val and test"
            )
        order = np.random.default_rng(self.seed).permutation(len(data))
        parts = {"val": order[: self.held_out], "test": order[self.held_out : 2 * self.held_out]}
        parts["train"] = order[2 * self.held_out :]
        parts["predict"] = parts["test"]
        return {stage: data.select(np.sort(parts[stage])) for stage in self.splits}

    def raw(self) -> dict[str, datasets.Dataset]:
        """`load_raw()`, read once, with `mix_with`'s pairs mixed into the train stage."""
        if self._raw is None:
            raw = self.load_raw()
            if self.mix_with is not None and "train" in raw:
                raw = {**raw, "train": self._mixed(raw["train"])}
            for stage, data in raw.items():
                if not {"source", "target"} <= set(data.column_names):
                    raise ValueError(
                        f"{type(self).__name__}.load_raw: split {stage!r} has columns "
                        f"{data.column_names}; expected 'source' and 'target'"
                    )
            self._raw = raw
        return self._raw

    def _mixed(self, own: datasets.Dataset) -> datasets.Dataset:
        """`own` pairs plus pairs of `mix_with`'s train split, `mix_ratio` of the result."""
        other = load_pairs(self.mix_with, self.src_lang, self.tgt_lang, {"train": "train"},
                           self.source_column, self.target_column)["train"]  # fmt: skip
        mixed = mix_pairs(own, other, self.mix_ratio, self.seed)
        n = len(mixed) - len(own)
        rank_zero_info(f"train: {len(own):,} pairs of {self.path} + {n:,} of {self.mix_with} "
                       f"({n / len(mixed):.1%}; mix_ratio={self.mix_ratio})")  # fmt: skip
        return mixed

    def raw_fingerprint(self, stage: str) -> str:
        """A hash of the split's text, for cache keys."""
        if stage not in self._raw_fingerprints:
            texts = read_columns(self.raw()[stage], ["source", "target"])
            digest = hashlib.sha256(str(len(texts["source"])).encode())
            for column in ("source", "target"):
                digest.update("\0".join(texts[column]).encode("utf-8") + b"\1")
            self._raw_fingerprints[stage] = digest.hexdigest()[:16]
        return self._raw_fingerprints[stage]

    # --- tokenized splits -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Train the tokenizer and tokenize every split into the cache (once per node)."""
        for stage in self.splits:
            self._tokenized(stage)

    def setup(self, stage: str | None = None) -> None:
        """Load the cached tokenizer and tokenized splits (computing any that are missing)."""
        for name in self.splits:
            if name not in self.datasets:
                self.datasets[name] = self._tokenized(name)
                self._report(name)

    def cache_file(self, stage: str) -> Path:
        """Where the tokenized split lives."""
        drop = self._drops(stage)
        key = cache_key(
            CACHE_VERSION, self.raw_fingerprint(stage), self.tokenizers.fingerprint(),
            self.max_length, drop,
        )  # fmt: skip
        return self.cache_root / "tokenized" / f"{stage}-{key}.arrow"

    def _drops(self, stage: str) -> bool:
        return stage == "train" and self.overlong == "drop"

    def _tokenized(self, stage: str) -> datasets.Dataset:
        path = self.cache_file(stage)
        if path.is_file():
            return datasets.Dataset.from_file(str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = self.raw()[stage]
        # datasets writes to a temporary file and renames it: concurrent ranks are safe.
        return raw.map(
            self._encoder(stage),
            batched=True,
            with_indices=True,
            remove_columns=raw.column_names,
            features=FEATURES,
            cache_file_name=str(path),
            new_fingerprint=path.stem.replace("-", "_"),
            desc=f"Tokenizing {stage}",
        )

    def _encoder(self, stage: str) -> Callable[..., dict[str, list[Any]]]:
        """What tokenizes a batch of raw pairs of `stage` (`datasets.map`, batched, with
        indices); a subclass that adds to the ids (language tags) returns its own."""
        return functools.partial(_encode_batch, tokenizers=self.tokenizers,
                                 max_length=self.max_length, drop=self._drops(stage))  # fmt: skip

    def _report(self, stage: str) -> None:
        data, total = self.datasets[stage], len(self.raw()[stage])
        what = f"{stage}: {{}} of {total} pairs longer than max_length={self.max_length} tokens"
        if self._drops(stage) and len(data) < total:
            rank_zero_warn(what.format(f"dropped {total - len(data)}"))
        truncated = pc.sum(data.data.column("overlong")).as_py() or 0
        if truncated:
            rank_zero_warn(what.format(f"truncated {truncated}"))
        self._report_line_breaks(stage, data)
        log.info("%s: %d pairs (cache %s)", stage, len(data), self.cache_file(stage))

    @staticmethod
    def _report_line_breaks(stage: str, data: datasets.Dataset) -> None:
        """Warn about sentences holding line breaks: a model learns to write them, and a
        line-based file (seqkit translate, predictions.txt) writes them as spaces."""
        rows = set()
        for column in ("source", "target"):
            found = pc.match_substring_regex(data.data.column(column), LINE_BREAK_PATTERN)
            rows |= set(np.flatnonzero(found.to_numpy(zero_copy_only=False)).tolist())
        if rows:
            first = sorted(data.select(sorted(rows)[:5])["index"])
            rank_zero_warn(
                f"{stage}: {len(rows)} pairs hold a line break inside a sentence (rows "
                f"{', '.join(str(i + 1) for i in first)}{', ...' if len(rows) > 5 else ''}); "
                "a model trained on them writes line breaks, which seqkit translate writes "
                "as spaces to keep one output line per input line"
            )

    # --- loaders ----------------------------------------------------------------------------

    def _loader(self, stage: str, max_tokens: int) -> DataLoader:
        if stage not in self.splits:
            raise ValueError(f"{type(self).__name__}: no {stage!r} in splits={self.splits}")
        if stage not in self.datasets:
            self.setup()
        data = self.datasets[stage]
        lengths = data.with_format("numpy", columns=["length"])[:]["length"]
        return token_loader(self, TokenBatchDataset(data), lengths, max_tokens, stage == "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.max_tokens)

    def val_dataloader(self) -> DataLoader | list[Any]:
        if "val" not in self.splits:
            return []  # Lightning skips validation
        return self._loader("val", self.eval_max_tokens)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_max_tokens)

    def predict_dataloader(self) -> DataLoader:
        stage = "predict" if "predict" in self.splits else "test"
        return self._loader(stage, self.eval_max_tokens)


def _check_lengths(
    max_length: int, max_tokens: int, eval_max_tokens: int | None, overlong: str
) -> None:
    if max_length < 2:
        raise ValueError(f"max_length={max_length}: must leave room for a token and EOS")
    # A batch must hold at least one example of the maximum length.
    for name, budget in (("max_tokens", max_tokens), ("eval_max_tokens", eval_max_tokens)):
        if budget is not None and budget < max_length:
            raise ValueError(f"{name}={budget} must be >= max_length={max_length}")
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong={overlong!r}: expected 'truncate' or 'drop'")


def _encode_batch(
    batch: dict[str, list[str]],
    indices: list[int],
    *,
    tokenizers: Tokenizers,
    max_length: int,
    drop: bool,
) -> dict[str, list[Any]]:
    """Tokenize a batch of pairs; truncate over-long ones (EOS kept last) or leave them out."""
    src_ids = tokenizers.encode_source(batch["source"])
    tgt_ids = tokenizers.encode_target(batch["target"])
    out: dict[str, list[Any]] = {name: [] for name in FEATURES}
    rows = zip(indices, batch["source"], batch["target"], src_ids, tgt_ids, strict=True)
    for index, source, target, src, tgt in rows:
        overlong = max(len(src), len(tgt)) > max_length
        if overlong and drop:
            continue
        src, tgt = _truncate(src, max_length), _truncate(tgt, max_length)
        values = (source, target, index, src, tgt, max(len(src), len(tgt)), overlong)
        for name, value in zip(FEATURES, values, strict=True):
            out[name].append(value)
    return out


def _truncate(ids: list[int], max_length: int) -> list[int]:
    return ids if len(ids) <= max_length else [*ids[: max_length - 1], EOS]
