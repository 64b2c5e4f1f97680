"""Text to image with the seq2seq Transformer: the prompt is the source, the image is the
target, written as patch-codebook tokens (`seqkit.codebook`), digit cell after digit cell, each
cell in raster order (a two-stage generator as DALL-E, Ramesh et al. 2021, with a k-means
codebook in place of its discrete VAE).

Why the encoder–decoder rather than a decoder-only model over [prompt, image]: it is the
network seqkit already trains, decodes and samples (`decoding`, `sampling`), the prompt is
read bidirectionally once, image positions start at 0 whatever the prompt's length, and the
target vocabulary is the codebook alone. Target ids are codebook tokens plus `OFFSET`, so that
the special tokens (PAD, BOS, EOS, UNK) keep their ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seqkit.models.transformer import TransformerConfig
from seqkit.tokens import EOS, SPECIAL_TOKENS

OFFSET = len(SPECIAL_TOKENS)
"""Target id of codebook token 0."""


@dataclass(frozen=True)
class TextToImageConfig(TransformerConfig):
    """A `Transformer` whose target vocabulary is a patch codebook: `tgt_vocab_size` is the
    codebook's size plus the 4 special tokens (0 takes it from the data module). Its own
    `model_type` ("transformer-text2image") keeps `seqkit translate` from reading it as text."""


class ImageTokens:
    """A seq2seq network seen through the decoding protocol (`decoding.Decodable`) so that
    search and sampling write whole images: special tokens are banned, except EOS after each
    complete cell of `cell_length` tokens, and after `max_tokens` tokens only EOS is left,
    so a hypothesis is 1 to `max_tokens // cell_length` whole cells (give search a limit of
    `max_tokens + 1`). The network decides how many cells the prompt names ("forty two": two).
    """

    def __init__(self, net: nn.Module, cell_length: int, max_tokens: int) -> None:
        if not 1 <= cell_length <= max_tokens or max_tokens % cell_length:
            raise ValueError(f"need whole cells: cell_length={cell_length}, "
                             f"max_tokens={max_tokens}")  # fmt: skip
        self.net, self.cell_length, self.max_tokens = net, cell_length, max_tokens

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        return self.net.encode(src, src_mask)

    def init_state(self, memory: Tensor, src_mask: Tensor) -> dict:
        steps = torch.zeros(len(memory), dtype=torch.long, device=memory.device)  # (B,)
        return {"net": self.net.init_state(memory, src_mask), "steps": steps}

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state: dict):
        logits, inner = self.net.decode(tgt, memory, src_mask, state["net"])  # (B, T, V)
        steps = state["steps"]  # (B,) tokens written before the next one
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        banned[:OFFSET] = True
        ban = banned.expand(len(logits), -1).clone()  # (B, V)
        ban[:, EOS] = (steps == 0) | (steps % self.cell_length != 0)
        ban[:, OFFSET:] = (steps >= self.max_tokens)[:, None]
        last = logits[:, -1:].masked_fill(ban[:, None], float("-inf"))
        return last, {"net": inner, "steps": steps + tgt.shape[1]}

    def reorder_state(self, state: dict, index: Tensor) -> dict:
        return {"net": self.net.reorder_state(state["net"], index),
                "steps": state["steps"].index_select(0, index)}  # fmt: skip
