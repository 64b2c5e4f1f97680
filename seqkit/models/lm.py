"""Decoder-only language models over the seq2seq networks' parts: a Transformer with a causal
self-attention mask (the decoder of Vaswani et al., 2017, without cross-attention) and an
Elman RNN, GRU or LSTM (Mikolov et al., 2010; Zaremba et al., 2014).

`context` sets the window τ of an autoregressive model of order τ: every prediction sees
exactly the last τ tokens, itself included. Both families read each window afresh, as the
autoregressive model with τ inputs does: a recurrent model from a zero state, a Transformer
from position 0. (A banded mask would not do: stacked layers widen what a position sees to
layers × (τ − 1) + 1 tokens.) That costs τ positions of work per token. 0 means the whole past.

Shapes: B batch, T length, V vocabulary, D model width, H hidden size, L layers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from seqkit.models.rnn import CELLS, set_forget_bias
from seqkit.models.transformer import (
    EncoderLayer,
    KVCache,
    add_positions,
    positions,
    reorder_rows,
)
from seqkit.tokens import PAD

State = dict[str, Tensor]


@dataclass(frozen=True)
class TransformerLMConfig:
    """Sizes and options of a decoder-only Transformer language model."""

    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the data module when fitting starts."""
    d_model: int = 256
    """Width of every token representation."""
    n_heads: int = 4
    """Attention heads; must divide d_model."""
    n_layers: int = 4
    """Blocks of masked self-attention and feed-forward."""
    d_ff: int = 1024
    """Hidden width of the position-wise feed-forward network."""
    dropout: float = 0.1
    """Dropout on embeddings and on every sublayer's output before the residual sum."""
    attention_dropout: float = 0.0
    """Dropout on attention weights."""
    activation: Literal["relu", "gelu"] = "gelu"
    """Feed-forward non-linearity."""
    norm_first: bool = True
    """Pre-norm (LayerNorm before each sublayer) or post-norm as in the paper."""
    positions: Literal["sinusoidal", "learned"] = "learned"
    """Fixed sinusoidal position encodings or learned position embeddings."""
    max_positions: int = 512
    """Longest sequence the position encodings cover."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection (Press & Wolf, 2017)."""
    context: int = 0
    """τ: every prediction sees the last τ tokens only, read afresh; 0: all (up to
    max_positions)."""

    @property
    def src_vocab_size(self) -> int:
        """The vocabulary, as a tokenizer's source side sees it (one tokenizer serves both)."""
        return self.vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        """The vocabulary, as a tokenizer's target side sees it."""
        return self.vocab_size

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.context < 0:
            raise ValueError(f"context must be 0 (the whole past) or positive, got {self.context}")


@dataclass(frozen=True)
class RNNLMConfig:
    """Sizes and options of a recurrent language model."""

    vocab_size: int = 0
    """Vocabulary size; 0 takes it from the data module when fitting starts."""
    cell: Literal["rnn", "gru", "lstm"] = "lstm"
    """Recurrent cell: Elman RNN (tanh), GRU or LSTM."""
    embed_dim: int = 256
    """Width of token embeddings."""
    hidden_size: int = 256
    """Width of every recurrent state."""
    n_layers: int = 2
    """Stacked recurrent layers."""
    dropout: float = 0.2
    """Dropout on embeddings, between stacked layers and before the output projection."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection; needs embed_dim == hidden_size."""
    forget_bias: float | None = None
    """LSTM only: the forget gate's bias at initialization (1.0 as Jozefowicz et al., 2015
    recommend); None keeps PyTorch's uniform initialization."""
    context: int = 0
    """τ: every prediction sees the last τ tokens only, read afresh from a zero state; 0: all."""

    @property
    def src_vocab_size(self) -> int:
        """The vocabulary, as a tokenizer's source side sees it (one tokenizer serves both)."""
        return self.vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        """The vocabulary, as a tokenizer's target side sees it."""
        return self.vocab_size

    def __post_init__(self) -> None:
        if self.tie_embeddings and self.embed_dim != self.hidden_size:
            raise ValueError("tie_embeddings needs embed_dim == hidden_size")
        if self.forget_bias is not None and self.cell != "lstm":
            raise ValueError(f"forget_bias is the LSTM's forget gate; cell={self.cell!r} has none")
        if self.context < 0:
            raise ValueError(f"context must be 0 (the whole past) or positive, got {self.context}")


LMConfig = TransformerLMConfig | RNNLMConfig
"""Every language model's config; a config's type picks the model."""


class _LanguageModel(nn.Module):
    """What both families share: `decode` over a state, with or without a window τ."""

    config: LMConfig
    output: nn.Linear

    def decode(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State | None]:
        """Logits (B, T, V) of the next token after each of `tokens` (B, T). Without `state`
        the sequence starts at `tokens`; with one (`init_state`, an earlier call) it goes on
        from there, and the state after the last token is returned."""
        tau = self.config.context
        if not tau:
            return self._decode(tokens, state)
        # The state is the last τ − 1 tokens; each position reads its window afresh.
        seq = tokens if state is None else torch.cat([state["window"], tokens], dim=1)
        hidden = _windows(self._hidden, seq, tau)[:, seq.shape[1] - tokens.shape[1] :]
        logits = self.output(hidden)
        return logits, (
            None if state is None else {"window": seq[:, max(seq.shape[1] - tau + 1, 0) :]}
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits (B, T, V) of the next token after each of `tokens` (B, T)."""
        return self.decode(tokens)[0]

    def init_state(self, batch_size: int) -> State:
        """The state before the first token."""
        if self.config.context:
            return {
                "window": torch.zeros(
                    batch_size, 0, dtype=torch.long, device=self.output.weight.device
                )
            }
        return self._init_state(batch_size)

    @staticmethod
    def reorder_state(state: State, index: Tensor) -> State:
        """Pick rows of the state (beam search, several samples of one prompt)."""
        return reorder_rows(state, index)

    def _decode(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State | None]:
        raise NotImplementedError

    def _hidden(self, tokens: Tensor) -> Tensor:
        """The top layer's outputs (B, T, width) for a fresh sequence `tokens` (B, T)."""
        raise NotImplementedError

    def _init_state(self, batch_size: int) -> State:
        raise NotImplementedError


def _windows(hidden: Callable[[Tensor], Tensor], tokens: Tensor, tau: int) -> Tensor:
    """`hidden` (fresh sequences → (N, τ, width)) at each position t of `tokens` (B, T),
    computed on tokens t − τ + 1 .. t alone: (B, T, width)."""
    b, t = tokens.shape
    if t <= tau:  # every window starts at the first token: one causal pass is the same
        return hidden(tokens)
    steps = torch.arange(t, device=tokens.device)
    first = (steps - tau + 1).clamp(min=0)  # (T,) each window's first position
    # (T, τ); a window shorter than τ (at the start) is filled with later tokens, which a
    # causal model's output at the window's last real position does not see.
    index = (first[:, None] + torch.arange(tau, device=tokens.device)).clamp(max=t - 1)
    out = hidden(tokens[:, index].reshape(b * t, tau))  # (B*T, τ, width)
    last = (steps - first).repeat(b)  # (B*T,) the window's last real position
    return out[torch.arange(b * t, device=tokens.device), last].view(b, t, -1)


class TransformerLM(_LanguageModel):
    """Decoder-only Transformer: token + position embeddings, `n_layers` blocks of causal
    self-attention and feed-forward (the encoder's `EncoderLayer`, causally masked), LayerNorm,
    output projection. Its state is a key/value cache per layer."""

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=PAD)
        add_positions(self, c)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(EncoderLayer.of(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.d_model, c.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embed.weight, std=c.d_model**-0.5)
        if c.tie_embeddings:
            self.output.weight = self.embed.weight

    def _init_state(self, batch_size: int) -> State:
        c, like = self.config, self.output.weight
        h = c.n_heads
        return {"self": [KVCache.empty(like, batch_size, h, c.d_model // h) for _ in self.layers]}

    def _decode(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State | None]:
        caches = [None] * len(self.layers) if state is None else state["self"]
        x, caches = self._run(tokens, caches)
        logits = self.output(x)
        return logits, (None if state is None else {"self": caches})

    def _hidden(self, tokens: Tensor) -> Tensor:
        return self._run(tokens, [None] * len(self.layers))[0]

    def _run(self, tokens: Tensor, caches: list) -> tuple[Tensor, list]:
        """Normalized top-layer outputs (B, T, D) for `tokens` (B, T) after the cached past."""
        c = self.config
        offset = caches[0].length if caches and caches[0] is not None else 0
        t = tokens.shape[1]
        if offset + t > c.max_positions:
            raise ValueError(
                f"sequence of {offset + t} tokens exceeds max_positions={c.max_positions}"
            )
        x = self.embed(tokens) * math.sqrt(c.d_model) + positions(self)[offset : offset + t]
        x = self.embed_dropout(x)  # (B, T, D)
        # New queries see the whole past; several new positions must not see each other.
        mask = None if offset == 0 else _causal_mask(t, offset + t, tokens.device)
        new_caches = []
        for layer, cache in zip(self.layers, caches, strict=True):
            x, cache = _cached_layer(layer, x, cache, mask)
            new_caches.append(cache)
        return self.norm(x), new_caches


def _causal_mask(t_new: int, t_total: int, device: torch.device) -> Tensor:
    """(t_new, t_total) mask for the last t_new positions of a t_total-long sequence."""
    query = torch.arange(t_total - t_new, t_total, device=device)[:, None]
    return query >= torch.arange(t_total, device=device)[None, :]


def _cached_layer(
    layer: EncoderLayer, x: Tensor, cache: KVCache | None, mask: Tensor | None
) -> tuple[Tensor, KVCache | None]:
    """`layer` on new positions `x` (B, T, D) after the `cache`d past (written in place); None
    `mask`: a fresh sequence (or an empty cache), causally masked."""
    new_cache = cache

    def attention(h: Tensor) -> Tensor:
        nonlocal new_cache
        k, v = layer.attn.project_kv(h)
        if cache is None:
            return layer.attn.attend(h, (k, v), mask, is_causal=True)
        new_cache = cache.append(k, v)
        if h.shape[1] == 1:  # one step: the past and itself
            return layer.attn.attend_one(h, new_cache.keys, new_cache.values)
        kv = (new_cache.keys, new_cache.values)
        return layer.attn.attend(h, kv, mask, is_causal=mask is None)

    x = layer.attn_block(x, attention)
    return layer.ff_block(x, layer.ff), new_cache


class RNNLM(_LanguageModel):
    """Embedding, stacked fused RNN/GRU/LSTM, output projection. Its state is the hidden (and
    LSTM cell) state, carried from call to call, so that a long stream can be read in chunks
    (truncated BPTT)."""

    def __init__(self, config: RNNLMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=PAD)
        self.dropout = nn.Dropout(c.dropout)
        between = c.dropout if c.n_layers > 1 else 0.0
        cell = CELLS[c.cell]
        self.rnn = cell(c.embed_dim, c.hidden_size, c.n_layers, batch_first=True, dropout=between)
        if c.forget_bias is not None:
            set_forget_bias(self.rnn, c.forget_bias)
        self.output = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_embeddings:
            self.output.weight = self.embed.weight

    def _init_state(self, batch_size: int) -> State:
        """Zero states (B, L, H): "h", and "c" for the LSTM."""
        c = self.config
        zeros = self.output.weight.new_zeros(batch_size, c.n_layers, c.hidden_size)
        return {"h": zeros, "c": zeros} if c.cell == "lstm" else {"h": zeros}

    def _decode(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State | None]:
        out, new = self._run(tokens, state)
        return self.output(out), (None if state is None else new)

    def _hidden(self, tokens: Tensor) -> Tensor:
        return self._run(tokens, None)[0]

    def _run(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State]:
        """Outputs (B, T, H) of the stack over `tokens` (B, T) from `state` (default: zeros),
        dropout applied, and the state after them."""
        hidden = None
        if state is not None:
            hidden = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
            if self.config.cell == "lstm":
                hidden = (hidden, state["c"].transpose(0, 1).contiguous())
        out, hidden = self.rnn(self.dropout(self.embed(tokens)), hidden)
        if self.config.cell == "lstm":
            new = {"h": hidden[0].transpose(0, 1), "c": hidden[1].transpose(0, 1)}
        else:
            new = {"h": hidden.transpose(0, 1)}
        return self.dropout(out), new
