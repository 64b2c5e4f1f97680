"""Greedy and batched beam search over the encode()/decode(state) protocol.

Any model with `encode(src, src_mask)`, `init_state(memory, src_mask)`,
`decode(tgt, memory, src_mask, state) -> (logits, state)` and `reorder_state(state, index)`
can be decoded: the Transformer caches keys and values, recurrent models carry their hidden
state. Every tensor in a state has the batch as its first dimension.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from seqkit.tokens import BOS, EOS, PAD


class Decodable(Protocol):
    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor: ...
    def init_state(self, memory: Tensor, src_mask: Tensor): ...
    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state): ...
    def reorder_state(self, state, index: Tensor): ...


class Hypothesis(NamedTuple):
    tokens: list[int]
    """Output token ids, without BOS and EOS."""
    score: float
    """Sum of token log-probabilities divided by the length penalty."""


def default_max_len(src_mask: Tensor) -> int:
    """Room for a translation up to 1.5 times the longest source, plus 10 tokens."""
    return int(src_mask.sum(1).max().item() * 1.5) + 10


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al., 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def next_token_logprobs(logits: Tensor, never: tuple[int, ...]) -> Tensor:
    """Log-probabilities (B, V) of the next token; tokens in `never` (padding, BOS) get -inf."""
    logp = logits[:, -1].float().log_softmax(-1)
    logp[:, list(never)] = float("-inf")
    return logp


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.inference_mode()
def greedy(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    *,
    max_len: int | None = None,
    bos: int = BOS,
    eos: int = EOS,
) -> list[list[int]]:
    """Most likely next token at every step, for a batch of sources (B, S) or (B, S, P)."""
    max_len = max_len or default_max_len(src_mask)
    memory = net.encode(src, src_mask)
    state = net.init_state(memory, src_mask)
    b = src.shape[0]
    ids = {"dtype": torch.long, "device": src.device}  # src may be float image patches
    out = torch.full((b, max_len), eos, **ids)
    active = torch.arange(b, device=src.device)  # sentences still being decoded
    step = torch.full((b, 1), bos, **ids)
    for t in range(max_len):
        logits, state = net.decode(step, memory, src_mask, state)
        token = next_token_logprobs(logits, (PAD, bos)).argmax(-1)
        out[active, t] = token
        going = token != eos
        if not going.all():  # finished sentences leave the batch
            keep = going.nonzero().squeeze(1)
            if not len(keep):
                break
            active, token = active[keep], token[keep]
            memory, src_mask, state = _select((memory, src_mask, state), keep)
        step = token[:, None]
    return [_strip(row, eos) for row in out.tolist()]


@torch.inference_mode()
def beam_search(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    *,
    beam_size: int = 5,
    max_len: int | None = None,
    alpha: float = 0.6,
    n_best: int = 1,
    bos: int = BOS,
    eos: int = EOS,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the `n_best` hypotheses of each source, best first.

    As in fairseq, a hypothesis ends when EOS ranks among the `beam_size` best candidates.
    A sentence is done once it has `beam_size` ended hypotheses and no live one scores better
    at the present length (Hugging Face's `early_stopping=False`), so `beam_size=1` is exactly
    greedy search. Scores are length-normalized with the GNMT penalty `alpha`.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")
    max_len = max_len or default_max_len(src_mask)
    b, k = src.shape[0], beam_size
    memory = net.encode(src, src_mask)
    state = tree_map(lambda t: t.repeat_interleave(k, 0), net.init_state(memory, src_mask))
    memory, src_mask = memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0)

    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start from the same BOS: keep one until they diverge
    history = torch.full((b * k, 1), bos, dtype=torch.long, device=src.device)
    ended: list[list[Hypothesis]] = [[] for _ in range(b)]
    active = torch.arange(b, device=src.device)  # sentences still being searched
    for t in range(max_len):
        n = len(active)
        rows = torch.arange(n, device=src.device)[:, None] * k
        logits, state = net.decode(history[:, -1:], memory, src_mask, state)
        logp = next_token_logprobs(logits, (PAD, bos))  # (N*K, V)
        vocab = logp.shape[-1]
        cand_scores, cand = (scores.view(-1, 1) + logp).view(n, k * vocab).topk(2 * k, dim=1)
        beam, token = cand // vocab, cand % vocab  # (N, 2K)
        is_eos = token == eos
        i, j = is_eos[:, :k].nonzero(as_tuple=True)
        _finish(ended, active[i], rows[i, 0] + beam[i, j], cand_scores[i, j], history, t + 1,
                alpha, k)  # fmt: skip
        # Each beam adds at most one EOS, so at least k of the 2k candidates go on.
        alive = cand_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1).indices
        scores = cand_scores.gather(1, alive)  # best first
        best = (scores[:, 0] / length_penalty(t + 1, alpha)).tolist()
        going = [not _settled(ended[s], k, a) for s, a in zip(active.tolist(), best, strict=True)]
        going = torch.tensor(going, device=src.device)
        if not going.any():
            break
        index = (rows + beam.gather(1, alive)).view(-1)
        history = torch.cat([history[index], token.gather(1, alive).view(-1, 1)], dim=1)
        state = net.reorder_state(state, index)
        if not going.all():  # finished sentences leave the batch
            keep = going.nonzero().squeeze(1)
            active, scores = active[keep], scores[keep]
            keep = (rows[keep] + torch.arange(k, device=src.device)).view(-1)
            history, memory, src_mask, state = _select((history, memory, src_mask, state), keep)
    else:  # out of room: the hypotheses still alive end here, without EOS
        i = active.repeat_interleave(k)
        _finish(ended, i, torch.arange(len(i)), scores.view(-1), history, max_len, alpha, k)
    return [e[:n_best] for e in ended]


def _select(tree, rows: Tensor):
    """Keep the given batch rows of every tensor in a (nested) decoding state."""
    return tree_map(lambda x: x.index_select(0, rows), tree)


def _finish(
    ended: list[list[Hypothesis]],
    sentence: Tensor,
    rows: Tensor,
    scores: Tensor,
    history: Tensor,
    length: int,
    alpha: float,
    k: int,
) -> None:
    """End the hypotheses in `history[rows]` (of `sentence`); each sentence keeps its k best."""
    if not len(rows):
        return
    lp = length_penalty(length, alpha)
    tokens = history[rows, 1:].tolist()
    for i, toks, score in zip(sentence.tolist(), tokens, scores.tolist(), strict=True):
        if score != float("-inf"):
            ended[i].append(Hypothesis(toks, score / lp))
            ended[i].sort(key=lambda h: -h.score)
            del ended[i][k:]


def _settled(ended: list[Hypothesis], k: int, best_alive: float) -> bool:
    """True once a sentence has k ended hypotheses that its best live one does not beat."""
    return len(ended) == k and ended[-1].score >= best_alive
