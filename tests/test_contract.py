"""Contracts every registered model keeps (timm's test_models.py): shapes, finite values, a
gradient for every parameter, padding and future targets that change nothing, save -> load,
cached decoding == full recomputation, beam 1 == greedy.

The cases come from the registry: every config class of `ModelConfig` and `ImageModelConfig`,
in variants that cover every pair of values of their `Literal` and bool fields (all-pairs
testing), so a model or an option added later is checked without anyone listing it here.
Seq2seq models are checked reading token ids and reading images.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from seqkit.decoding import beam_search, greedy
from seqkit.models import ImageModelConfig, ImageSource, ModelConfig, build_model
from seqkit.tokens import BOS, EOS, PAD

pytestmark = pytest.mark.usefixtures("one_thread")

# Tiny sizes for the fields that have them; a field not named here keeps its default.
TINY = dict(d_model=16, n_heads=2, d_ff=32, n_encoder_layers=2, n_decoder_layers=2, n_layers=2,
            hidden_size=12, embed_dim=8, max_positions=32, patch_size=4, src_vocab_size=23,
            tgt_vocab_size=19, image_size=(8, 12), channels=2, num_classes=5)  # fmt: skip
# Sizes as different as possible catch one size used for another; options that need equal
# sizes (shared or tied embeddings) get these instead.
EQUAL = dict(src_vocab_size=20, tgt_vocab_size=20, embed_dim=12)
IMAGES = ImageSource(4, 1, 8, [0.5], [0.25])
SOURCES = {"tokens": None, "images": IMAGES}
B, T = 3, 6  # batch, target length


def choices(cls: type) -> dict[str, tuple]:
    """The values of every `Literal` and bool field of a config class, its default first."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        values = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        values = (False, True) if hint is bool else values
        if len(values) > 1:
            out[f.name] = (f.default, *(v for v in values if v != f.default))
    return out


def configure(cls: type, options: dict):
    """The tiny config of `cls` with `options`, or None when the config refuses them."""
    fixed = {f.name: 0.0 for f in dataclasses.fields(cls) if f.name.endswith("dropout")}
    names = {f.name for f in dataclasses.fields(cls)}
    for sizes in (TINY, TINY | EQUAL):
        try:
            return cls(**{k: v for k, v in (sizes | fixed | options).items() if k in names})
        except ValueError:
            continue
    return None


def builds(config, source: ImageSource | None) -> bool:
    """Whether a model takes this source (e.g. shared embeddings need token ids)."""
    if source is None:
        return True
    try:
        build_model(config, source)
    except ValueError:
        return False
    return True


def all_pairs(cls: type, source: ImageSource | None) -> list:
    """Configs of `cls` that together hold every value of every option, and every pair of
    values of two options, that some valid config (taking `source`) holds; chosen greedily."""
    options = choices(cls)
    valid = []
    for values in itertools.product(*options.values()):
        config = configure(cls, dict(zip(options, values, strict=True)))
        if config is not None and builds(config, source):
            valid.append(config)

    def covers(config) -> set:
        items = [(name, getattr(config, name)) for name in options]
        return {*((item,) for item in items), *itertools.combinations(items, 2)}

    todo = set().union(*map(covers, valid))
    chosen = []
    while todo:
        best = max(valid, key=lambda c: len(covers(c) & todo))
        chosen.append(best)
        todo -= covers(best)
    return chosen or valid[:1]


def case_id(config, source: str) -> str:
    changed = [f"{k}={getattr(config, k)}" for k, v in choices(type(config)).items()
               if getattr(config, k) != v[0]]  # fmt: skip
    return f"{type(config).__name__}-{source}-{','.join(changed) or 'defaults'}"


SEQ2SEQ = [
    pytest.param(config, source, id=case_id(config, name))
    for cls in typing.get_args(ModelConfig)
    for name, source in SOURCES.items()
    for config in all_pairs(cls, source)
]
CLASSIFIERS = [
    pytest.param(config, id=case_id(config, "images"))
    for cls in typing.get_args(ImageModelConfig)
    for config in all_pairs(cls, None)
]


def build(config, source: ImageSource | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config, source).eval()


def seq2seq_batch(config, source: ImageSource | None):
    """A padded batch: sources (B, S) or (B, S, P), their mask (B, S), targets (B, T) with
    PAD after each one's length; then each sentence's unpadded source and mask, (1, S_i), and
    each target's length. Images are padded with noise, which only the mask can hide."""
    g = torch.Generator().manual_seed(1)
    tgt_lengths = [T, 3, 5]
    tgt = torch.randint(4, config.tgt_vocab_size, (B, T), generator=g)
    for i, n in enumerate(tgt_lengths):
        tgt[i, n:] = PAD
    if source is None:
        lengths = [7, 4, 2]
        src = torch.randint(4, config.src_vocab_size, (B, 8), generator=g)
        alone = [src[i : i + 1, :n] for i, n in enumerate(lengths)]
        src_mask = torch.arange(8)[None] < torch.tensor(lengths)[:, None]
        src = src.masked_fill(~src_mask, PAD)
        return src, src_mask, tgt, [(s, s != PAD) for s in alone], tgt_lengths
    widths = torch.tensor([24, 12, 8])
    images = torch.rand(B, source.channels, source.height, 28, generator=g)
    src, src_mask = source.cut(images, widths)
    alone = [source.cut(images[i : i + 1, ..., :w]) for i, w in enumerate(widths.tolist())]
    return src, src_mask, tgt, alone, tgt_lengths


def assert_every_parameter_learns(net: torch.nn.Module) -> None:
    """A finite gradient, somewhere non-zero, reached every parameter (as a whole: rows such
    as an embedding's padding row may rightly get none)."""
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"no gradient reaches {dead}"
    bad = [n for n, p in net.named_parameters() if not p.grad.isfinite().all()]
    assert not bad, f"non-finite gradient in {bad}"


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
def test_seq2seq_shape_finite_and_gradient_reaches_every_parameter(config, source):
    net = build(config, source).train()  # dropout is 0: train mode only takes its own paths
    src, src_mask, tgt, _, _ = seq2seq_batch(config, source)
    logits = net(src, tgt, src_mask)
    assert logits.shape == (B, T, config.tgt_vocab_size)
    assert logits.isfinite().all()
    gold = torch.randint(
        4, config.tgt_vocab_size, (B, T), generator=torch.Generator().manual_seed(2)
    )
    F.cross_entropy(logits.flatten(0, 1), gold.flatten()).backward()
    assert_every_parameter_learns(net)


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
@torch.no_grad()
def test_seq2seq_padding_changes_nothing(config, source):
    """Each sentence's logits alone equal its logits in a batch padded (source and target) to
    longer ones."""
    net = build(config, source)
    src, src_mask, tgt, alone, tgt_lengths = seq2seq_batch(config, source)
    assert not src_mask[1:].all(), "the batch must hold padding"
    together = net(src, tgt, src_mask)
    for i, ((src_i, mask_i), n) in enumerate(zip(alone, tgt_lengths, strict=True)):
        assert src_i.shape[1] < src.shape[1] and mask_i.all()
        expected = net(src_i, tgt[i : i + 1, :n], mask_i)[0]
        torch.testing.assert_close(together[i, :n], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
@torch.no_grad()
def test_seq2seq_future_targets_change_no_earlier_logits(config, source):
    net = build(config, source)
    src, src_mask, tgt, _, _ = seq2seq_batch(config, source)
    changed = tgt.clone()
    changed[:, 3:] = (tgt[:, 3:] - 3) % (config.tgt_vocab_size - 4) + 4  # another real token
    assert (changed[:, 3:] != tgt[:, 3:]).all()
    before, after = net(src, tgt, src_mask), net(src, changed, src_mask)
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(after[:, 3], before[:, 3]), "the input token must matter"


def save_and_load(net: torch.nn.Module, fresh: torch.nn.Module, path) -> None:
    save_model(net, str(path))
    missing, unexpected = load_model(fresh, str(path))
    assert not missing and not unexpected


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
@torch.no_grad()
def test_seq2seq_save_then_load_gives_identical_outputs(config, source, tmp_path):
    net, fresh = build(config, source, seed=0), build(config, source, seed=1)
    src, src_mask, tgt, _, _ = seq2seq_batch(config, source)
    expected = net(src, tgt, src_mask)
    assert not torch.equal(fresh(src, tgt, src_mask), expected), "seeds must give other weights"
    save_and_load(net, fresh, tmp_path / "model.safetensors")
    assert torch.equal(fresh(src, tgt, src_mask), expected)


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
@pytest.mark.parametrize("chunks", [[1] * T, [1, 3, 2]], ids=["one-by-one", "chunks"])
@torch.no_grad()
def test_seq2seq_cached_decoding_equals_full_recomputation(config, source, chunks):
    net = build(config, source)
    src, src_mask, tgt, _, _ = seq2seq_batch(config, source)
    memory = net.encode(src, src_mask)
    full, _ = net.decode(tgt, memory, src_mask)
    state = net.init_state(memory, src_mask)
    steps = []
    for piece in tgt.split(chunks, dim=1):
        logits, state = net.decode(piece, memory, src_mask, state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, net(src, tgt, src_mask), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
@torch.no_grad()
def test_seq2seq_reorder_state_follows_the_rows_beam_search_keeps(config, source):
    """Reordering a state between hypotheses of one sentence, then decoding on, equals
    decoding the reordered prefixes from scratch."""
    net = build(config, source)
    src, src_mask, _, _, _ = seq2seq_batch(config, source)
    src, src_mask = src.repeat_interleave(2, 0), src_mask.repeat_interleave(2, 0)  # 2 beams
    tgt = torch.randint(
        4, config.tgt_vocab_size, (2 * B, 5), generator=torch.Generator().manual_seed(2)
    )
    memory = net.encode(src, src_mask)
    _, state = net.decode(tgt[:, :3], memory, src_mask, net.init_state(memory, src_mask))
    index = torch.tensor([1, 1, 3, 2, 4, 4])  # each row from a row of its own sentence
    logits, _ = net.decode(tgt[:, 3:], memory, src_mask, net.reorder_state(state, index))
    prefixes = torch.cat([tgt[index, :3], tgt[:, 3:]], dim=1)
    expected, _ = net.decode(prefixes, memory, src_mask)
    torch.testing.assert_close(logits, expected[:, 3:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("config", "source"), SEQ2SEQ)
def test_seq2seq_beam_one_equals_greedy_which_follows_the_logits(config, source):
    """Beam search with one beam, greedy search on the batch and on each sentence alone
    agree; each greedy token is the argmax of the teacher-forced logits (PAD and BOS
    banned), and a hypothesis shorter than max_len ended because EOS was the argmax."""
    net, max_len = build(config, source), 8
    src, src_mask, _, alone, _ = seq2seq_batch(config, source)
    tokens = greedy(net, src, src_mask, max_len=max_len)
    beams = beam_search(net, src, src_mask, beam_size=1, max_len=max_len)
    assert [hyps[0].tokens for hyps in beams] == tokens
    for (src_i, mask_i), expected in zip(alone, tokens, strict=True):
        assert greedy(net, src_i, mask_i, max_len=max_len) == [expected]
        with torch.no_grad():
            logits = net(src_i, torch.tensor([[BOS, *expected]]), mask_i)[0]
        logits[:, [PAD, BOS]] = float("-inf")
        argmax = logits.argmax(-1).tolist()
        assert argmax[: len(expected)] == expected
        assert len(expected) == max_len or argmax[len(expected)] == EOS


def images_of(config, n: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, config.channels, *config.image_size, generator=g)


@pytest.mark.parametrize("config", CLASSIFIERS)
def test_classifier_shape_finite_and_gradient_reaches_every_parameter(config):
    net = build(config).train()
    logits = net(images_of(config))
    assert logits.shape == (B, config.num_classes)
    assert logits.isfinite().all()
    F.cross_entropy(logits, torch.arange(B) % config.num_classes).backward()
    assert_every_parameter_learns(net)


@pytest.mark.parametrize("config", CLASSIFIERS)
@torch.no_grad()
def test_classifier_labels_an_image_alone_as_in_a_batch(config):
    net, x = build(config), images_of(config)
    together = net(x)
    for i in range(B):
        torch.testing.assert_close(net(x[i : i + 1])[0], together[i], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", CLASSIFIERS)
@torch.no_grad()
def test_classifier_save_then_load_gives_identical_outputs(config, tmp_path):
    net, fresh, x = build(config, seed=0), build(config, seed=1), images_of(config)
    assert not torch.equal(fresh(x), net(x)), "seeds must give other weights"
    save_and_load(net, fresh, tmp_path / "model.safetensors")
    assert torch.equal(fresh(x), net(x))


def test_every_registered_model_and_option_value_is_covered():
    """Guards the generation above: no class, source or option value silently drops out
    (e.g. because the tiny sizes make every config with it invalid)."""
    cases = {(type(p.values[0]), p.values[1] is None) for p in SEQ2SEQ}
    assert cases == {(cls, tokens) for cls in typing.get_args(ModelConfig)
                     for tokens in (True, False)}  # fmt: skip
    assert {type(p.values[0]) for p in CLASSIFIERS} == set(typing.get_args(ImageModelConfig))
    token_cases = [p.values[0] for p in SEQ2SEQ if p.values[1] is None]
    for config_cls in (*typing.get_args(ModelConfig), *typing.get_args(ImageModelConfig)):
        configs = [c for c in token_cases + [p.values[0] for p in CLASSIFIERS]
                   if type(c) is config_cls]  # fmt: skip
        for name, values in choices(config_cls).items():
            assert {getattr(c, name) for c in configs} == set(values), (config_cls, name)
