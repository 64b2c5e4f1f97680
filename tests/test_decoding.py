"""Greedy and beam search: beam 1 is greedy, scores are log-probabilities, batching is neutral."""

import math

import pytest
import torch

from seqkit.decoding import (
    MAX_ALPHA,
    DecodingConfig,
    DecodingError,
    beam_search,
    greedy,
    length_penalty,
    search,
)
from seqkit.models import Transformer, TransformerConfig

PAD, BOS, EOS = 0, 1, 2


class EosBiased(Transformer):
    """A Transformer whose EOS logit is raised, so that untrained hypotheses end at varied
    lengths (and beam search is tested on ended hypotheses, not only on the length cap)."""

    eos_bias = 5.0

    def decode(self, *args, **kwargs):
        logits, state = super().decode(*args, **kwargs)
        logits[..., EOS] += self.eos_bias
        return logits, state


def peaked(seed: int) -> Transformer:
    """An untrained model with large output weights: confident, varied predictions."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        src_vocab_size=12,
        tgt_vocab_size=12,
        d_model=32,
        n_heads=4,
        n_encoder_layers=1,
        n_decoder_layers=2,
        d_ff=64,
        dropout=0.0,
        tie_embeddings=False,
    )
    net = EosBiased(config).eval()
    with torch.no_grad():
        net.output.weight.mul_(8.0)
    return net


SEEDS = [0, 2, 3, 5, 7]  # hypotheses that end early, and (but for 5) some that hit the cap


def sources(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, 12, (4, 6), generator=g)
    src[0, 3:] = PAD
    src[2, 5:] = PAD
    return src, src != PAD


def sequence_logprob(net: Transformer, src: torch.Tensor, tokens: list[int], ended: bool) -> float:
    tgt = torch.tensor([[BOS, *tokens]])
    out = torch.tensor([[*tokens, EOS]]) if ended else torch.tensor([tokens])
    logits = net(src[None], tgt[:, : out.shape[1]])
    return logits.log_softmax(-1).gather(2, out[..., None]).sum().item()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_size_one_is_greedy(seed, alpha):
    net = peaked(seed)
    src, mask = sources(seed)
    expected = greedy(net, src, mask, max_len=9)
    assert any(len(tokens) < 9 for tokens in expected)  # EOS reached, not only the length cap
    hyps = beam_search(net, src, mask, beam_size=1, max_len=9, alpha=alpha)
    assert [h[0].tokens for h in hyps] == expected


@pytest.mark.parametrize("seed", SEEDS)
def test_beam_scores_are_length_normalized_log_probabilities(seed):
    net = peaked(seed)
    src, mask = sources(seed)
    max_len = 8
    hyps = beam_search(net, src, mask, beam_size=4, n_best=4, max_len=max_len, alpha=0.6)
    for i, nbest in enumerate(hyps):
        assert len(nbest) == 4
        assert [h.score for h in nbest] == sorted((h.score for h in nbest), reverse=True)
        for h in nbest:
            ended = len(h.tokens) < max_len
            length = len(h.tokens) + 1 if ended else max_len
            logp = sequence_logprob(net, src[i, : int(mask[i].sum())], h.tokens, ended)
            assert h.score * length_penalty(length, 0.6) == pytest.approx(logp, abs=1e-4)
            assert EOS not in h.tokens and BOS not in h.tokens


@pytest.mark.parametrize("seed", SEEDS)
def test_a_beam_wider_than_the_search_space_finds_the_best_translation(seed):
    net = peaked(seed)
    src, mask = sources(seed)
    words = range(3, 12)  # every token but PAD, BOS, EOS
    ended = [[]] + [[a] for a in words]  # [] + EOS, [a] + EOS
    capped = [[a, b] for a in words for b in words]  # max_len=2 reached without EOS
    hyps = beam_search(net, src, mask, beam_size=200, n_best=1, max_len=2, alpha=0.0)
    for i, (best,) in enumerate(hyps):
        s = src[i, : int(mask[i].sum())]
        scores = [(sequence_logprob(net, s, t, True), t) for t in ended]
        scores += [(sequence_logprob(net, s, t, False), t) for t in capped]
        top_score, top_tokens = max(scores)
        assert best.tokens == top_tokens
        assert best.score == pytest.approx(top_score, abs=1e-4)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_batching_does_not_change_results(search):
    net = peaked(5)
    src, mask = sources(5)

    def run(s, m):
        if search == "greedy":
            return greedy(net, s, m, max_len=9)
        return [h[0] for h in beam_search(net, s, m, beam_size=3, max_len=9)]

    together = run(src, mask)
    for i in range(len(src)):
        n = int(mask[i].sum())
        alone = run(src[i : i + 1, :n], mask[i : i + 1, :n])[0]
        if search == "greedy":
            assert alone == together[i]
        else:
            assert alone.tokens == together[i].tokens
            assert alone.score == pytest.approx(together[i].score, abs=1e-4)


def test_max_len_and_n_best_checks():
    net = peaked(0)
    src, mask = sources(0)
    assert all(len(t) <= 3 for t in greedy(net, src, mask, max_len=3))
    assert all(len(h[0].tokens) <= 3 for h in beam_search(net, src, mask, beam_size=2, max_len=3))
    with pytest.raises(ValueError, match="n_best"):
        beam_search(net, src, mask, beam_size=2, n_best=3)


class Scripted:
    """A decoder whose next-token probabilities depend only on the prefix, read from a table;
    prefixes not in the table end (EOS)."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], vocab: int) -> None:
        self.table, self.vocab = table, vocab

    def encode(self, src, src_mask):
        return src_mask[..., None].float()

    def init_state(self, memory, src_mask):
        return torch.zeros(len(memory), 0, dtype=torch.long)  # the prefix so far

    def decode(self, tgt, memory, src_mask, state):
        state = torch.cat([state, tgt], 1)
        probs = torch.full((len(state), self.vocab), 1e-9)
        for row, prefix in zip(probs, state[:, 1:].tolist(), strict=True):  # after BOS
            for token, p in self.table.get(tuple(prefix), {EOS: 1.0}).items():
                row[token] = p
        return probs.log()[:, None], state

    def reorder_state(self, state, index):
        return state.index_select(0, index)


def test_the_largest_length_penalty_exponent_decodes_and_a_larger_one_is_refused_by_name():
    net, (src, mask) = peaked(0), sources(0)
    assert length_penalty(10**6, MAX_ALPHA) < math.inf
    for beam in (1, 3):  # greedy divides by the penalty too
        hyps = search(net, src, mask, DecodingConfig(beam_size=beam, alpha=MAX_ALPHA, max_len=9))
        assert all(math.isfinite(h[0].score) for h in hyps)
    with pytest.raises(DecodingError, match=r"decoding\.alpha: must be between 0 and 50"):
        beam_search(net, src, mask, beam_size=3, max_len=9, alpha=1000.0)  # overflowed before


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_goes_on_while_a_live_hypothesis_beats_the_ended_ones(alpha):
    # Two poor hypotheses end (B, then A D) while the likely one, A C E, is still going:
    # stopping at k ended hypotheses would return B.
    A, B, C, D, E = 3, 4, 5, 6, 7
    net = Scripted({(): {A: 0.9, B: 0.1}, (A,): {C: 0.95, D: 0.05}, (A, C): {E: 1.0}}, vocab=8)
    src = torch.ones(1, 2, dtype=torch.long)
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert greedy(net, src, mask, max_len=6) == [[A, C, E]]
    (hyps,) = beam_search(net, src, mask, beam_size=2, n_best=2, max_len=6, alpha=alpha)
    assert [h.tokens for h in hyps] == [[A, C, E], [B]]
    assert hyps[0].score == pytest.approx(math.log(0.9 * 0.95) / length_penalty(4, alpha), abs=1e-5)


@pytest.mark.parametrize("search", ["greedy", "beam"])
@pytest.mark.parametrize("limits", [None, [2, 5, 3, 7]])
def test_each_sentence_has_its_own_length_limit(search, limits):
    """With the default limit (1.5 × the source + 10) or one limit per sentence, a sentence
    decodes as it would alone: its limit never comes from a longer batch-mate."""
    net = peaked(3)
    net.eos_bias = -100.0  # never ends: every output runs to its limit
    src, mask = sources(3)

    def run(s, m, max_len):
        if search == "greedy":
            return greedy(net, s, m, max_len=max_len)
        return [h[0].tokens for h in beam_search(net, s, m, beam_size=3, max_len=max_len)]

    together = run(src, mask, None if limits is None else torch.tensor(limits))
    for i in range(len(src)):
        n = int(mask[i].sum())
        limit = int(n * 1.5) + 10 if limits is None else limits[i]
        assert len(together[i]) == limit
        alone = run(src[i : i + 1, :n], mask[i : i + 1, :n], None if limits is None else limit)
        assert alone[0] == together[i]
