"""Sampling and text generation: temperature, top-k and top-p draw from the sets they name and
with the model's probabilities, temperature 0 and top-k 1 are greedy, a seed reproduces, a
source's outputs do not depend on its batch, EOS ends a row; language models continue prompts
(beam 1 == greedy, scores are the model's); `seqkit generate` end to end and its errors."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_decoding import peaked, sources

from seqkit.cli import main
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig, DecodingError, beam_search, greedy, search
from seqkit.generator import PromptedLM, TextGenerator
from seqkit.models import RNNLMConfig, TransformerConfig, TransformerLMConfig, build_model
from seqkit.sampling import SamplingConfig, filter_logprobs, sample
from seqkit.tokens import BOS, EOS, PAD
from seqkit.translator import Translator, one_line

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCE = "the cat sat on the mat."
WORDS = [SENTENCE, "a dog ran far away", "twelve", "seven hundred", "forty-two"] * 10
LMS = {
    "transformer": TransformerLMConfig(d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0,
                                       max_positions=64),
    "gru": RNNLMConfig(cell="gru", embed_dim=16, hidden_size=16, n_layers=1, dropout=0.0),
    "windowed": TransformerLMConfig(d_model=16, n_heads=2, n_layers=1, d_ff=32, dropout=0.0,
                                    max_positions=8, context=3),
}  # fmt: skip


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train(WORDS, [], vocab_size=300)


def lm(tokenizers: Tokenizers, family: str, seed: int = 0, **overrides) -> TextGenerator:
    """An untrained language model with sharpened outputs: varied, confident predictions."""
    torch.manual_seed(seed)
    config = replace(LMS[family], vocab_size=tokenizers.tgt_vocab_size, tie_embeddings=False,
                     **overrides)  # fmt: skip
    net = build_model(config).eval()
    with torch.no_grad():
        net.output.weight.mul_(6.0)
    return TextGenerator(net, tokenizers)


def translator(tokenizers: Tokenizers) -> Translator:
    torch.manual_seed(0)
    size = tokenizers.tgt_vocab_size
    config = TransformerConfig(src_vocab_size=size, tgt_vocab_size=size, d_model=16, n_heads=2,
                               n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=0.0,
                               max_positions=32)  # fmt: skip
    return Translator(build_model(config).eval(), tokenizers, DecodingConfig(beam_size=2))


def prompts(generator: TextGenerator, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of one token count as the generator reads them: EOS, then their tokens."""
    ids = [[EOS, *x[:-1]] for x in generator.tokenizers.encode_target(texts)]
    src = torch.tensor(ids)
    return src, src != PAD


class Fixed:
    """A stub decoder whose next token has the probabilities `probs` (V,) at every step."""

    def __init__(self, probs: list[float]) -> None:
        self.logits = torch.tensor(probs).log()

    def encode(self, src, src_mask):
        return src

    def init_state(self, memory, src_mask):
        return torch.zeros(len(memory), 1)

    def decode(self, tgt, memory, src_mask, state):
        return self.logits.expand(len(tgt), 1, -1).clone(), state

    def reorder_state(self, state, index):
        return state[index]


class EndsAt(Fixed):
    """A stub whose source b draws among tokens 3.. (EOS impossible) until step src[b, 0],
    where EOS is certain."""

    def __init__(self) -> None:
        super().__init__([0.0, 0.0, 0.0, 0.2, 0.3, 0.5])

    def decode(self, tgt, memory, src_mask, state):
        logits = self.logits.expand(len(tgt), 1, -1).clone()
        logits[state[:, 0] == memory[:, 0].float()] = torch.tensor([0.0, 0, 1, 0, 0, 0]).log()
        return logits, state + 1


# -- settings and filters --------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [("temperature", -1.0), ("temperature", math.nan), ("temperature", math.inf), ("top_k", -1),
     ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan), ("num_samples", 0), ("max_len", 0),
     ("min_len", -1)],
)  # fmt: skip
def test_a_setting_out_of_range_is_refused_by_name(field, value):
    with pytest.raises(DecodingError) as info:
        SamplingConfig(**{field: value})
    assert info.value.field == field
    with pytest.raises(DecodingError, match="min_len=5 exceeds max_len=3"):
        SamplingConfig(min_len=5, max_len=3)


def test_top_k_keeps_the_k_most_probable_and_top_p_the_smallest_set_reaching_p():
    logp = torch.randn(200, 30, generator=torch.Generator().manual_seed(0)).mul(2).log_softmax(-1)
    for k in (1, 3, 29):
        kept = filter_logprobs(logp, top_k=k).isfinite()
        expected = torch.zeros_like(kept).scatter(1, logp.topk(k, dim=1).indices, True)
        assert torch.equal(kept, expected)
    for p in (0.05, 0.5, 0.9, 0.999):
        filtered = filter_logprobs(logp, top_p=p)
        kept, probs = filtered.isfinite(), logp.exp()
        mass = (probs * kept).sum(1)
        least = probs.masked_fill(~kept, 2.0).min(1).values  # the least probable kept token
        assert (mass >= p - 1e-6).all() and (mass - least < p).all()  # reaches p; one less won't
        assert (least >= probs.masked_fill(kept, -1.0).max(1).values).all()  # the most probable
        torch.testing.assert_close(filtered.exp(), (probs * kept) / mass[:, None])
    # Temperature first, then top-k, then top-p: top-k renormalizes what top-p sees.
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    assert filter_logprobs(probs.log(), top_p=0.75).isfinite().sum() == 3
    both = filter_logprobs(probs.log(), top_k=3, top_p=0.75).exp()
    torch.testing.assert_close(both, torch.tensor([[4 / 7, 3 / 7, 0.0, 0.0]]))
    tempered = filter_logprobs(probs.log(), temperature=0.5).exp()
    torch.testing.assert_close(tempered, probs.pow(2) / probs.pow(2).sum())


# -- sampling --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 3, 7])
def test_temperature_zero_top_k_one_and_a_tiny_nucleus_are_greedy(seed, tokenizers):
    net, (src, src_mask) = peaked(seed), sources(seed)
    expected = greedy(net, src, src_mask, max_len=12)
    generator = lm(tokenizers, "transformer", seed)
    lm_src, lm_mask = prompts(generator, ["twelve", "forty"])
    lm_expected = greedy(PromptedLM(generator.net), lm_src, lm_mask, max_len=10)
    for options in ({"temperature": 0.0}, {"top_k": 1}, {"top_p": 1e-4}):
        hyps = sample(net, src, src_mask, max_len=12, num_samples=2, **options)
        assert [[h.tokens for h in row] for row in hyps] == [[e, e] for e in expected]
        hyps = sample(PromptedLM(generator.net), lm_src, lm_mask, max_len=10, **options)
        assert [row[0].tokens for row in hyps] == lm_expected


def next_logprobs(net, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """The LM's log-probabilities (len(tokens) + 1, V) of each next token after the prompt,
    PAD and BOS banned as decoding bans them, recomputed in one teacher-forced pass."""
    with torch.no_grad():
        logits = net(torch.tensor([[*prompt, *tokens]]))[0, len(prompt) - 1 :]
    return logits.float().log_softmax(-1).index_fill(1, torch.tensor([PAD, BOS]), -math.inf)


@pytest.mark.parametrize("family", ["transformer", "gru"])
def test_top_k_and_top_p_draw_only_from_their_sets_recomputed(family, tokenizers):
    generator = lm(tokenizers, family, seed=1)
    src, mask = prompts(generator, ["twelve"])
    for options, allowed in (
        ({"top_k": 3}, lambda logp: logp.topk(3).indices),
        ({"top_p": 0.6}, lambda logp: filter_logprobs(logp[None], top_p=0.6)[0].isfinite()
         .nonzero()[:, 0]),
    ):  # fmt: skip
        hyps = sample(PromptedLM(generator.net), src, mask, max_len=8, num_samples=30, seed=0,
                      **options)[0]  # fmt: skip
        for h in hyps:
            logp = next_logprobs(generator.net, src[0].tolist(), h.tokens)
            drawn = [*h.tokens, EOS] if len(h.tokens) < 8 else h.tokens
            for step, token in enumerate(drawn):
                assert token in allowed(logp[step]).tolist()
            # The score is the model's own log-probability of the sample (temperature 1).
            chosen = logp[torch.arange(len(drawn)), drawn].sum()
            assert h.score == pytest.approx(float(chosen), abs=1e-4)
        assert len({tuple(h.tokens) for h in hyps}) > 1


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    seen = expected > 0
    assert counts[~seen].sum() == 0  # nothing outside the distribution's support
    return float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum())


def test_samples_follow_the_models_distribution_after_filtering():
    probs = torch.tensor([0.0, 0.0, 0.08, 0.4, 0.22, 0.15, 0.1, 0.05])  # PAD, BOS, EOS, ...
    net, n = Fixed(probs.tolist()), 4000
    src = torch.tensor([[5, 6]])
    filtered = {"temperature": 0.5, "top_k": 4, "top_p": 0.8}
    for options, expected in (
        ({}, probs),
        (filtered, tempered_top_k_nucleus(probs, **filtered)),
        ({"temperature": 2.0}, probs.sqrt() / probs.sqrt().sum()),
    ):
        hyps = sample(net, src, src != PAD, max_len=1, num_samples=n, seed=0, **options)[0]
        first = torch.tensor([h.tokens[0] if h.tokens else EOS for h in hyps])
        counts = torch.bincount(first, minlength=len(probs)).double()
        # 99.9 % quantile of chi-square with (support - 1) <= 5 degrees of freedom: 20.5.
        assert chi_square(counts, expected.double()) < 20.5, (options, counts / n)


def tempered_top_k_nucleus(
    probs: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """The filtered distribution, by hand: p^(1/t) renormalized, its k best, their nucleus."""
    q = [x ** (1 / temperature) for x in probs.tolist()]
    order = sorted(range(len(q)), key=lambda i: -q[i])[:top_k]
    total = sum(q[i] for i in order)
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += q[i] / total
    out = torch.zeros_like(probs)
    out[kept] = torch.tensor([q[i] for i in kept]) / sum(q[i] for i in kept)
    return out


def test_eos_ends_each_row_at_its_own_step_and_the_limit_ends_the_rest():
    src = torch.tensor([[3, 9], [1, 9], [6, 9], [0, 9]])
    hyps = sample(EndsAt(), src, src != PAD, max_len=torch.tensor([9, 9, 4, 9]), num_samples=3,
                  seed=1)  # fmt: skip
    lengths = [[len(h.tokens) for h in row] for row in hyps]
    assert lengths == [[3] * 3, [1] * 3, [4] * 3, [0] * 3]  # row 2 stops at its limit of 4
    assert all(EOS not in h.tokens and PAD not in h.tokens for row in hyps for h in row)
    assert hyps[0][0].tokens != hyps[0][1].tokens or hyps[0][1].tokens != hyps[0][2].tokens


def test_a_seed_draws_the_same_samples_and_another_seed_others(tokenizers):
    generator = lm(tokenizers, "gru")
    texts = ["twelve", "a dog", ""]

    def draw(**options):
        config = SamplingConfig(num_samples=3, max_len=8, **options)
        return [[c.text for c in row] for row in generator.generate(texts, config)]

    first = draw(seed=1)
    assert draw(seed=1) == first and draw(seed=2) != first
    assert all(len(set(row)) > 1 for row in first)  # a prompt's samples differ
    torch.manual_seed(5)
    unseeded = draw()
    torch.manual_seed(5)
    assert draw() == unseeded  # without a seed: torch's global generator


# -- language models ------------------------------------------------------------------------
@pytest.mark.parametrize("family", list(LMS))
def test_lm_beam_one_is_greedy_and_beam_scores_are_the_lms_log_probabilities(family, tokenizers):
    generator = lm(tokenizers, family, seed=2)
    src, mask = prompts(generator, ["seven hundred", "a dog"])
    decoder = PromptedLM(generator.net)
    expected = greedy(decoder, src, mask, max_len=6)
    assert [h[0].tokens for h in beam_search(decoder, src, mask, beam_size=1, max_len=6)] == (
        expected
    )
    searched = beam_search(decoder, src, mask, beam_size=3, n_best=3, max_len=6, alpha=0.0)
    for prompt, nbest in zip(src.tolist(), searched, strict=True):
        assert len(nbest) == 3
        for h in nbest:
            logp = next_logprobs(generator.net, prompt, h.tokens)
            drawn = [*h.tokens, EOS] if len(h.tokens) < 6 else h.tokens
            chosen = logp[torch.arange(len(drawn)), drawn].sum()
            assert h.score == pytest.approx(float(chosen), abs=1e-4)


@pytest.mark.parametrize("family", list(LMS))
@pytest.mark.parametrize(
    "decoding",
    [DecodingConfig(beam_size=1, max_len=6), DecodingConfig(beam_size=3, n_best=2, max_len=6),
     SamplingConfig(num_samples=2, top_p=0.9, max_len=6, seed=4)],
    ids=["greedy", "beam", "sampling"],
)  # fmt: skip
def test_a_prompts_continuations_do_not_depend_on_the_other_prompts(family, decoding, tokenizers):
    generator = lm(tokenizers, family, seed=3)
    texts = ["seven hundred", "", "twelve", "a dog ran far away", "twelve", "forty"]
    together = generator.generate(texts, decoding, batch_size=2)
    alone = [generator.generate([t], decoding)[0] for t in texts]
    assert [[c.text for c in row] for row in together] == [[c.text for c in row] for row in alone]
    for row, row_alone in zip(together, alone, strict=True):
        assert [c.score for c in row] == pytest.approx([c.score for c in row_alone], abs=1e-5)
    assert len(together[1]) == decoding.num_returned


def test_a_transformer_lm_stops_where_its_positions_end(tokenizers):
    generator = lm(tokenizers, "transformer", max_positions=12)
    forced = SamplingConfig(min_len=40, max_len=40, seed=0)  # EOS banned: only the cap stops it
    src, mask = prompts(generator, ["twelve"])
    with pytest.raises(ValueError, match="exceeds max_positions=12"):
        search(PromptedLM(generator.net), src, mask, forced)
    (continuation,) = generator.generate(["twelve"], forced)[0]
    assert not continuation.ended
    with pytest.raises(ValueError, match=r"prompt 1: .* exceed max_positions=12"):
        generator.generate(["", "seven hundred and seventy-seven thousand, five hundred"])
    windowed = lm(tokenizers, "windowed")  # max_positions=8, context=3: no cap
    assert not windowed.generate(["twelve"], forced)[0][0].ended


# -- translation models ---------------------------------------------------------------------
def test_a_translator_samples_from_its_decoder(tokenizers):
    model = translator(tokenizers)
    lines = ["twelve", "", "seven hundred", "a dog ran far away"]
    config = SamplingConfig(num_samples=3, seed=0, max_len=8)
    stream = list(model.translate_stream(lines, config, max_tokens=12))
    assert [len(t.hypotheses) for t in stream] == [3, 3, 3, 3]
    assert [h.text for h in stream[1].hypotheses] == ["", "", ""]
    assert len({h.text for h in stream[0].hypotheses}) > 1
    alone = [next(model.translate_stream([line], config)) for line in lines]
    assert [[h.text for h in t.hypotheses] for t in alone] == [
        [h.text for h in t.hypotheses] for t in stream
    ]
    for one, batched in zip(alone, stream, strict=True):
        assert [h.score for h in one.hypotheses] == pytest.approx(
            [h.score for h in batched.hypotheses], abs=1e-5
        )
    assert model.translate(lines, config) == [t.text for t in stream]
    greedy_texts = model.translate(lines, DecodingConfig(beam_size=1, max_len=8))
    assert model.translate(lines, replace(config, temperature=0.0)) == greedy_texts


# -- seqkit generate ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory, tokenizers):
    """A tiny GRU language model trained on one sentence, saved as a model directory."""
    torch.manual_seed(0)
    config = RNNLMConfig(vocab_size=tokenizers.tgt_vocab_size, cell="gru", embed_dim=32,
                         hidden_size=32, n_layers=1, dropout=0.0)  # fmt: skip
    net = build_model(config)
    ids = [EOS, *tokenizers.encode_target([SENTENCE])[0][:-1]]
    stream = torch.tensor([[*ids * 6, EOS]])  # EOS s EOS s ... EOS, as training streams read
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(60):
        logits = net(stream[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), stream[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01
    return TextGenerator(net.eval(), tokenizers).save_pretrained(
        tmp_path_factory.mktemp("lm") / "model"
    )


def generate(capsys, *args: str) -> list[str]:
    main(["generate", *args])
    return capsys.readouterr().out.splitlines()


def test_generate_continues_prompts_with_a_trained_language_model(lm_dir, capsys):
    model = ["--model", str(lm_dir)]
    assert generate(capsys, *model, "--prompt", "the cat", "--greedy") == [" sat on the mat."]
    out = generate(capsys, *model, "--prompt", "the cat", "--prompt", "", "--beam-size", "3")
    assert out == [" sat on the mat.", SENTENCE]
    out = generate(capsys, *model, "--prompt", "the cat sat", "--top-k", "1", "--num-samples", "2")
    assert [line.rsplit(" ||| ", 1)[0] for line in out] == ["0 |||  on the mat."] * 2
    assert generate(capsys, *model, "--prompt", "the", "--greedy", "--max-new-tokens", "1") == [
        " cat"
    ]


def test_generate_writes_what_the_python_api_gives(lm_dir, tmp_path, tokenizers, capsys):
    (tmp_path / "prompts.txt").write_text("the cat\n\nthe mat\n", encoding="utf-8")
    args = ["--input", str(tmp_path / "prompts.txt"), "--num-samples", "3", "--seed", "7",
            "--temperature", "1.5", "--top-p", "0.95", "--max-new-tokens", "9"]  # fmt: skip
    config = SamplingConfig(temperature=1.5, top_p=0.95, num_samples=3, max_len=9, seed=7)
    expected = TextGenerator.from_pretrained(lm_dir).generate(["the cat", "", "the mat"], config)
    records = [json.loads(line) for line in generate(capsys, "--model", str(lm_dir), *args,
                                                     "--format", "jsonl")]  # fmt: skip
    assert [(r["index"], r["sample"], r["text"]) for r in records] == [
        (i, s, c.text) for i, row in enumerate(expected) for s, c in enumerate(row)
    ]
    scores = [c.score for row in expected for c in row]
    assert [r["score"] for r in records] == pytest.approx(scores, abs=1e-6)
    # A translation model: each line translated by sampling.
    model = translator(tokenizers)
    model.save_pretrained(tmp_path / "translator")
    lines = generate(capsys, "--model", str(tmp_path / "translator"), *args)
    stream = model.translate_stream(["the cat", "", "the mat"], config)
    assert lines == [f"{i} ||| {one_line(h.text)} ||| {h.score:.4f}" for i, t in enumerate(stream)
                     for h in t.hypotheses]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [(["--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
     (["--temperature", "-1"], "argument --temperature: must be finite and >= 0, got -1.0"),
     (["--num-samples", "0"], "argument --num-samples: must be at least 1, got 0"),
     (["--top-k", "-2"], "argument --top-k: must be >= 0 (0 keeps every token), got -2"),
     (["--max-new-tokens", "0"], "argument --max-new-tokens: must be at least 1, got 0"),
     (["--beam-size", "0"], "argument --beam-size: must be at least 1, got 0"),
     (["--greedy", "--top-k", "5"], "argument --top-k: sets sampling: not with --greedy"),
     (["--greedy", "--beam-size", "2"], "argument --greedy: is beam search of width 1"),
     (["--input", "x.txt"], "argument --prompt: give prompts or --input, not both")],
)  # fmt: skip
def test_a_bad_option_is_one_line_naming_it(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", "/nowhere", "--prompt", "a", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"seqkit generate: error: {message}")


def test_a_model_that_cannot_generate_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--model", str(tmp_path / "nowhere"), "--prompt", "a"])
    assert "config.json: not found" in str(info.value) and "\n" not in str(info.value)


def test_help_lists_generate_and_its_options(capsys):
    main(["--help"])
    assert "  generate " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--top-p", "--top-k", "--temperature", "--num-samples"))
