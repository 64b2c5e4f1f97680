"""Transformer encoder–decoder (Vaswani et al., 2017, "Attention Is All You Need").

Shapes: B batch, S source length, T target length, D model width, H heads, Dh = D / H.
Masks are boolean with True where a position may be attended to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import register_pytree_node, tree_map

from seqkit.models.source import check_source_sizes, source_mask
from seqkit.tokens import PAD

KV = tuple[Tensor, Tensor]  # (B, H, T, Dh) keys and values


class KVCache:
    """Self-attention keys and values of the positions decoded so far: buffers (B, H, capacity,
    Dh) filled up to `length`. A step writes its position in place, and the buffers double when
    full, so decoding T tokens copies O(T) positions rather than the O(T²) of concatenating the
    past at every step (as fairseq's and CTranslate2's caches do).

    A decoding state is consumed by the step that reads it: decode from the state it returns.
    `index_select` (beam search's reorder) writes into the buffers of the cache reordered
    before this one, which that cache's successors no longer read, so a search allocates two
    buffer pairs per layer rather than one per step; every hypothesis still keeps its own past.
    Being written in place, a cache serves inference: no gradient flows through it to earlier
    steps.
    """

    __slots__ = ("k", "length", "spare", "v")

    def __init__(self, k: Tensor, v: Tensor, length: int, spare: KV | None = None) -> None:
        self.k, self.v, self.length = k, v, length
        self.spare = spare  # buffers `index_select` may write into (see the class docstring)

    @classmethod
    def empty(cls, like: Tensor, batch: int, heads: int, head_dim: int, capacity: int = 16):
        """An empty cache of `like`'s dtype and device."""
        k = like.new_empty(batch, heads, capacity, head_dim)
        return cls(k, torch.empty_like(k), 0)

    def append(self, k: Tensor, v: Tensor) -> KVCache:
        """The cache with new positions' keys and values (B, H, T, Dh) after the past."""
        end = self.length + k.shape[2]
        spare = self.spare
        if end > self.k.shape[2]:  # full: move to buffers twice as large (amortized O(1))
            room = max(end, 2 * self.k.shape[2])
            grown = [x.new_empty(*x.shape[:2], room, x.shape[3]) for x in (self.k, self.v)]
            for new, old in zip(grown, (self.k, self.v), strict=True):
                new[:, :, : self.length] = old[:, :, : self.length]
            self.k, self.v = grown
            spare = None  # of the old capacity
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        return KVCache(self.k, self.v, end, spare)

    @property
    def keys(self) -> Tensor:
        return self.k[:, :, : self.length]  # (B, H, length, Dh), a view

    @property
    def values(self) -> Tensor:
        return self.v[:, :, : self.length]

    def index_select(self, index: Tensor) -> KVCache:
        """The cache of batch rows `index` (N,), in other buffers (the spare pair when it fits,
        else new ones); only the filled part is copied."""
        if torch.is_grad_enabled():  # `out=` records no gradient: plain copies
            return KVCache(self.keys.index_select(0, index), self.values.index_select(0, index),
                           self.length)  # fmt: skip
        spare, self.spare = self.spare, None  # a second reorder of this cache gets new buffers
        if spare is None or spare[0].shape != (len(index), *self.k.shape[1:]):
            spare = tuple(x.new_empty(len(index), *x.shape[1:]) for x in (self.k, self.v))
        for x, out in zip((self.k, self.v), spare, strict=True):
            torch.index_select(x[:, :, : self.length], 0, index, out=out[:, :, : self.length])
        return KVCache(*spare, self.length, spare=(self.k, self.v))


register_pytree_node(
    KVCache,
    lambda c: ([c.k, c.v], c.length),
    lambda kv, length: KVCache(*kv, length),
    serialized_type_name="seqkit.models.transformer.KVCache",
)


def reorder_rows(state, index: Tensor):
    """Batch rows `index` of every tensor and `KVCache` in a (nested) decoding state."""
    return tree_map(
        lambda x: x.index_select(index) if isinstance(x, KVCache) else x.index_select(0, index),
        state,
        is_leaf=lambda x: isinstance(x, KVCache),
    )


@dataclass(frozen=True)
class TransformerConfig:
    """Sizes and options of an encoder–decoder Transformer."""

    src_vocab_size: int = 0
    """Source vocabulary size; 0 takes it from the data module when fitting starts."""
    tgt_vocab_size: int = 0
    """Target vocabulary size; 0 takes it from the data module when fitting starts."""
    d_model: int = 512
    """Width of every token representation."""
    n_heads: int = 8
    """Attention heads; must divide d_model."""
    n_encoder_layers: int = 6
    """Encoder blocks."""
    n_decoder_layers: int = 6
    """Decoder blocks."""
    d_ff: int = 2048
    """Hidden width of the position-wise feed-forward network."""
    dropout: float = 0.1
    """Dropout on embeddings and on every sublayer's output before the residual sum."""
    attention_dropout: float = 0.0
    """Dropout on attention weights."""
    activation_dropout: float = 0.0
    """Dropout on the feed-forward hidden layer (off by default, as in fairseq: it is the
    largest activation and its random mask costs more CPU time than it returns)."""
    activation: Literal["relu", "gelu"] = "relu"
    """Feed-forward non-linearity."""
    norm_first: bool = True
    """Pre-norm (LayerNorm before each sublayer, more stable) or post-norm as in the paper."""
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    """Fixed sinusoidal position encodings or learned position embeddings."""
    max_positions: int = 1024
    """Longest sequence the position encodings cover."""
    tie_embeddings: bool = True
    """Share the target embedding with the output projection (Press & Wolf, 2017)."""
    share_embeddings: bool = False
    """Share source and target embeddings; needs one joint vocabulary."""

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "share_embeddings needs one joint vocabulary, got "
                f"src_vocab_size={self.src_vocab_size} and tgt_vocab_size={self.tgt_vocab_size}"
            )


def sinusoidal_positions(n: int, d: int) -> Tensor:
    """The fixed position encodings of the paper, (n, d)."""
    if torch.get_default_device().type == "meta":  # shapes only (checking a model's sizes)
        return torch.empty(n, d)
    position = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: d // 2])
    return table


def add_positions(module: nn.Module, c) -> None:
    """Give `module` what `c.positions` says: learned position embeddings (`pos_embed`) or
    the fixed sinusoidal table (`pos_table`, a buffer checkpoints do not hold), for
    `c.max_positions` positions of width `c.d_model`."""
    if c.positions == "learned":
        module.pos_embed = nn.Embedding(c.max_positions, c.d_model)
    else:
        table = sinusoidal_positions(c.max_positions, c.d_model)
        module.register_buffer("pos_table", table, persistent=False)


def positions(module: nn.Module) -> Tensor:
    """The (max_positions, d_model) position encodings `add_positions` gave `module`."""
    return module.pos_embed.weight if hasattr(module, "pos_embed") else module.pos_table


class Attention(nn.Module):
    """Multi-head scaled dot-product attention through `F.scaled_dot_product_attention`."""

    def __init__(self, d_model: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)

    def project_kv(self, x: Tensor) -> KV:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def attend_one(self, x: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
        """Attention of one query position `x` (B, 1, D) to keys and values (B, H, S, Dh),
        with an additive `bias` (B, 1, 1, S) of 0 and -inf; no dropout (decoding). Two batched
        matmuls: for a single query, SDPA's kernels cost more than the arithmetic."""
        b = x.shape[0]
        q = self.split_heads(self.q(x)) * k.shape[-1] ** -0.5  # (B, H, 1, Dh)
        w = torch.matmul(q, k.transpose(-2, -1))  # (B, H, 1, S)
        if bias is not None:
            w = w + bias
        y = torch.matmul(w.softmax(-1), v)  # (B, H, 1, Dh)
        return self.out(y.transpose(1, 2).reshape(b, 1, -1))  # (B, 1, D)

    def attend(
        self, x: Tensor, kv: KV, mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        q = self.split_heads(self.q(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        """Self-attention over `x` (B, T, D)."""
        return self.attend(x, self.project_kv(x), mask, is_causal)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str) -> None:
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        super().__init__(
            nn.Linear(d_model, d_ff), act, nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        )


class Residual(nn.Module):
    """`x + f(x)` with LayerNorm before f (pre-norm) or after the sum (post-norm)."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: Tensor, f) -> Tensor:
        if self.norm_first:
            return x + self.dropout(f(self.norm(x)))
        return self.norm(x + self.dropout(f(x)))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual block. The ViT reuses it."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = True,
        activation_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.attn = Attention(d_model, n_heads, attention_dropout)
        self.ff = FeedForward(d_model, d_ff, activation_dropout, activation)
        self.attn_block = Residual(d_model, dropout, norm_first)
        self.ff_block = Residual(d_model, dropout, norm_first)

    @classmethod
    def of(cls, c) -> EncoderLayer:
        """The layer of a config's sizes and options (d_model, n_heads, d_ff, dropout,
        attention_dropout, activation, norm_first, and activation_dropout if it has one)."""
        return cls(
            c.d_model,
            c.n_heads,
            c.d_ff,
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            activation=c.activation,
            norm_first=c.norm_first,
            activation_dropout=getattr(c, "activation_dropout", 0.0),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.attn_block(x, lambda h: self.attn(h, mask))
        return self.ff_block(x, self.ff)


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, feed-forward."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = Attention(c.d_model, c.n_heads, c.attention_dropout)
        self.cross_attn = Attention(c.d_model, c.n_heads, c.attention_dropout)
        self.ff = FeedForward(c.d_model, c.d_ff, c.activation_dropout, c.activation)
        self.self_block, self.cross_block, self.ff_block = (
            Residual(c.d_model, c.dropout, c.norm_first) for _ in range(3)
        )

    def forward(
        self, x: Tensor, cross_kv: KV, src_mask: Tensor, cache: KVCache | None = None
    ) -> tuple[Tensor, KVCache | None]:
        """Teacher forcing without `cache`: `x` (B, T, D) is the whole target, the future masked,
        and `src_mask` is (B, 1, 1, S) boolean. With `cache`, `x` holds only new positions that
        attend to the cached past too, and `src_mask` is the additive (B, 1, 1, S) bias of
        `Transformer.init_state`."""
        if cache is None:
            x = self.self_block(x, lambda h: self.self_attn(h, is_causal=True))
            x = self.cross_block(x, lambda h: self.cross_attn.attend(h, cross_kv, src_mask))
            return self.ff_block(x, self.ff), None
        new_cache = cache

        def self_attention(h: Tensor) -> Tensor:
            nonlocal new_cache
            new_cache = cache.append(*self.self_attn.project_kv(h))
            if h.shape[1] == 1:  # one step of decoding: the past and itself, no mask
                return self.self_attn.attend_one(h, new_cache.keys, new_cache.values)
            # Several new positions at once must not see each other's future.
            t = new_cache.length
            mask = _causal_mask(h.shape[1], t, h.device)
            return self.self_attn.attend(h, (new_cache.keys, new_cache.values), mask)

        def cross_attention(h: Tensor) -> Tensor:
            if h.shape[1] == 1:
                return self.cross_attn.attend_one(h, *cross_kv, src_mask)
            return self.cross_attn.attend(h, cross_kv, src_mask)

        x = self.self_block(x, self_attention)
        x = self.cross_block(x, cross_attention)
        return self.ff_block(x, self.ff), new_cache


def _causal_mask(t_new: int, t_total: int, device: torch.device) -> Tensor:
    """(t_new, t_total) mask for the last t_new positions of a t_total-long sequence."""
    q = torch.arange(t_total - t_new, t_total, device=device).unsqueeze(1)
    return q >= torch.arange(t_total, device=device).unsqueeze(0)


class Transformer(nn.Module):
    """Encoder–decoder Transformer with incremental (key/value cached) decoding.

    Decoding protocol shared with every seq2seq model in seqkit:
    `memory = net.encode(src, src_mask)`; `state = net.init_state(memory, src_mask)`;
    `logits, state = net.decode(tgt, memory, src_mask, state)`;
    `state = net.reorder_state(state, index)` for beam search.
    """

    def __init__(self, config: TransformerConfig, src_embed: nn.Module | None = None) -> None:
        """`src_embed` maps a source (B, S, ...) to (B, S, d_model), e.g. the patch embedding
        of an image source (`build_model`); default: an embedding of `src_vocab_size` tokens."""
        super().__init__()
        c = self.config = config
        check_source_sizes(c, src_embed)
        if src_embed is not None and c.share_embeddings:
            raise ValueError("share_embeddings needs a token source, not an image source")
        self.src_embed = (
            src_embed
            if src_embed is not None
            else nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=PAD)
        )
        share = c.share_embeddings
        self.tgt_embed = (
            self.src_embed if share else nn.Embedding(c.tgt_vocab_size, c.d_model, padding_idx=PAD)
        )
        add_positions(self, c)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(EncoderLayer.of(c) for _ in range(c.n_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c.n_decoder_layers))
        # Pre-norm leaves the residual stream unnormalized: normalize once at the top.
        self.encoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(c.d_model) if c.norm_first else nn.Identity()
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.reset_parameters()
        if c.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for emb in {self.src_embed, self.tgt_embed}:
            if isinstance(emb, nn.Embedding):  # a patch source's Linear keeps its own init
                nn.init.normal_(emb.weight, std=self.config.d_model**-0.5)
                nn.init.zeros_(emb.weight[PAD])

    def embed(self, tokens: Tensor, table: nn.Module, offset: int = 0) -> Tensor:
        """Token ids (B, T), or patches (B, T, P) for a `table` that is a Linear, plus
        positions from `offset` on."""
        t = tokens.shape[1]
        if offset + t > self.config.max_positions:
            raise ValueError(
                f"sequence of {offset + t} tokens exceeds max_positions={self.config.max_positions}"
            )
        pos = positions(self)[offset : offset + t]
        scale = math.sqrt(self.config.d_model) if isinstance(table, nn.Embedding) else 1.0
        x = table(tokens) * scale + pos
        return self.embed_dropout(x)  # (B, T, D)

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """(B, S) tokens or (B, S, P) patches and (B, S) mask → (B, S, D) memory."""
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S): every query sees the real tokens
        x = self.embed(src, self.src_embed)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def init_state(self, memory: Tensor, src_mask: Tensor) -> dict:
        """The decoding state: empty self-attention caches (`KVCache`), the cross-attention keys
        and values (B, H, S, Dh) of every layer, computed once, and the source mask as an
        additive bias (B, 1, 1, S), 0 or -inf."""
        b, _, d = memory.shape
        h = self.config.n_heads
        bias = memory.new_zeros(b, 1, 1, src_mask.shape[1])
        return {
            "self": [KVCache.empty(memory, b, h, d // h) for _ in self.decoder],
            # Contiguous once here, so that no step copies them for its matmuls.
            "cross": [
                tuple(x.contiguous() for x in layer.cross_attn.project_kv(memory))
                for layer in self.decoder
            ],
            "bias": bias.masked_fill(~src_mask[:, None, None, :], float("-inf")),
        }

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state: dict | None = None
    ) -> tuple[Tensor, dict | None]:
        """Logits (B, T, V) for target tokens (B, T).

        Without `state`, `tgt` is the whole target prefix (teacher forcing). With `state`
        from `init_state` or an earlier call, `tgt` holds only the next tokens; the state is
        consumed (its caches are written in place): go on from the one returned.
        """
        if state is None:
            mask = src_mask[:, None, None, :]
            cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder]
            caches: list[KVCache | None] = [None] * len(self.decoder)
            offset = 0
        else:
            cross, caches, mask = state["cross"], state["self"], state["bias"]
            offset = caches[0].length if caches else 0
        x = self.embed(tgt, self.tgt_embed, offset)
        new_caches = []
        for layer, kv, cache in zip(self.decoder, cross, caches, strict=True):
            x, cache = layer(x, kv, mask, cache)
            new_caches.append(cache)
        logits = self.output(self.decoder_norm(x))
        if state is None:
            return logits, None
        return logits, {"self": new_caches, "cross": cross, "bias": mask}

    @staticmethod
    def reorder_state(state: dict, index: Tensor) -> dict:
        """Pick rows of the self-attention caches (beam search).

        `index` must map each row to a row of the same source sentence: the cross-attention
        keys/values and the source bias are equal across those rows and are left as they are.
        """
        caches = [cache.index_select(index) for cache in state["self"]]
        return {**state, "self": caches}

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V) for source (B, S) or (B, S, P) and shifted target
        (B, T); `src_mask` is needed for padded patches only."""
        src_mask = source_mask(src) if src_mask is None else src_mask
        logits, _ = self.decode(tgt, self.encode(src, src_mask), src_mask)
        return logits

    def cross_attention(self, src: Tensor, src_mask: Tensor, tgt: Tensor) -> Tensor:
        """Weights (B, T, S) of the last decoder layer's attention to the source, averaged over
        heads, teacher-forced on `tgt` (B, T); zero on source padding. For plots: call it in
        eval mode, as attention dropout would otherwise differ from these weights."""
        attn = self.decoder[-1].cross_attn
        queries = []  # SDPA returns no weights: catch the query projection and redo q·k
        hook = attn.q.register_forward_hook(lambda module, args, out: queries.append(out))
        try:
            memory = self.encode(src, src_mask)
            self.decode(tgt, memory, src_mask)
        finally:
            hook.remove()
        q = attn.split_heads(queries[0])  # (B, H, T, Dh)
        k, _ = attn.project_kv(memory)  # (B, H, S, Dh)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
        scores = scores.masked_fill(~src_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1).mean(1)
