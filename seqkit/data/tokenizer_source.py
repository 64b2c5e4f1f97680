"""The tokenizers a translation data module encodes with: the one given (a fine-tuned model's),
extended by `extend_vocab` merges, or one trained on the train split; trained and extended
tokenizers are cached by content under the data module's cache directory, so a second run and
every DDP rank reuse them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from seqkit.data.inputs import ModelInputs
from seqkit.data.sources import read_columns
from seqkit.data.tokenizer import Tokenizers
from seqkit.data.vocab_extension import extend_tokenizers, old_sides
from seqkit.errors import ConfigError

# Bump when the tokenized layout or the tokenizer recipe changes. 2: special-token strings
# in text are encoded as text (`Tokenizers` sets encode_special_tokens).
CACHE_VERSION = 2


class TokenizerMixin:
    """The `tokenizers` property of `TranslationData` and what goes with it. The data module
    provides `tokenizer_dir`, `extend_vocab`, `vocab_size`, `joint_vocab`, `min_frequency`,
    `src_lang`, `tgt_lang`, `splits`, `cache_root`, `hparams`, `raw()` and
    `raw_fingerprint(stage)`, and sets `_tokenizers = None` in its `__init__`."""

    # --- tokenizer --------------------------------------------------------------------------

    @property
    def tokenizers(self) -> Tokenizers:
        """The tokenizer pair: read from `tokenizer` (extended by `extend_vocab` merges), else
        cached or trained on the train split now."""
        if self._tokenizers is None:
            given = self.tokenizer_dir
            if self.extend_vocab and not given:
                raise ConfigError(
                    f"data.extend_vocab={self.extend_vocab} extends a given tokenizer when "
                    "fine-tuning (--model.init_args.init_from MODEL_DIR, or data.tokenizer); "
                    "for a tokenizer of your own, raise data.vocab_size instead"
                )
            self._tokenizers = Tokenizers.load(given) if given else self._cached_tokenizers()
            if self.extend_vocab:
                self._tokenizers = self._extended_tokenizers(self._tokenizers)
        return self._tokenizers

    @property
    def base_tokenizers(self) -> Tokenizers:
        """The given tokenizer before `extend_vocab` (`tokenizers` without extension)."""
        return Tokenizers.load(self.tokenizer_dir) if self.extend_vocab else self.tokenizers

    def tokens_per_word(self, tokenizers: Tokenizers | None = None, stage: str = "train"):
        """{"source": rate, "target": rate}: tokens per whitespace-separated word of the
        stage's text under `tokenizers` (default: the data's own); `seqkit.data.fertility`."""
        from seqkit.data.fertility import SAMPLE, side_rates

        data = self.raw()[stage]  # the first SAMPLE pairs: enough for a rate, fast on WMT
        texts = read_columns(data.select(range(min(len(data), SAMPLE))), ["source", "target"])
        return side_rates(tokenizers or self.tokenizers, texts["source"], texts["target"])

    def _extended_tokenizers(self, base: Tokenizers) -> Tokenizers:
        """`base` with `extend_vocab` merges learned on the train split, cached by content."""
        old = old_sides(base, self.tokenizer_dir, self.src_lang, self.tgt_lang)
        key = cache_key(CACHE_VERSION, "extend", base.fingerprint(), self.raw_fingerprint("train"),
                        self.extend_vocab, self.min_frequency, sorted(old))  # fmt: skip
        directory = self.cache_root / "tokenizers" / key
        if directory.is_dir():
            return Tokenizers.load(directory)
        train = read_columns(self.raw()["train"], ["source", "target"])
        extended = extend_tokenizers(base, train["source"], train["target"], self.extend_vocab,
                                     min_frequency=self.min_frequency, old_sides=old)  # fmt: skip
        rank_zero_info(
            f"extend_vocab={self.extend_vocab}: vocabulary {base.src_vocab_size}/"
            f"{base.tgt_vocab_size} -> {extended.src_vocab_size}/{extended.tgt_vocab_size} "
            f"(source/target); kept as before: {', '.join(sorted(old)) or 'no side'}"
        )
        save_atomically(extended, directory)
        return extended

    def use_tokenizer(self, directory: str) -> None:
        """Encode with the tokenizer in `directory` (a fine-tuned model's) from now on."""
        self.tokenizer_dir, self._tokenizers = str(directory), None
        self.hparams["tokenizer"] = self.tokenizer_dir

    def model_inputs(self) -> ModelInputs:
        """What a seq2seq model needs from this data: the tokenizers and the longest
        sequence (`Seq2Seq.setup` reads it)."""
        return ModelInputs(self.tokenizers, max_length=self.max_length)

    @property
    def src_vocab_size(self) -> int:
        return self.tokenizers.src_vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        return self.tokenizers.tgt_vocab_size

    def _cached_tokenizers(self) -> Tokenizers:
        if "train" not in self.splits:
            raise ValueError(
                f"{type(self).__name__}: no 'train' split to train a tokenizer on; "
                "give tokenizer= (a directory holding tokenizer.json)"
            )
        key = cache_key(
            CACHE_VERSION, self.raw_fingerprint("train"), self.vocab_size,
            self.joint_vocab, self.min_frequency,
        )  # fmt: skip
        directory = self.cache_root / "tokenizers" / key
        if directory.is_dir():
            return Tokenizers.load(directory)
        train = read_columns(self.raw()["train"], ["source", "target"])
        size = len(train["source"])
        rank_zero_info(f"Training a BPE tokenizer (vocab_size={self.vocab_size}) on {size} pairs")
        tokenizers = Tokenizers.train(
            train["source"], train["target"], self.vocab_size, self.joint_vocab, self.min_frequency
        )
        save_atomically(tokenizers, directory)
        return tokenizers


def cache_key(*parts: Any) -> str:
    """A short hash of JSON-serializable parts."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def save_atomically(tokenizers: Tokenizers, directory: Path) -> None:
    """Save via a temporary directory and a rename, so a reader never sees half a tokenizer."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
    tokenizers.save(tmp)
    try:
        tmp.rename(directory)
    except OSError:  # another rank got there first with the same (deterministic) result
        shutil.rmtree(tmp, ignore_errors=True)
