"""Contract tests for the recurrent encoder–decoders, for every cell × attention."""

import itertools

import pytest
import torch
from safetensors.torch import load_model, save_model

from seqkit.decoding import beam_search, greedy
from seqkit.models import RNNConfig, RNNSeq2Seq

PAD = 0
VARIANTS = [
    {"cell": cell, "attention": attention}
    for cell, attention in itertools.product(("rnn", "gru", "lstm"), ("none", "bahdanau", "luong"))
] + [
    {"cell": "lstm", "attention": "luong", "input_feeding": True, "n_layers": 2},
    {"cell": "gru", "attention": "luong", "luong_score": "dot", "bidirectional": False},
    {"cell": "gru", "attention": "none", "n_layers": 2, "tie_embeddings": True, "embed_dim": 24},
]
IDS = ["-".join(str(v) for v in variant.values()) for variant in VARIANTS]


def tiny(**overrides) -> RNNSeq2Seq:
    torch.manual_seed(0)
    options = dict(src_vocab_size=20, tgt_vocab_size=15, embed_dim=16, hidden_size=24, dropout=0.0)
    return RNNSeq2Seq(RNNConfig(**(options | overrides))).eval()


def batch():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, 20, (3, 7), generator=g)
    src[1, 4:] = PAD
    src[2, 2:] = PAD
    tgt = torch.randint(3, 15, (3, 6), generator=g)
    return src, tgt


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_shapes_finite_and_gradient_reaches_every_parameter(overrides):
    net = tiny(**overrides).train()
    src, tgt = batch()
    logits = net(src, tgt)
    assert logits.shape == (3, 6, 15)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_future_targets_and_source_padding_change_nothing(overrides):
    net = tiny(**overrides)
    src, tgt = batch()
    full = net(src, tgt)
    changed = tgt.clone()
    changed[:, 4:] = 3
    torch.testing.assert_close(net(src, changed)[:, :4], full[:, :4])
    padded = torch.cat([src, torch.full((3, 4), PAD)], dim=1)
    torch.testing.assert_close(net(padded, tgt), full, atol=1e-5, rtol=1e-5)
    for i, n in enumerate((7, 4, 2)):  # each sentence alone, unpadded
        torch.testing.assert_close(net(src[i : i + 1, :n], tgt[i : i + 1]), full[i : i + 1],
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_packed_encoder_equals_each_sentence_alone(cell):
    net = tiny(cell=cell, n_layers=2)
    src, _ = batch()
    mask = src != PAD
    memory = net.encode(src, mask)
    assert memory.shape == (3, 7, 48)
    assert (memory[~mask] == 0).all()
    for i, n in enumerate((7, 4, 2)):
        alone = net.encode(src[i : i + 1, :n], mask[i : i + 1, :n])
        torch.testing.assert_close(memory[i : i + 1, :n], alone, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", [("bahdanau", "general"), ("luong", "general"), ("luong", "dot")])
def test_attention_weights_sum_to_one_and_skip_padding(kind):
    attention, score = kind
    net = tiny(attention=attention, luong_score=score, bidirectional=score != "dot")
    src, _ = batch()
    mask = src != PAD
    memory = net.encode(src, mask)
    state = net.init_state(memory, mask)
    query = torch.randn(3, 5, 24)
    context, weights = net.attention(query, state["keys"], memory, mask)
    assert context.shape == (3, 5, memory.shape[-1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    assert (weights.masked_select(~mask[:, None].expand_as(weights)) == 0).all()


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_decoding_with_carried_state_equals_recomputing_the_prefix(overrides):
    net = tiny(**overrides)
    src, tgt = batch()
    full = net(src, tgt)
    mask = src != PAD
    memory = net.encode(src, mask)
    state = net.init_state(memory, mask)
    steps = []
    for chunk in (tgt[:, :1], tgt[:, 1:4], tgt[:, 4:]):
        logits, state = net.decode(chunk, memory, mask, state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS, ids=IDS)
def test_beam_one_equals_greedy_and_batches_are_independent(overrides):
    net = tiny(**overrides)
    with torch.no_grad():
        net.output.weight.mul_(6.0)  # peaked scores
        net.output.bias[2] += 4.0  # and an EOS likely enough that some hypotheses end early
    src, _ = batch()
    mask = src != PAD
    expected = greedy(net, src, mask, max_len=8)
    assert any(len(tokens) < 8 for tokens in expected)  # EOS reached, not only the length cap
    assert [h[0].tokens for h in beam_search(net, src, mask, beam_size=1, max_len=8)] == expected
    wide = beam_search(net, src, mask, beam_size=3, max_len=8)
    for i, n in enumerate((7, 4, 2)):
        alone = beam_search(net, src[i : i + 1, :n], mask[i : i + 1, :n], beam_size=3, max_len=8)
        assert alone[0][0].tokens == wide[i][0].tokens


def test_save_then_load_gives_identical_outputs(tmp_path):
    net = tiny(cell="lstm", attention="bahdanau", n_layers=2)
    save_model(net, str(tmp_path / "model.safetensors"))
    other = RNNSeq2Seq(net.config).eval()
    load_model(other, str(tmp_path / "model.safetensors"))
    src, tgt = batch()
    assert torch.equal(net(src, tgt), other(src, tgt))


def test_config_errors():
    with pytest.raises(ValueError, match="bidirectional=False"):
        RNNConfig(attention="luong", luong_score="dot", bidirectional=True)
    with pytest.raises(ValueError, match="embed_dim == hidden_size"):
        RNNConfig(tie_embeddings=True, embed_dim=8, hidden_size=16)
