"""Special token ids, the same in every seqkit tokenizer, model and decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def token_labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    """One readable label per token id (attention maps' axes); "▁" marks a leading space,
    as in SentencePiece."""
    labels = []
    for i in ids:
        text = SPECIAL_TOKENS[i] if i < len(SPECIAL_TOKENS) else tokenizer.decode([i])
        labels.append(text.replace(" ", "▁"))
    return labels
