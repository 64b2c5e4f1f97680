"""One source language into several target languages, with target-language tags (Johnson et
al., 2017): the union of the pairs src→tgt for each target language, every source led by the
tag `<2tgt>` of its target language (`seqkit.data.tags`)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import datasets

from seqkit.data.sources import load_pairs, read_columns
from seqkit.data.tags import add_language_tags, language_tag, tag_sources, target_languages
from seqkit.data.tokenizer import Tokenizers
from seqkit.data.tokenizer_source import cache_key
from seqkit.data.translation import TranslationData, _encode_batch


class MultilingualTranslationData(TranslationData):
    """Parallel text from `src_lang` into each of `tgt_langs`, read by `load_pairs` one
    direction at a time, tagged, and tokenized and batched as `TranslationData` does.

    Every stage holds every direction, one after the other in `tgt_langs` order, so
    validation and test scores cover them all; `direction_rows` says which rows (and lines
    of `seqkit predict`'s predictions.txt) belong to which language, to score each alone.
    The BPE is trained on the text without tags; the tags are then appended to the source
    vocabulary as special tokens (`add_language_tags`), so they are single tokens and the
    saved model directory knows its languages. Text is never a tag: a literal "<2de>" in a
    sentence is encoded as text.

    Args:
        path: Data directory (SPLIT.LANG files, e.g. Multi30k's train.en/.de/.fr), table
            file with a column per language, or Hugging Face dataset (see `load_pairs`).
        src_lang: Source language code; also the source column.
        tgt_langs: Target language codes, e.g. [de, fr]; each also its target column.
        splits: Stage -> split name (default: train/val/test_2016_flickr, as Multi30k).
        vocab_size: BPE vocabulary size per tokenizer, before the tags (at least 260).
        joint_vocab: One tokenizer for both sides instead of one per side.
        tokenizer: Directory with tokenizer file(s) to reuse, e.g. a multilingual model
            directory being fine-tuned or evaluated; missing tags are appended.
        min_frequency: Minimum count of a pair for a BPE merge.
        max_tokens: Token budget of a training batch, padding included.
        eval_max_tokens: Token budget of an evaluation batch (default: `max_tokens`).
        max_length: Longest sequence in tokens, tag and EOS included, on either side.
        overlong: "truncate" or "drop" training pairs longer than `max_length`.
        num_workers: DataLoader worker processes (persistent when > 0).
        seed: Seed of the batch order.
        cache_dir: Cache directory (default: $SEQKIT_CACHE or ~/.cache/seqkit).

    Raises:
        ValueError: for no target language, one given twice, or a code that cannot be a tag.
    """

    def __init__(
        self,
        path: str | None = None,
        src_lang: str = "en",
        tgt_langs: list[str] | None = None,
        splits: dict[str, str] | None = None,
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        tokenizer: str | None = None,
        min_frequency: int = 2,
        max_tokens: int = 4096,
        eval_max_tokens: int | None = None,
        max_length: int = 256,
        overlong: Literal["truncate", "drop"] = "truncate",
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        langs = _check_languages(tgt_langs)
        super().__init__(
            path=path,
            src_lang=src_lang,
            tgt_lang=langs[0],
            splits=splits,
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
        self.tgt_langs = langs

    def load_raw(self) -> dict[str, datasets.Dataset]:
        """Stage -> the pairs of every direction, one after the other, with a "tgt_lang"
        column naming each pair's target language."""
        if self.path is None:
            raise ValueError(f"{type(self).__name__}: give path= (a directory, file or dataset)")
        parts: dict[str, list[datasets.Dataset]] = {stage: [] for stage in self.splits}
        for lang in self.tgt_langs:
            for stage, data in load_pairs(self.path, self.src_lang, lang, self.splits).items():
                parts[stage].append(data.add_column("tgt_lang", [lang] * len(data)))
        return {stage: datasets.concatenate_datasets(part) for stage, part in parts.items()}

    def raw_fingerprint(self, stage: str) -> str:
        """A hash of the split's text and of each pair's target language."""
        key = f"{stage}+tgt_lang"
        if key not in self._raw_fingerprints:
            langs = read_columns(self.raw()[stage], ["tgt_lang"])["tgt_lang"]
            self._raw_fingerprints[key] = cache_key(super().raw_fingerprint(stage), langs)
        return self._raw_fingerprints[key]

    def direction_rows(self, stage: str) -> dict[str, range]:
        """Target language -> the rows of `stage` (0-based, as the batches' "index" and the
        lines of predictions.txt) that translate into it."""
        langs = read_columns(self.raw()[stage], ["tgt_lang"])["tgt_lang"]
        rows, start = {}, 0
        for lang in self.tgt_langs:
            rows[lang] = range(start, start + langs.count(lang))
            start = rows[lang].stop
        return rows

    @property
    def tokenizers(self) -> Tokenizers:
        """`TranslationData.tokenizers` with a tag per target language appended."""
        tokenizers = super().tokenizers
        if not set(self.tgt_langs) <= set(target_languages(tokenizers)):
            self._tokenizers = tokenizers = add_language_tags(tokenizers, self.tgt_langs)
        return tokenizers

    def _encoder(self, stage: str) -> Callable[..., dict[str, list[Any]]]:
        """As `TranslationData._encoder`, each source led by its tag."""
        return functools.partial(_encode_tagged, tokenizers=self.tokenizers,
                                 tags=target_languages(self.tokenizers),
                                 max_length=self.max_length, drop=self._drops(stage))  # fmt: skip


def _check_languages(tgt_langs: Sequence[str] | None) -> list[str]:
    if not tgt_langs or isinstance(tgt_langs, str):
        raise ValueError(f"tgt_langs={tgt_langs!r}: give a list of target languages, e.g. [de, fr]")
    langs = [str(lang) for lang in tgt_langs]
    for lang in langs:
        language_tag(lang)  # raises for a code that cannot be a tag
    if len(set(langs)) < len(langs):
        raise ValueError(f"tgt_langs={langs}: each language once")
    return langs


class _Tagged:
    """`Tokenizers` whose `encode_source` puts a tag id, one per text, in front."""

    def __init__(self, tokenizers: Tokenizers, tag_ids: list[int]) -> None:
        self.tokenizers, self.tag_ids = tokenizers, tag_ids

    def encode_source(self, texts: list[str]) -> list[list[int]]:
        return tag_sources(self.tokenizers.encode_source(texts), self.tag_ids)

    def encode_target(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizers.encode_target(texts)


def _encode_tagged(
    batch: dict[str, list[str]],
    indices: list[int],
    *,
    tokenizers: Tokenizers,
    tags: dict[str, int],
    max_length: int,
    drop: bool,
) -> dict[str, list[Any]]:
    """`_encode_batch` with each source's tag (by its "tgt_lang") in front, so truncation
    keeps it first and EOS last."""
    tagged: Any = _Tagged(tokenizers, [tags[lang] for lang in batch["tgt_lang"]])  # duck-typed
    return _encode_batch(batch, indices, tokenizers=tagged, max_length=max_length, drop=drop)
