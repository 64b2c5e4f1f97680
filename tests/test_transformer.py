"""Contract tests for the Transformer: shapes, gradients, masks, padding, cached decoding."""

import pytest
import torch

from seqkit.models import Transformer, TransformerConfig, config_from_dict, config_to_dict

PAD = 0


def tiny(**overrides) -> Transformer:
    torch.manual_seed(0)
    options = dict(
        src_vocab_size=40,
        tgt_vocab_size=30,
        d_model=32,
        n_heads=4,
        n_encoder_layers=2,
        n_decoder_layers=2,
        d_ff=64,
        dropout=0.0,
    )
    return Transformer(TransformerConfig(**(options | overrides))).eval()


VARIANTS = [
    {},
    {"norm_first": False},
    {"positions": "learned"},
    {"tie_embeddings": False, "activation": "gelu"},
    {"share_embeddings": True, "tgt_vocab_size": 40},
]


def batch(src_vocab: int = 40, tgt_vocab: int = 30):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(4, src_vocab, (3, 7), generator=g)
    src[1, 4:] = PAD
    tgt = torch.randint(4, tgt_vocab, (3, 6), generator=g)
    return src, tgt


@pytest.mark.parametrize("overrides", VARIANTS)
def test_shapes_finite_and_gradient_reaches_every_parameter(overrides):
    net = tiny(**overrides).train()
    src, tgt = batch(tgt_vocab=net.config.tgt_vocab_size)
    logits = net(src, tgt)
    assert logits.shape == (3, 6, net.config.tgt_vocab_size)
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("overrides", VARIANTS)
def test_decoder_cannot_see_the_future(overrides):
    net = tiny(**overrides)
    src, tgt = batch(tgt_vocab=net.config.tgt_vocab_size)
    changed = tgt.clone()
    changed[:, 3:] = torch.randint(4, net.config.tgt_vocab_size, changed[:, 3:].shape)
    a, b = net(src, tgt), net(src, changed)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


def test_source_padding_does_not_change_outputs():
    net = tiny()
    src, tgt = batch()
    padded = torch.cat([src, torch.full((3, 5), PAD)], dim=1)
    torch.testing.assert_close(net(src, tgt), net(padded, tgt), atol=1e-5, rtol=1e-5)
    alone = net(src[1:2, :4], tgt[1:2])  # the padded sentence on its own
    torch.testing.assert_close(net(src, tgt)[1:2], alone, atol=1e-5, rtol=1e-5)


def test_target_padding_does_not_change_real_positions():
    net = tiny()
    src, tgt = batch()
    padded = torch.cat([tgt, torch.full((3, 4), PAD)], dim=1)
    torch.testing.assert_close(net(src, tgt), net(src, padded)[:, :6], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", VARIANTS)
def test_cached_decoding_equals_full_recomputation(overrides):
    net = tiny(**overrides)
    src, tgt = batch(tgt_vocab=net.config.tgt_vocab_size)
    full = net(src, tgt)
    mask = src != PAD
    memory = net.encode(src, mask)
    state = net.init_state(memory, mask)
    steps = []
    for chunk in (tgt[:, :1], tgt[:, 1:4], tgt[:, 4:5], tgt[:, 5:]):  # one and several at a time
        logits, state = net.decode(chunk, memory, mask, state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_reorder_state_picks_rows():
    net = tiny()
    src, tgt = batch()
    mask = src != PAD
    memory = net.encode(src, mask)
    state = net.init_state(memory, mask)
    _, state = net.decode(tgt[:, :2], memory, mask, state)
    index = torch.tensor([2, 2, 0])
    moved = net.reorder_state(state, index)
    torch.testing.assert_close(moved["self"][0].keys, state["self"][0].keys[index])
    torch.testing.assert_close(moved["self"][0].values, state["self"][0].values[index])


def test_config_errors_and_round_trip():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="joint vocabulary"):
        TransformerConfig(src_vocab_size=5, tgt_vocab_size=6, share_embeddings=True)
    with pytest.raises(ValueError, match="max_positions"):
        tiny(max_positions=8)(
            torch.ones(1, 9, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)
        )
    config = TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=16, n_heads=2)
    assert config_from_dict(config_to_dict(config)) == config
    with pytest.raises(ValueError, match="fit 0 of the model configs"):
        config_from_dict({"d_model": 16, "d_modle": 3})
