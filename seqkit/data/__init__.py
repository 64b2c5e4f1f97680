"""Data pipeline: parallel text sources, BPE tokenizers, token-budget batching, DataModules."""

from seqkit.data.batching import TokenBatchSampler, collate
from seqkit.data.numbers import NumberWordsData
from seqkit.data.sources import DataError, load_pairs
from seqkit.data.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, UNK, Tokenizers, train_bpe
from seqkit.data.translation import TranslationData

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "DataError",
    "NumberWordsData",
    "TokenBatchSampler",
    "Tokenizers",
    "TranslationData",
    "collate",
    "load_pairs",
    "train_bpe",
]
