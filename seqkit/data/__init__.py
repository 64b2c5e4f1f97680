"""Data pipeline: parallel text sources, BPE tokenizers, token-budget batching, DataModules.

Names are imported when first used (PEP 562), so that `seqkit.data.tokenizer` and
`seqkit.data.images` load without Hugging Face `datasets` or Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "BOS": "seqkit.tokens",
    "EOS": "seqkit.tokens",
    "PAD": "seqkit.tokens",
    "SPECIAL_TOKENS": "seqkit.tokens",
    "UNK": "seqkit.tokens",
    "DataError": "seqkit.errors",
    "MultilingualTranslationData": "seqkit.data.multilingual",
    "NumberWordsData": "seqkit.data.numbers",
    "TokenBatchSampler": "seqkit.data.batching",
    "Tokenizers": "seqkit.data.tokenizer",
    "TranslationData": "seqkit.data.translation",
    "collate": "seqkit.data.batching",
    "load_pairs": "seqkit.data.sources",
    "train_bpe": "seqkit.data.tokenizer",
}
__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "DataError",
    "MultilingualTranslationData",
    "NumberWordsData",
    "TokenBatchSampler",
    "Tokenizers",
    "TranslationData",
    "collate",
    "load_pairs",
    "train_bpe",
]

if TYPE_CHECKING:
    from seqkit.data.batching import TokenBatchSampler, collate
    from seqkit.data.multilingual import MultilingualTranslationData
    from seqkit.data.numbers import NumberWordsData
    from seqkit.data.sources import load_pairs
    from seqkit.data.tokenizer import Tokenizers, train_bpe
    from seqkit.data.translation import TranslationData
    from seqkit.errors import DataError
    from seqkit.tokens import BOS, EOS, PAD, SPECIAL_TOKENS, UNK


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'seqkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
