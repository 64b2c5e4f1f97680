"""Greedy and batched beam search over the encode()/decode(state) protocol.

Any model with `encode(src, src_mask)`, `init_state(memory, src_mask)`,
`decode(tgt, memory, src_mask, state) -> (logits, state)` and `reorder_state(state, index)`
can be decoded: the Transformer caches keys and values, recurrent models carry their hidden
state. Every tensor in a state has the batch as its first dimension.

Every sentence has its own length limit (`max_len` may be one int or one per sentence), so a
sentence's output never depends on the other sentences of its batch.

`search` takes a `DecodingConfig` (greedy or beam search) or a `seqkit.sampling.SamplingConfig`
(ancestral sampling): a config's type picks the road.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from seqkit.tokens import BOS, EOS, PAD

if TYPE_CHECKING:
    from seqkit.sampling import SamplingConfig


class Decodable(Protocol):
    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor: ...
    def init_state(self, memory: Tensor, src_mask: Tensor): ...
    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state): ...
    def reorder_state(self, state, index: Tensor): ...


class DecodingError(ValueError):
    """A decoding setting out of range; `field` names the `DecodingConfig` field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"decoding.{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class DecodingConfig:
    """How a model decodes: one validated set of options for test, predict, `translate`,
    `seqkit translate` and `seqkit serve` (overridden with `dataclasses.replace`).

    Raises:
        DecodingError (a ValueError) naming the field when a value is out of range.
    """

    beam_size: int = 5
    """Beam width; 1 is greedy search."""
    n_best: int = 1
    """Hypotheses returned per source, best first; at most beam_size."""
    alpha: float = 0.6
    """GNMT length penalty exponent (Wu et al., 2016); 0 ranks by raw log-probability. At most
    `MAX_ALPHA`."""
    min_len: int = 0
    """Fewest output tokens: EOS is banned before them (Hugging Face's `min_new_tokens`,
    CTranslate2's `min_decoding_length`). min_len == max_len forces exactly that length."""
    max_len: int | None = None
    """Most decoding steps per sentence (output tokens, EOS included if it comes); None
    allows 1.5 × that sentence's source length + 10, and at least min_len + 1. Either way
    capped by the model's `max_positions`."""

    def as_greedy(self) -> DecodingConfig:
        """These settings with greedy search and one hypothesis (validation decodes so)."""
        return replace(self, beam_size=1, n_best=1)

    @property
    def num_returned(self) -> int:
        """Hypotheses returned per source: `n_best`."""
        return self.n_best

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise DecodingError("beam_size", f"must be at least 1, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size:
            raise DecodingError(
                "n_best", f"must be between 1 and beam_size={self.beam_size}, got {self.n_best}"
            )
        check_alpha(self.alpha)
        check_lengths(self.min_len, self.max_len)


MAX_ALPHA = 50.0
"""The largest length penalty exponent: ((5 + L) / 6) ** 50 stays a finite float for outputs
of up to a million tokens, where a larger exponent overflows on long outputs."""


def check_alpha(alpha: float) -> None:
    """Raise `DecodingError` naming `alpha` unless 0 <= alpha <= `MAX_ALPHA` (NaN refused)."""
    if not 0 <= alpha <= MAX_ALPHA:
        raise DecodingError("alpha", f"must be between 0 and {MAX_ALPHA:g}, got {alpha}")


def check_lengths(min_len: int, max_len: int | None) -> None:
    """Raise `DecodingError` naming `min_len` or `max_len` for a length setting out of range."""
    if min_len < 0:
        raise DecodingError("min_len", f"must be >= 0, got {min_len}")
    if max_len is not None and max_len < 1:
        raise DecodingError("max_len", f"must be at least 1, got {max_len}")
    if max_len is not None and min_len > max_len:
        raise DecodingError("min_len", f"min_len={min_len} exceeds max_len={max_len}")


class Hypothesis(NamedTuple):
    tokens: list[int]
    """Output token ids, without BOS and EOS."""
    score: float
    """Sum of token log-probabilities (EOS included when it ended) divided by the length
    penalty (a sample's: not divided)."""


def default_max_len(src_mask: Tensor) -> Tensor:
    """Each sentence's room (B,): 1.5 times its source length (B, S mask), plus 10 tokens."""
    return (src_mask.sum(1) * 1.5).long() + 10


def length_limits(
    src_mask: Tensor, config: DecodingConfig | SamplingConfig, max_positions: int | None = None
) -> Tensor:
    """The most output tokens (B,) each source sentence of `src_mask` (B, S) may get under
    `config`: its `max_len` or `default_max_len` (at least `min_len` + 1), at most
    `max_positions` (the model's longest sequence)."""
    if config.max_len is not None:
        limits = torch.full((src_mask.shape[0],), config.max_len, device=src_mask.device)
    else:
        limits = default_max_len(src_mask).clamp(min=config.min_len + 1)  # room for EOS
    return limits.clamp(max=max_positions) if max_positions else limits


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al., 2016): ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def next_token_logprobs(logits: Tensor, never: tuple[int, ...]) -> Tensor:
    """Log-probabilities (B, V) of the next token; tokens in `never` (padding, BOS, and EOS
    before `min_len`) get -inf."""
    logp = logits[:, -1].float().log_softmax(-1)
    return logp.index_fill_(1, torch.tensor(never, device=logp.device), float("-inf"))


def _limits(max_len: int | Tensor | None, src_mask: Tensor) -> Tensor:
    if max_len is None:
        return default_max_len(src_mask)
    if isinstance(max_len, int):
        max_len = torch.full((src_mask.shape[0],), max_len)
    if (max_len < 1).any():
        raise ValueError(f"max_len must be at least 1, got {max_len.tolist()}")
    return max_len.to(src_mask.device)


def _banned(t: int, min_len: int, bos: int, eos: int) -> tuple[int, ...]:
    return (PAD, bos, eos) if t < min_len else (PAD, bos)


def _strip(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def search(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    config: DecodingConfig | SamplingConfig,
    *,
    max_len: int | Tensor | None = None,
) -> list[list[Hypothesis]]:
    """The `config.num_returned` hypotheses of each source with their scores: for a
    `DecodingConfig`, the n-best, best first, of greedy search when `config.beam_size` is 1,
    else of `beam_search`; for a `SamplingConfig`, samples in the order drawn (`sample`).
    `max_len` (B,) overrides `config.max_len`, e.g. with `length_limits`."""
    max_len = config.max_len if max_len is None else max_len
    if not isinstance(config, DecodingConfig):
        from seqkit.sampling import draw_samples  # here: seqkit.sampling imports this module

        return draw_samples(net, src, src_mask, _limits(max_len, src_mask), config)
    if config.beam_size == 1:
        tokens, scores = _one_path(net, src, src_mask, _limits(max_len, src_mask),
                                   config.min_len, config.alpha, BOS, EOS)  # fmt: skip
        return [[Hypothesis(t, s)] for t, s in zip(tokens, scores, strict=True)]
    options = {"alpha": config.alpha, "n_best": config.n_best, "min_len": config.min_len}
    return beam_search(net, src, src_mask, beam_size=config.beam_size, max_len=max_len, **options)


@torch.inference_mode()
def greedy(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    *,
    max_len: int | Tensor | None = None,
    min_len: int = 0,
    bos: int = BOS,
    eos: int = EOS,
) -> list[list[int]]:
    """Most likely next token at every step, for a batch of sources (B, S) or (B, S, P).
    `max_len`: the most tokens, one int or one per sentence (B,); default `default_max_len`.
    `min_len`: EOS is banned before this many tokens."""
    return _one_path(net, src, src_mask, _limits(max_len, src_mask), min_len, 0.0, bos, eos)[0]


Pick = Callable[[Tensor, Tensor, int], Tensor]
"""Chooses the next tokens (N,) from their log-probabilities (N, V), given which sources the
rows are (N,) and the step."""


def _most_likely(logp: Tensor, rows: Tensor, t: int) -> Tensor:
    return logp.argmax(-1)


@torch.inference_mode()
def _one_path(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    limits: Tensor,
    min_len: int,
    alpha: float,
    bos: int,
    eos: int,
    pick: Pick = _most_likely,
) -> tuple[list[list[int]], list[float]]:
    """One hypothesis per source, token by token: the most likely token (greedy search) or
    what another `pick` chooses (sampling draws one); with the hypotheses' log-probabilities,
    length-normalized as `beam_search`'s."""
    memory = net.encode(src, src_mask)
    state = net.init_state(memory, src_mask)
    b, steps = src.shape[0], int(limits.max())
    ids = {"dtype": torch.long, "device": src.device}  # src may be float image patches
    out = torch.full((b, steps), eos, **ids)
    logprob = torch.zeros(b, device=src.device)
    active = torch.arange(b, device=src.device)  # sentences still being decoded
    step = torch.full((b, 1), bos, **ids)
    for t in range(steps):
        logits, state = net.decode(step, memory, src_mask, state)
        logp = next_token_logprobs(logits, _banned(t, min_len, bos, eos))
        token = pick(logp, active, t)
        out[active, t] = token
        logprob[active] += logp.gather(1, token[:, None]).squeeze(1)
        going = (token != eos) & (limits[active] > t + 1)
        if not going.all():  # finished sentences leave the batch
            keep = going.nonzero().squeeze(1)
            if not len(keep):
                break
            active, token = active[keep], token[keep]
            memory, src_mask, state = _select((memory, src_mask, state), keep)
        step = token[:, None]
    tokens = [_strip(row, eos) for row in out.tolist()]
    lengths = [min(len(t) + 1, int(n)) for t, n in zip(tokens, limits.tolist(), strict=True)]
    scores = [s / length_penalty(n, alpha) for s, n in zip(logprob.tolist(), lengths, strict=True)]
    return tokens, scores


@torch.inference_mode()
def beam_search(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    *,
    beam_size: int = 5,
    max_len: int | Tensor | None = None,
    alpha: float = 0.6,
    n_best: int = 1,
    min_len: int = 0,
    bos: int = BOS,
    eos: int = EOS,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the `n_best` hypotheses of each source, best first.

    As in fairseq, a hypothesis ends when EOS ranks among the `beam_size` best candidates.
    A sentence is done once it has `beam_size` ended hypotheses and no live one scores better
    at the present length (Hugging Face's `early_stopping=False`), so `beam_size=1` is exactly
    greedy search; or when it reaches its `max_len` (one int or one per sentence (B,)), where
    its live hypotheses end without EOS. Scores are length-normalized with the GNMT penalty
    `alpha`. EOS is banned before `min_len` tokens.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")
    check_alpha(alpha)
    limits = _limits(max_len, src_mask)
    b, k = src.shape[0], beam_size
    memory = net.encode(src, src_mask)
    state = tree_map(lambda t: t.repeat_interleave(k, 0), net.init_state(memory, src_mask))
    memory, src_mask = memory.repeat_interleave(k, 0), src_mask.repeat_interleave(k, 0)

    scores = torch.full((b, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # all beams start from the same BOS: keep one until they diverge
    history = torch.full((b * k, 1), bos, dtype=torch.long, device=src.device)
    ended = _Ended(b, k, src.device)
    active = torch.arange(b, device=src.device)  # sentences still being searched
    for t in range(int(limits.max())):
        n = len(active)
        rows = torch.arange(n, device=src.device)[:, None] * k
        logits, state = net.decode(history[:, -1:], memory, src_mask, state)
        logp = next_token_logprobs(logits, _banned(t, min_len, bos, eos))  # (N*K, V)
        # The 2K best of a sentence's K×V candidates are among each beam's 2K best: rank
        # K×2K of them, not K×V.
        per_beam = min(2 * k, logp.shape[1])
        beam_logp, beam_token = logp.topk(per_beam, dim=1)  # (N*K, 2K)
        cand_scores, cand = (scores.view(-1, 1) + beam_logp).view(n, -1).topk(2 * k)
        beam, token = cand // per_beam, beam_token.view(n, -1).gather(1, cand)  # (N, 2K)
        is_eos = token == eos
        i, j = is_eos[:, :k].nonzero(as_tuple=True)
        ended.add(active[i], rows[i, 0] + beam[i, j], cand_scores[i, j], history, t + 1, alpha)
        # Each beam adds at most one EOS, so at least k of the 2k candidates go on.
        alive = cand_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1).indices
        scores = cand_scores.gather(1, alive)  # best first
        going = ~ended.settled(active, scores[:, 0] / length_penalty(t + 1, alpha))
        if not going.any():
            break
        index = (rows + beam.gather(1, alive)).view(-1)
        history = torch.cat([history[index], token.gather(1, alive).view(-1, 1)], dim=1)
        state = net.reorder_state(state, index)
        full = going & (limits[active] <= t + 1)
        if full.any():  # out of room: their live hypotheses end here, without EOS
            s = full.nonzero().squeeze(1)
            live = (rows[s] + torch.arange(k, device=src.device)).view(-1)
            ended.add(active[s].repeat_interleave(k), live, scores[s].view(-1), history, t + 1,
                      alpha)  # fmt: skip
            going &= ~full
            if not going.any():
                break
        if not going.all():  # finished sentences leave the batch
            keep = going.nonzero().squeeze(1)
            active, scores = active[keep], scores[keep]
            keep = (rows[keep] + torch.arange(k, device=src.device)).view(-1)
            history, memory, src_mask, state = _select((history, memory, src_mask, state), keep)
    return [e[:n_best] for e in ended.hypotheses]


def _select(tree, rows: Tensor):
    """Keep the given batch rows of every tensor in a (nested) decoding state."""
    return tree_map(lambda x: x.index_select(0, rows), tree)


class _Ended:
    """Each sentence's ended hypotheses, best first, at most k; with, as tensors, how many it
    has and the worst one's score, so that checking every sentence costs no Python per step."""

    def __init__(self, b: int, k: int, device: torch.device) -> None:
        self.k = k
        self.hypotheses: list[list[Hypothesis]] = [[] for _ in range(b)]
        self.count = torch.zeros(b, dtype=torch.long, device=device)
        self.worst = torch.full((b,), float("-inf"), device=device)

    def add(
        self,
        sentence: Tensor,
        rows: Tensor,
        scores: Tensor,
        history: Tensor,
        length: int,
        alpha: float,
    ) -> None:
        """End the hypotheses in `history[rows]` (of `sentence`, log-probabilities `scores`)."""
        if not len(rows):
            return
        lp = length_penalty(length, alpha)
        tokens = history[rows, 1:].tolist()
        for i, toks, score in zip(sentence.tolist(), tokens, scores.tolist(), strict=True):
            if score != float("-inf"):
                ended = self.hypotheses[i]
                ended.append(Hypothesis(toks, score / lp))
                ended.sort(key=lambda h: -h.score)
                del ended[self.k :]
                self.count[i], self.worst[i] = len(ended), ended[-1].score

    def settled(self, sentence: Tensor, best_alive: Tensor) -> Tensor:
        """(N,) True for each sentence that has k ended hypotheses its best live one (scores
        `best_alive` (N,)) does not beat."""
        return (self.count[sentence] == self.k) & (self.worst[sentence] >= best_alive)
