"""Recurrent encoder–decoders: Elman RNN, GRU (Cho et al., 2014) and LSTM (Hochreiter &
Schmidhuber, 1997), without attention (Sutskever et al., 2014; Cho et al., 2014), with additive
attention (Bahdanau et al., 2015) or with multiplicative attention (Luong et al., 2015).

Shapes: B batch, S source length, T target length, E embedding width, H hidden size,
M = H × directions (encoder output width), L layers. Masks are True on real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seqkit.models.source import check_source_sizes, source_mask
from seqkit.tokens import PAD

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
State = dict[str, Tensor]


@dataclass(frozen=True)
class RNNConfig:
    """Sizes and options of a recurrent encoder–decoder."""

    src_vocab_size: int = 0
    """Source vocabulary size; 0 takes it from the data module when fitting starts."""
    tgt_vocab_size: int = 0
    """Target vocabulary size; 0 takes it from the data module when fitting starts."""
    cell: Literal["rnn", "gru", "lstm"] = "gru"
    """Recurrent cell: Elman RNN (tanh), GRU or LSTM; the same for encoder and decoder."""
    attention: Literal["none", "bahdanau", "luong"] = "bahdanau"
    """none: the decoder sees one summary of the source at every step; bahdanau: additive
    attention queried by the previous decoder state; luong: multiplicative attention
    queried by the current decoder state."""
    luong_score: Literal["dot", "general"] = "general"
    """Luong's score: q·k (needs M == H, so a unidirectional encoder) or q·W·k."""
    input_feeding: bool = False
    """Feed the previous attentional state back as decoder input (Luong et al., 2015)."""
    embed_dim: int = 256
    """Width of token embeddings."""
    hidden_size: int = 512
    """Width of every recurrent state."""
    n_layers: int = 1
    """Stacked recurrent layers, in the encoder and in the decoder."""
    bidirectional: bool = True
    """Read the source in both directions."""
    dropout: float = 0.2
    """Dropout on embeddings, between stacked layers and before the output projection."""
    tie_embeddings: bool = False
    """Share the target embedding with the output projection; needs embed_dim == hidden_size."""
    forget_bias: float | None = None
    """LSTM only: the forget gate's bias at initialization in encoder and decoder (1.0 as
    Jozefowicz et al., 2015 recommend); None keeps PyTorch's uniform initialization."""

    def __post_init__(self) -> None:
        if self.forget_bias is not None and self.cell != "lstm":
            raise ValueError(f"forget_bias is the LSTM's forget gate; cell={self.cell!r} has none")
        memory = self.hidden_size * (2 if self.bidirectional else 1)
        if self.attention == "luong" and self.luong_score == "dot" and memory != self.hidden_size:
            raise ValueError(
                "luong_score='dot' compares decoder states with encoder outputs, so it needs "
                "bidirectional=False; use luong_score='general' for a bidirectional encoder"
            )
        if self.tie_embeddings and self.embed_dim != self.hidden_size:
            raise ValueError("tie_embeddings needs embed_dim == hidden_size")


def set_forget_bias(lstm: nn.LSTM, value: float) -> None:
    """Set every layer's forget-gate bias to `value`: `bias_ih`'s forget slice to `value` and
    `bias_hh`'s to 0, as the two are summed (PyTorch orders an LSTM's gates i, f, g, o)."""
    h = lstm.hidden_size
    with torch.no_grad():
        for name, bias in lstm.named_parameters():
            if name.startswith("bias_"):
                bias[h : 2 * h] = value if name.startswith("bias_ih") else 0.0


class Attention(nn.Module):
    """Additive (Bahdanau) or multiplicative (Luong dot/general) attention over the memory."""

    def __init__(self, kind: str, score: str, hidden: int, memory: int) -> None:
        super().__init__()
        self.kind = kind
        self.key = (
            nn.Identity()
            if score == "dot" and kind == "luong"
            else (nn.Linear(memory, hidden, bias=False))
        )
        if kind == "bahdanau":
            self.query = nn.Linear(hidden, hidden)
            self.v = nn.Linear(hidden, 1, bias=False)

    def forward(
        self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Context (B, T, M) and weights (B, T, S) for queries (B, T, H); keys from `self.key`."""
        if self.kind == "bahdanau":
            hidden = torch.tanh(self.query(query)[:, :, None] + keys[:, None])  # (B, T, S, H)
            scores = self.v(hidden).squeeze(-1)
        else:
            scores = query @ keys.transpose(1, 2)
        weights = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return weights @ memory, weights


class RNNSeq2Seq(nn.Module):
    """Recurrent encoder–decoder on the decoding protocol of `seqkit.decoding`.

    The encoder runs packed sequences through a fused cuDNN/oneDNN kernel. The decoder runs
    the whole target through one fused call when no step depends on the previous step's
    output (no attention, or Luong attention without input feeding), and one token at a time
    otherwise (Bahdanau attention, input feeding). Its decoding state is its recurrent state.
    """

    def __init__(self, config: RNNConfig, src_embed: nn.Module | None = None) -> None:
        """`src_embed` maps a source (B, S, ...) to (B, S, embed_dim), e.g. the patch embedding
        of an image source (`build_model`); default: an embedding of `src_vocab_size` tokens."""
        super().__init__()
        c = self.config = config
        check_source_sizes(c, src_embed)
        h, m = c.hidden_size, c.hidden_size * (2 if c.bidirectional else 1)
        cell = CELLS[c.cell]
        between = c.dropout if c.n_layers > 1 else 0.0
        self.src_embed = (
            src_embed
            if src_embed is not None
            else nn.Embedding(c.src_vocab_size, c.embed_dim, padding_idx=PAD)
        )
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.embed_dim, padding_idx=PAD)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = cell(c.embed_dim, h, c.n_layers, batch_first=True, dropout=between,
                            bidirectional=c.bidirectional)  # fmt: skip
        # The bridge turns the source summary into every decoder layer's first state.
        self.bridge = nn.Linear(m, c.n_layers * h)
        self.bridge_cell = nn.Linear(m, c.n_layers * h) if c.cell == "lstm" else None
        self.stepwise = c.attention == "bahdanau" or c.input_feeding
        extra = (m if c.attention != "luong" else 0) + (h if c.input_feeding else 0)
        self.decoder = cell(c.embed_dim + extra, h, c.n_layers, batch_first=True, dropout=between)
        self.attention = (
            Attention(c.attention, c.luong_score, h, m) if c.attention != "none" else None
        )
        if c.forget_bias is not None:
            set_forget_bias(self.encoder, c.forget_bias)
            set_forget_bias(self.decoder, c.forget_bias)
        self.combine = nn.Linear(h + m, h)  # attentional state tanh(W [s; c])
        self.output = nn.Linear(h, c.tgt_vocab_size)
        if c.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """(B, S) tokens or (B, S, P) patches → (B, S, M) encoder outputs, zero on padding."""
        x = self.dropout(self.src_embed(src))
        lengths = src_mask.sum(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return memory

    def summary(self, memory: Tensor, src_mask: Tensor) -> Tensor:
        """The encoder's final states (B, M): forward at the last token, backward at the first."""
        h = self.config.hidden_size
        last = src_mask.sum(1) - 1
        forward = memory[torch.arange(memory.shape[0], device=memory.device), last, :h]
        if not self.config.bidirectional:
            return forward
        return torch.cat([forward, memory[:, 0, h:]], dim=-1)

    def init_state(self, memory: Tensor, src_mask: Tensor) -> State:
        c = self.config
        b = memory.shape[0]
        summary = self.summary(memory, src_mask)
        state = {"h": torch.tanh(self.bridge(summary)).view(b, c.n_layers, c.hidden_size)}
        if self.bridge_cell is not None:
            state["c"] = torch.tanh(self.bridge_cell(summary)).view(b, c.n_layers, c.hidden_size)
        if c.input_feeding:
            state["feed"] = memory.new_zeros(b, c.hidden_size)
        if self.attention is None:
            state["summary"] = summary
        else:
            state["keys"] = self.attention.key(memory)
        return state

    def decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state: State | None = None
    ) -> tuple[Tensor, State | None]:
        """Logits (B, T, V) for target tokens (B, T); without `state`, start from the bridge."""
        fresh = state is None
        if fresh:
            state = self.init_state(memory, src_mask)
        emb = self.dropout(self.tgt_embed(tgt))
        if self.stepwise:
            outputs = []
            for t in range(emb.shape[1]):
                out, state = self._run(emb[:, t : t + 1], memory, src_mask, state)
                outputs.append(out)
            out = torch.cat(outputs, dim=1)
        else:
            out, state = self._run(emb, memory, src_mask, state)
        return self.output(self.dropout(out)), (None if fresh else state)

    def _run(self, emb: Tensor, memory: Tensor, src_mask: Tensor, state: State):
        """Attentional states (B, T, H) for embedded inputs (B, T, E); T is 1 when stepwise."""
        c = self.config
        t = emb.shape[1]
        inputs = [emb]
        if c.attention == "bahdanau":  # queried by the previous top-layer state
            query = state["h"][:, -1:]
            inputs.append(self.attention(query, state["keys"], memory, src_mask)[0])
        elif c.attention == "none":
            inputs.append(state["summary"][:, None].expand(-1, t, -1))
        if c.input_feeding:
            inputs.append(state["feed"][:, None])
        hidden = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
        if c.cell == "lstm":
            hidden = (hidden, state["c"].transpose(0, 1).contiguous())
        out, hidden = self.decoder(torch.cat(inputs, dim=-1), hidden)  # (B, T, H)
        if c.attention == "luong":  # queried by the current top-layer state
            context = self.attention(out, state["keys"], memory, src_mask)[0]
        else:  # Bahdanau's context, or the source summary
            context = inputs[1]
        attentional = torch.tanh(self.combine(torch.cat([out, context], dim=-1)))
        new = dict(state)
        if c.cell == "lstm":
            new["h"], new["c"] = hidden[0].transpose(0, 1), hidden[1].transpose(0, 1)
        else:
            new["h"] = hidden.transpose(0, 1)
        if c.input_feeding:
            new["feed"] = attentional[:, -1]
        return attentional, new

    @staticmethod
    def reorder_state(state: State, index: Tensor) -> State:
        """Pick rows of the recurrent state (beam search). `index` must keep each row within
        its own sentence: the attention keys and the source summary are left as they are."""
        return {k: v.index_select(0, index) if k in ("h", "c", "feed") else v
                for k, v in state.items()}  # fmt: skip

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher-forced logits (B, T, V) for source (B, S) or (B, S, P) and shifted target
        (B, T); `src_mask` is needed for padded patches only."""
        src_mask = source_mask(src) if src_mask is None else src_mask
        logits, _ = self.decode(tgt, self.encode(src, src_mask), src_mask)
        return logits

    def cross_attention(self, src: Tensor, src_mask: Tensor, tgt: Tensor) -> Tensor:
        """Attention weights (B, T, S) of every target position over the source, teacher-forced
        on `tgt` (B, T); zero on source padding."""
        if self.attention is None:
            raise ValueError(
                "this RNNSeq2Seq has attention='none': it has no attention weights to show"
            )
        weights = []  # one (B, T, S) call, or T calls of (B, 1, S) when decoding stepwise
        hook = self.attention.register_forward_hook(
            lambda module, args, out: weights.append(out[1])
        )
        try:
            self.decode(tgt, self.encode(src, src_mask), src_mask)
        finally:
            hook.remove()
        return torch.cat(weights, dim=1)
