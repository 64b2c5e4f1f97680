"""Growing a trained seq2seq network's vocabularies in place, for a tokenizer extended by new
tokens (`seqkit.data.vocab_extension`): the source and target embeddings and the output
projection gain rows at the end; every old row stays as it was, bit for bit.

A new token's row starts as the mean of the rows of the pieces the old tokenizer cut its
string into: the embedding rows for the embeddings, the output matrix's rows (and biases) for
the output projection. This mean-of-subword initialization (Gee et al., 2022, "Fast
vocabulary transfer for language model compression") starts a new token near what the model
already knows of the sequence it replaces; like Hewitt's (2021, "Initializing new word
embeddings for pretrained language models") average-embedding start, it keeps the new rows
inside the span of the old ones, so new logits do not swamp the old distribution. Rows are
appended at the end, as Hugging Face's `resize_token_embeddings` does.

Works for every seqkit seq2seq network: `src_embed`, `tgt_embed` (possibly one shared
module) and `output` (possibly tied to `tgt_embed`), with or without an output bias; an
image source (a patch embedding) has no vocabulary and is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn


def mean_rows(matrix: Tensor, pieces: Sequence[Sequence[int]]) -> Tensor:
    """(len(pieces), ...) rows: row i the mean of `matrix`'s rows `pieces[i]`.

    Raises:
        ValueError: for a token of no pieces.
    """
    if any(len(p) == 0 for p in pieces):
        raise ValueError("a new token has no old pieces to start from")
    if not pieces:
        return matrix.new_zeros((0, *matrix.shape[1:]))
    return torch.stack([matrix[list(p)].mean(0) for p in pieces])


def grown_embedding(old: nn.Embedding, pieces: Sequence[Sequence[int]]) -> nn.Embedding:
    """`old` with one row appended per entry of `pieces` (the mean of those rows)."""
    weight = old.weight
    new = nn.Embedding(old.num_embeddings + len(pieces), old.embedding_dim,
                       padding_idx=old.padding_idx, device=weight.device,
                       dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        new.weight[: old.num_embeddings] = weight
        new.weight[old.num_embeddings :] = mean_rows(weight, pieces)
    new.weight.requires_grad_(weight.requires_grad)
    return new


def grown_output(old: nn.Linear, pieces: Sequence[Sequence[int]], tied: Tensor | None) -> nn.Linear:
    """`old` (d_in -> V) with an output row per entry of `pieces`: the mean of those rows and
    biases, or the rows of the (already grown) embedding weight `tied` it shares."""
    weight = old.weight
    new = nn.Linear(old.in_features, old.out_features + len(pieces), bias=old.bias is not None,
                    device=weight.device, dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        if tied is None:
            new.weight[: old.out_features] = weight
            new.weight[old.out_features :] = mean_rows(weight, pieces)
        if old.bias is not None:
            new.bias[: old.out_features] = old.bias
            new.bias[old.out_features :] = mean_rows(old.bias, pieces)
            new.bias.requires_grad_(old.bias.requires_grad)
    if tied is not None:
        new.weight = tied  # type: ignore[assignment]  # the same Parameter, as at build time
    else:
        new.weight.requires_grad_(weight.requires_grad)
    return new


def grow_vocabularies(
    net: nn.Module, src_pieces: Sequence[Sequence[int]], tgt_pieces: Sequence[Sequence[int]]
) -> None:
    """Append new tokens to `net`'s vocabularies in place: `src_pieces[i]` are the old source
    ids new source token `src_vocab_size + i` starts from, `tgt_pieces` likewise; the config
    (`net.config`) gets the new sizes.

    Raises:
        ValueError: for shared embeddings given different source and target tokens, or
            source tokens for a network that reads images.
    """
    c = net.config
    shared = net.src_embed is net.tgt_embed
    tied = net.output.weight is net.tgt_embed.weight
    reads_tokens = isinstance(net.src_embed, nn.Embedding)
    if shared and list(map(list, src_pieces)) != list(map(list, tgt_pieces)):
        raise ValueError("shared embeddings need the same new tokens on both sides")
    if src_pieces and not reads_tokens:
        raise ValueError("this network reads images: its source has no vocabulary to grow")
    net.tgt_embed = grown_embedding(net.tgt_embed, tgt_pieces)
    if shared:
        net.src_embed = net.tgt_embed
    elif reads_tokens:
        net.src_embed = grown_embedding(net.src_embed, src_pieces)
    net.output = grown_output(net.output, tgt_pieces, net.tgt_embed.weight if tied else None)
    sizes = {"tgt_vocab_size": net.tgt_embed.num_embeddings}
    if reads_tokens:
        sizes["src_vocab_size"] = net.src_embed.num_embeddings
    net.config = replace(c, **sizes)
