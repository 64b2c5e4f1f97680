"""The fast decoding path: preallocated key/value caches give what recomputing the whole prefix
gives, in every precision; batches give what sentences one by one give, past the caches'
growth; the int8 and bfloat16 compute types stay within a stated chrF of float32."""

import pytest
import torch
from tiny_models import PAIRS, trained

from seqkit.cli import main
from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig, beam_search, greedy
from seqkit.metrics import translation_scores
from seqkit.models.transformer import KVCache
from seqkit.precision import set_compute_type
from seqkit.tokens import BOS, EOS, PAD
from seqkit.translator import Translator

LONG = 45  # steps: past the caches' first two growths (16 and 32 positions)
TRAIN, HELD_OUT = PAIRS[::2], PAIRS[1::2]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Translator, object]:
    tokenizers = Tokenizers.train([s for s, _ in PAIRS], [t for _, t in PAIRS], vocab_size=300)
    translator = trained(tokenizers, TRAIN, steps=150)
    return translator, translator.save_pretrained(tmp_path_factory.mktemp("fast") / "model")


def sources(translator: Translator) -> tuple[torch.Tensor, torch.Tensor]:
    src = pad(translator.tokenizers.encode_source([s for s, _ in HELD_OUT[:12]]))
    return src, src != PAD


@torch.inference_mode()
def recomputed_greedy(net, src: torch.Tensor, mask: torch.Tensor, steps: int) -> list[list[int]]:
    """Greedy search of `steps` tokens (EOS banned) that feeds the whole prefix at every step:
    no cache at all."""
    memory = net.encode(src, mask)
    prefix = torch.full((len(src), 1), BOS)
    for _ in range(steps):
        logits, _ = net.decode(prefix, memory, mask)
        logits[:, -1, [PAD, BOS, EOS]] = float("-inf")
        prefix = torch.cat([prefix, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return prefix[:, 1:].tolist()


@pytest.mark.parametrize("compute_type", ["float32", "bfloat16"])
def test_cached_decoding_equals_recomputation_in_each_precision(model, compute_type):
    """45 forced steps, past the caches' growth. In bfloat16 the cached path's matmuls and the
    full pass's SDPA round differently, and a model forced past its EOS repeats itself among
    near-ties that those roundings break either way, so there each sentence's translation
    must agree: its tokens up to where float32 greedy search ends it. (int8 has no such test:
    it quantizes each input at one scale, one position here and the whole prefix there.)"""
    translator, model_dir = model
    net = Translator.from_pretrained(model_dir, compute_type=compute_type).net
    src, mask = sources(translator)
    cached = greedy(net, src, mask, min_len=LONG, max_len=LONG)
    recomputed = recomputed_greedy(net, src, mask, LONG)
    if compute_type != "float32":
        ends = [len(t) for t in greedy(Translator.from_pretrained(model_dir).net, src, mask)]
        assert sum(ends) >= 50, ends  # enough tokens to compare
        cached = [c[:n] for c, n in zip(cached, ends, strict=True)]
        recomputed = [r[:n] for r, n in zip(recomputed, ends, strict=True)]
    assert cached == recomputed
    assert len({tuple(c) for c in cached}) > 3, "outputs that do not depend on the source"


def test_batched_beam_search_equals_one_by_one_past_cache_growth(model):
    net = model[0].net
    src, mask = sources(model[0])
    options = {"beam_size": 4, "min_len": 20, "max_len": LONG, "n_best": 2}
    together = beam_search(net, src, mask, **options)
    for i in range(len(src)):
        n = int(mask[i].sum())
        alone = beam_search(net, src[i : i + 1, :n], mask[i : i + 1, :n], **options)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in together[i]], abs=1e-4)


@pytest.mark.parametrize(("compute_type", "tolerance"), [("bfloat16", 3.0), ("int8", 3.0)])
def test_compute_types_stay_within_a_stated_chrf_of_float32(model, compute_type, tolerance):
    """On held-out number words (one word each: chrF, as BLEU's 4-grams need 4 words) the
    float32 model scores well above chance; int8 and bfloat16 may lose at most `tolerance`
    (on Multi30k's BLEU: README's performance table)."""
    _, model_dir = model
    texts, refs = [s for s, _ in HELD_OUT], [t for _, t in HELD_OUT]
    beam = DecodingConfig(beam_size=4)
    scores = {}
    for ct in ("float32", compute_type):
        hyps = Translator.from_pretrained(model_dir, compute_type=ct).translate(texts, beam)
        scores[ct] = translation_scores(hyps, refs)["chrf"]
    assert scores["float32"] > 50, scores
    assert scores[compute_type] >= scores["float32"] - tolerance, scores


def test_a_cache_grows_keeping_its_past_and_reorders_only_what_it_holds():
    cache = KVCache.empty(torch.zeros(()), batch=3, heads=2, head_dim=4, capacity=2)
    steps = [torch.randn(3, 2, 1, 4) for _ in range(5)]
    for k in steps:
        cache = cache.append(k, -k)
    assert cache.length == 5 and cache.k.shape[2] >= 5
    torch.testing.assert_close(cache.keys, torch.cat(steps, dim=2))
    torch.testing.assert_close(cache.values, -torch.cat(steps, dim=2))
    with torch.inference_mode():
        picked = cache.index_select(torch.tensor([2, 0]))
    torch.testing.assert_close(picked.keys, cache.keys[[2, 0]])
    assert picked.k.data_ptr() != cache.k.data_ptr()  # its own buffers


def test_reorders_alternate_between_two_buffer_pairs_and_keep_every_past():
    """Beam search's reorder, append, reorder ... writes each reorder into the buffers the cache
    before the last reorder had, so a search allocates no buffers per step; what each cache
    holds is still exactly the rows it picked, and a second reorder of one cache gets new
    buffers rather than its sibling's."""
    cache, past = KVCache.empty(torch.zeros(()), batch=4, heads=2, head_dim=3, capacity=8), []
    buffers = set()
    with torch.inference_mode():
        for _ in range(6):
            k = torch.randn(4, 2, 1, 3)
            cache, past = cache.append(k, 2 * k), [*past, k]
            index = torch.randint(0, 4, (4,))
            cache = cache.index_select(index)
            past = [p[index] for p in past]
            buffers.add(cache.k.data_ptr())
            torch.testing.assert_close(cache.keys, torch.cat(past, dim=2))
            torch.testing.assert_close(cache.values, 2 * torch.cat(past, dim=2))
        assert len(buffers) == 2
        first = cache.index_select(torch.tensor([0, 1, 2, 3]))
        second = cache.index_select(torch.tensor([3, 2, 1, 0]))
        assert len({first.k.data_ptr(), second.k.data_ptr(), cache.k.data_ptr()}) == 3
        torch.testing.assert_close(first.keys, cache.keys)
        torch.testing.assert_close(second.keys, cache.keys.flip(0))


def test_a_converted_translator_refuses_to_save_and_bad_types_are_named(model, tmp_path):
    _, model_dir = model
    int8 = Translator.from_pretrained(model_dir, compute_type="int8")
    with pytest.raises(ValueError, match="does not save"):
        int8.save_pretrained(tmp_path / "x")
    with pytest.raises(ValueError, match="compute_type 'float16'"):
        set_compute_type(int8.net, "float16")


def test_translate_takes_a_compute_type(model, tmp_path, capsys):
    _, model_dir = model
    src = tmp_path / "src.txt"
    src.write_text("forty-two\n\nnine hundred and one\n")
    main(["translate", "--model", str(model_dir), "--src", str(src), "--compute-type", "int8"])
    int8 = Translator.from_pretrained(model_dir, compute_type="int8")
    expected = int8.translate(src.read_text().splitlines())
    assert capsys.readouterr().out.splitlines() == expected
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", "--model", str(model_dir), "--compute-type", "fp8"])
    assert exit_info.value.code == 2
    assert "--compute-type" in capsys.readouterr().err
