"""Target-language tags: one model, several target languages (Johnson et al., 2017, "Google's
Multilingual Neural Machine Translation System"; fairseq/M2M-100's `__de__`, Marian's `>>de<<`).

A tag `<2de>` is one special token appended to the source vocabulary after BPE training (ids
0-3 stay `SPECIAL_TOKENS`); the data and `Translator.translate(..., tgt_lang=)` put its id in
front of the source ids. Text never becomes a tag: `Tokenizers` encodes special-token strings
in text as text, so a user's literal "<2de>" is a few byte pieces, not the tag. A model
directory knows its languages from its tokenizer file: the tags are in it.

Imports only `tokenizers` (no Lightning, no `datasets`), so `Translator` can use it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer

from seqkit.data.tokenizer import Tokenizers

TAG_PATTERN = re.compile(r"<2([A-Za-z][A-Za-z0-9_-]{0,31})>")
"""A tag token: `<2` + a language code (a letter, then letters, digits, `_` or `-`) + `>`."""


def language_tag(lang: str) -> str:
    """The tag token of target language `lang`: `<2de>` for "de".

    Raises:
        ValueError: for a code that is not a letter followed by letters, digits, `_` or `-`.
    """
    tag = f"<2{lang}>"
    if not isinstance(lang, str) or not TAG_PATTERN.fullmatch(tag):
        raise ValueError(
            f"target language {lang!r}: give a language code such as 'de' or 'pt-BR' "
            "(a letter, then letters, digits, '_' or '-')"
        )
    return tag


def target_languages(tokenizers: Tokenizers) -> dict[str, int]:
    """Language -> tag id, from the source tokenizer's special `<2xx>` tokens, in id order;
    empty for a single-direction model's tokenizer."""
    found = {}
    for token_id, token in sorted(tokenizers.source.get_added_tokens_decoder().items()):
        match = TAG_PATTERN.fullmatch(token.content)
        if token.special and match:
            found[match.group(1)] = token_id
    return found


def source_tag_id(tokenizers: Tokenizers, tgt_lang: str | None) -> int | None:
    """The id of `tgt_lang`'s tag, to put in front of every source; None for a
    single-direction model asked for no language.

    Raises:
        ValueError: listing the languages, for a multilingual model without `tgt_lang`
            or with another; for `tgt_lang` on a single-direction model.
    """
    tags = target_languages(tokenizers)
    if not tags and tgt_lang is None:
        return None
    if not tags:
        raise ValueError(
            f"tgt_lang={tgt_lang!r}: this model translates into one language only "
            "(it has no target-language tags); leave tgt_lang out"
        )
    if tgt_lang not in tags:
        asked = "no tgt_lang given" if tgt_lang is None else f"tgt_lang={tgt_lang!r}"
        raise ValueError(f"{asked}: this multilingual model translates into "
                         f"{', '.join(tags)}; choose one as tgt_lang (--tgt-lang)")  # fmt: skip
    return tags[tgt_lang]


def add_language_tags(tokenizers: Tokenizers, langs: Sequence[str]) -> Tokenizers:
    """A copy of `tokenizers` whose source vocabulary ends with a tag per language of `langs`
    (both sides grow when the vocabulary is joint). Tags already there keep their ids, so
    adding is idempotent; the given tokenizers are left unchanged.

    Raises:
        ValueError: for a language code `language_tag` refuses, or one given twice.
    """
    tags = [language_tag(lang) for lang in langs]
    if len(set(tags)) < len(tags):
        raise ValueError(f"target languages {list(langs)}: each language once")
    missing = [tag for tag, lang in zip(tags, langs, strict=True)
               if lang not in target_languages(tokenizers)]  # fmt: skip
    if not missing:
        return tokenizers
    for tag in missing:  # the byte-level pre-tokenizer splits "<2de>", so BPE cannot learn it
        if tokenizers.source.token_to_id(tag) is not None:
            raise ValueError(f"the source vocabulary holds {tag!r} as an ordinary token; "
                             "a tag must be a token of its own")  # fmt: skip
    source = Tokenizer.from_str(tokenizers.source.to_str())  # a copy: the original is shared
    # normalized=False: matched on the raw text, as the byte-level pre-tokenizer would mangle it.
    source.add_special_tokens([AddedToken(tag, special=True, normalized=False) for tag in missing])
    target = source if tokenizers.joint else tokenizers.target
    return Tokenizers(source, target)


def tag_sources(ids: list[list[int]], tag_ids: Sequence[int]) -> list[list[int]]:
    """Each id sequence of `ids` with its own tag id of `tag_ids` in front."""
    return [[tag, *seq] for tag, seq in zip(tag_ids, ids, strict=True)]
