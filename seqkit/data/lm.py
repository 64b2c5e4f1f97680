"""One corpus as a token stream cut into windows, for language models: English prose that
ships with CPython by default, or one side of a parallel corpus (Multi30k's English)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from seqkit.data.inputs import ModelInputs
from seqkit.data.tokenizer import MIN_VOCAB_SIZE, Tokenizers
from seqkit.errors import ConfigError, DataError
from seqkit.textio import iter_lines
from seqkit.tokens import EOS, PAD

DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
"""Stage -> file stem in a data directory (Multi30k's names)."""


class Windows(Dataset):
    """A token stream (N,) read as windows of `length` inputs and their next tokens.

    Item i: {"input": stream[i*L : i*L+L], "target": stream[i*L+1 : i*L+L+1], "chars": the
    characters of text the targets stand for}; the last window is padded with PAD, which the
    loss ignores. Every token but the first (an EOS that starts the stream) is a target once.
    """

    def __init__(self, stream: np.ndarray, chars: np.ndarray, length: int) -> None:
        self.stream, self.chars, self.length = stream, chars, length

    def __len__(self) -> int:
        return -(-(len(self.stream) - 1) // self.length)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, n = i * self.length, self.length
        ids = torch.full((n + 1,), PAD, dtype=torch.long)
        piece = torch.as_tensor(self.stream[a : a + n + 1], dtype=torch.long)
        ids[: len(piece)] = piece
        chars = float(self.chars[a + 1 : a + n + 1].sum())
        return {"input": ids[:-1], "target": ids[1:], "chars": chars}


class LanguageModelData(L.LightningDataModule):
    """A corpus for language modelling: documents (or sentences) tokenized with byte-level BPE,
    joined into one stream with EOS between them, cut into windows of `seq_len` tokens.

    Sources:
        - `path` None: the English prose of CPython's `pydoc_data.topics` (the help texts of
          the language; about 465,000 characters, no download), split by document with
          `seed`: `held_out` of the documents each for val and test.
        - a directory: the files `{split}.{lang}` (or `.gz`) that `splits` names, one
          sentence per line (Multi30k: `--data.path ../shared/data/multi30k --data.lang en`).
        - a text file (or `.gz`): its lines, split as the default is.

    Args:
        path: see Sources.
        lang: the language suffix of a directory's files.
        splits: stage ("train", "val", "test") -> file stem, for a directory.
        vocab_size: BPE vocabulary size (at least 260).
        tokenizer: a directory with a tokenizer file to reuse (e.g. a model being
            fine-tuned) instead of training one on the train split.
        seq_len: tokens per training window (the model reads them in one pass, or in
            `tbptt_steps` chunks).
        batch_size: windows per batch.
        held_out: for the default corpus or a file: the share of documents (lines) held out
            for val and for test each.
        num_workers: DataLoader worker processes.
        seed: seed of the held-out split (the batch order follows `seed_everything`).
    """

    def __init__(
        self,
        path: str | None = None,
        lang: str = "en",
        splits: dict[str, str] | None = None,
        vocab_size: int = 2000,
        tokenizer: str | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        held_out: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        path = None if path is None else str(path)
        tokenizer = None if tokenizer is None else str(tokenizer)
        self.save_hyperparameters()
        if vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(f"data.vocab_size={vocab_size}: byte-level BPE needs at least "
                              f"{MIN_VOCAB_SIZE}")  # fmt: skip
        for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
            if value < 1:
                raise ConfigError(f"data.{name}={value}: must be at least 1")
        if not 0 < held_out < 0.5:
            raise ConfigError(f"data.held_out={held_out}: must be between 0 and 0.5")
        self.path, self.lang = path, lang
        self.splits = dict(splits if splits is not None else DEFAULT_SPLITS)
        self.vocab_size, self.tokenizer_dir = vocab_size, tokenizer
        self.seq_len, self.batch_size = seq_len, batch_size
        self.held_out, self.num_workers, self.seed = held_out, num_workers, seed
        self.tokenizers: Tokenizers | None = None
        self.windows: dict[str, Windows] = {}

    def use_tokenizer(self, directory: str) -> None:
        """Encode with the tokenizer of a model directory (`seqkit fit` hands over init_from's)."""
        self.tokenizer_dir = directory

    def documents(self) -> dict[str, list[str]]:
        """Stage -> its documents (or sentences), as text."""
        if self.path is None:
            from pydoc_data.topics import topics

            return self._hold_out([topics[key] for key in sorted(topics)], "pydoc_data.topics")
        path = Path(self.path)
        if path.is_file():
            return self._hold_out(list(iter_lines(path)), str(path))
        if not path.is_dir():
            raise DataError(f"{path}: no such file or directory (data.path)")
        stages = {}
        for stage, stem in self.splits.items():
            files = [path / f"{stem}.{self.lang}{gz}" for gz in ("", ".gz")]
            found = next((f for f in files if f.is_file()), None)
            if found is None:
                raise DataError(f"{files[0]}: not found (data.path, data.splits, data.lang)")
            stages[stage] = list(iter_lines(found))
        return stages

    def _hold_out(self, documents: list[str], name: str) -> dict[str, list[str]]:
        n = max(1, round(len(documents) * self.held_out))
        if len(documents) < 2 * n + 1:
            raise DataError(f"{name}: {len(documents)} documents are too few to hold out "
                            f"{n} for val and {n} for test")  # fmt: skip
        order = list(range(len(documents)))
        random.Random(self.seed).shuffle(order)
        picked = {"val": order[:n], "test": order[n : 2 * n], "train": order[2 * n :]}
        return {stage: [documents[i] for i in sorted(rows)] for stage, rows in picked.items()}

    def setup(self, stage: str | None = None) -> None:
        if self.windows:
            return
        documents = self.documents()
        if not documents.get("train"):
            raise DataError("data: the train split holds no text")
        if self.tokenizer_dir is not None:
            self.tokenizers = Tokenizers.load(self.tokenizer_dir)
        else:  # deterministic: every DDP rank trains the same one
            self.tokenizers = Tokenizers.train(documents["train"], [], self.vocab_size)
        for name, docs in documents.items():
            stream, chars = self.encode(docs)
            self.windows[name] = Windows(stream, chars, self.seq_len)
            rank_zero_info(f"{name}: {len(docs):,} documents, {int(chars.sum()):,} characters, "
                           f"{len(stream) - 1:,} tokens")  # fmt: skip

    def encode(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The token stream EOS doc1 EOS doc2 EOS ... (N,) and, per token, how many characters
        of text it completes (an EOS stands for the line break between documents), so that
        the characters of any span of targets are a sum."""
        tokenizer = self.tokenizers.target
        ids, chars = [[EOS]], [[0]]
        for encoding, text in zip(tokenizer.encode_batch(documents), documents, strict=True):
            ends = np.array([end for _, end in encoding.offsets] or [0], dtype=np.int64)
            # A character split over several byte-level tokens counts once, at its first.
            done = np.maximum.accumulate(ends)
            ids += [encoding.ids, [EOS]]
            chars += [np.diff(done, prepend=0)[: len(encoding.ids)], [1 + len(text) - done[-1]]]
        return np.concatenate(ids).astype(np.int32), np.concatenate(chars).astype(np.int64)

    def model_inputs(self) -> ModelInputs:
        """The tokenizer (vocabulary size) and the longest sequence a model must read."""
        self.setup()
        assert self.tokenizers is not None
        return ModelInputs(self.tokenizers, None, self.seq_len)

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        self.setup()
        if stage not in self.windows:
            raise ValueError(f"{type(self).__name__}: no {stage!r} split")
        return DataLoader(self.windows[stage], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
