"""Language models: causal masks, the window τ, cached decoding, truncated BPTT, the token
stream and its character counts, save → load, and a tiny model learning a tiny language."""

from __future__ import annotations

import math
import typing
from dataclasses import replace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from seqkit import (
    LanguageModel,
    LanguageModelData,
    OptimizerConfig,
    RNNLMConfig,
    TextGenerator,
    TransformerLMConfig,
)
from seqkit.lit.lm import tbptt_chunks
from seqkit.models import build_model
from seqkit.tokens import PAD

V = 40
CONFIGS = {
    "transformer": TransformerLMConfig(vocab_size=V, d_model=16, n_heads=2, n_layers=2, d_ff=32,
                                       dropout=0.0, max_positions=64),
    "rnn": RNNLMConfig(vocab_size=V, cell="rnn", embed_dim=16, hidden_size=16, dropout=0.0),
    "gru": RNNLMConfig(vocab_size=V, cell="gru", embed_dim=16, hidden_size=16, dropout=0.0),
    "lstm": RNNLMConfig(vocab_size=V, cell="lstm", embed_dim=16, hidden_size=16, dropout=0.0,
                        forget_bias=1.0),
}  # fmt: skip
FAMILIES = list(CONFIGS)


def net_of(family: str, context: int = 0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(replace(CONFIGS[family], context=context)).eval()


def tokens(b: int = 2, t: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(4, V, (b, t), generator=torch.Generator().manual_seed(seed))


def changed_positions(net, x: torch.Tensor, position: int) -> list[bool]:
    """Which positions' logits change when token `position` changes."""
    y = x.clone()
    y[:, position] = 4 + (y[:, position] - 3) % (V - 4)
    return ((net(x) - net(y)).abs().amax(dim=(0, 2)) > 1e-6).tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("context", [0, 3])
def test_no_prediction_sees_the_future_and_a_window_sees_exactly_tau_tokens(family, context):
    net, x = net_of(family, context), tokens()
    for position in (0, 5):
        changed = changed_positions(net, x, position)
        last = position + context - 1 if context else x.shape[1] - 1
        assert changed == [position <= t <= last for t in range(x.shape[1])]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("context", [0, 1, 4])
@pytest.mark.parametrize("step", [1, 3])
def test_cached_decoding_equals_recomputation(family, context, step):
    net, x = net_of(family, context), tokens(t=11)
    state, pieces = net.init_state(len(x)), []
    for start in range(0, x.shape[1], step):
        logits, state = net.decode(x[:, start : start + step], state)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_after_a_sequence_changes_none_of_its_predictions(family):
    net, x = net_of(family), tokens(b=1, t=7)
    padded = torch.cat([x, torch.full((1, 5), PAD)], dim=1)
    torch.testing.assert_close(net(padded)[:, :7], net(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["rnn", "gru", "lstm"])
def test_tbptt_carries_the_state_and_stops_the_gradient_at_each_chunk(family):
    net, x = net_of(family), tokens(t=12)
    y = torch.roll(x, -1, dims=1)
    # k = T is full BPTT: the same loss and gradients as one pass.
    (full,) = [loss for loss, _, _ in tbptt_chunks(net, x, y, 0)]
    (one,) = [loss for loss, _, _ in tbptt_chunks(net, x, y, 12)]
    grads = [torch.autograd.grad(loss, list(net.parameters())) for loss in (full, one)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    # Chunks of 4: the state is carried (the chunks' losses are the full pass's, averaged)...
    losses = [loss for loss, _, _ in tbptt_chunks(net, x, y, 4)]
    torch.testing.assert_close(sum(losses) / 3, full)
    # ...and detached: the last chunk's loss sends no gradient to the first chunk's tokens.
    embedded = []
    hook = net.embed.register_forward_hook(lambda m, args, out: embedded.append(out))
    try:
        chunks = list(tbptt_chunks(net, x, y, 4))
    finally:
        hook.remove()
    first, last = embedded[0], chunks[-1][0]
    assert torch.autograd.grad(last, first, allow_unused=True)[0] is None
    assert torch.autograd.grad(chunks[0][0], first)[0].abs().sum() > 0


def test_tbptt_is_refused_where_there_is_no_state_to_carry():
    with pytest.raises(ValueError, match="Transformer"):
        LanguageModel(CONFIGS["transformer"], tbptt_steps=4)
    with pytest.raises(ValueError, match="context"):
        LanguageModel(replace(CONFIGS["gru"], context=3), tbptt_steps=4)
    with pytest.raises(ValueError, match="forget_bias"):
        RNNLMConfig(cell="gru", forget_bias=1.0)


def test_the_lstm_forget_bias_is_set_in_every_layer():
    net = build_model(replace(CONFIGS["lstm"], n_layers=2, forget_bias=1.0))
    h = 16
    for layer in range(2):
        ih, hh = getattr(net.rnn, f"bias_ih_l{layer}"), getattr(net.rnn, f"bias_hh_l{layer}")
        assert torch.all(ih[h : 2 * h] + hh[h : 2 * h] == 1.0)


@pytest.fixture(scope="module")
def prose() -> LanguageModelData:
    data = LanguageModelData(vocab_size=400, seq_len=32, batch_size=8)
    data.setup()
    return data


def test_the_stream_counts_every_character_and_predicts_every_token_once(prose):
    docs = prose.documents()
    for stage, windows in prose.windows.items():
        text_chars = sum(len(doc) + 1 for doc in docs[stage])  # each ends in EOS: a line break
        items = [windows[i] for i in range(len(windows))]
        assert sum(item["chars"] for item in items) == text_chars
        targets = torch.cat([item["target"] for item in items])
        assert int((targets != PAD).sum()) == len(windows.stream) - 1
        inputs = torch.cat([item["input"] for item in items])
        assert torch.equal(inputs[1 : len(windows.stream) - 1], targets[: len(windows.stream) - 2])
    assert sorted(docs["train"] + docs["val"] + docs["test"]) == sorted(
        __import__("pydoc_data.topics").topics.topics.values()
    )


def test_a_tiny_model_learns_a_tiny_language_and_saves_and_loads(tmp_path):
    # A language of one sentence: after training, its tokens are nearly certain.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat.\n" * 400, encoding="utf-8")
    data = LanguageModelData(str(corpus), vocab_size=300, seq_len=24, batch_size=8)
    model = LanguageModel(
        replace(CONFIGS["gru"], vocab_size=0),
        OptimizerConfig(lr=1e-2, warmup_steps=5),
        tbptt_steps=8,
    )
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=120, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    (scores,) = trainer.test(model, data, verbose=False)
    assert scores["test/ppl"] < 1.5
    assert math.isclose(scores["test/bpc"], math.log2(scores["test/ppl_char"]), rel_tol=1e-4)
    generator = model.generator
    generator.save_pretrained(tmp_path / "model")
    loaded = TextGenerator.from_pretrained(tmp_path / "model")
    texts = ["the cat sat on the mat.", "a dog"]
    assert loaded.log_likelihoods(texts) == generator.log_likelihoods(texts)
    assert loaded.perplexity(texts[:1]) < 1.5 < loaded.perplexity(texts[1:])


def lm_variants() -> list:
    """Every LM config class in variants that hold every pair of its Literal/bool options,
    with a window and without (as tests/test_contract.py does for seq2seq models)."""
    from test_contract import all_pairs

    from seqkit.models import LMConfig

    variants = []
    for cls in typing.get_args(LMConfig):
        for config in all_pairs(cls, None):
            for context in (0, 3):
                variants.append(replace(config, vocab_size=V, context=context))
    return variants


@pytest.mark.parametrize("config", lm_variants(), ids=repr)
def test_every_language_model_keeps_the_contract(config, tmp_path):
    torch.manual_seed(0)
    net = build_model(config)
    x = tokens(t=9)
    logits = net(x)
    assert logits.shape == (*x.shape, V) and torch.isfinite(logits).all()
    F.cross_entropy(logits.flatten(0, 1), torch.roll(x, -1, 1).flatten()).backward()
    silent = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not silent, f"no gradient reaches {silent}"
    net.eval()
    save_model(net, str(tmp_path / "w.safetensors"))
    loaded = build_model(config).eval()
    load_model(loaded, str(tmp_path / "w.safetensors"))
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("recipe", "options"),
    [
        ("gru-lm", ["--model.init_args.tbptt_steps=8"]),
        ("transformer-lm", ["--model.init_args.config.context=4"]),
    ],
)
def test_a_recipe_trains_exports_and_resumes_through_the_cli(tmp_path, recipe, options, capsys):
    from test_cli import ROOT, seqkit

    from seqkit.cli import main

    tiny = ["--data.vocab_size=300", "--data.seq_len=16", "--data.batch_size=4",
            "--trainer.enable_progress_bar=false", "--trainer.max_steps=6",
            "--trainer.limit_val_batches=2", "--trainer.val_check_interval=3",
            "--trainer.limit_test_batches=2", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    size = (["--model.init_args.config.embed_dim=16", "--model.init_args.config.hidden_size=16"]
            if recipe != "transformer-lm" else
            ["--model.init_args.config.d_model=16", "--model.init_args.config.d_ff=32",
             "--model.init_args.config.n_layers=1"])  # fmt: skip
    main(["fit", "--config", str(ROOT / f"recipes/{recipe}.yaml"), *tiny, *size, *options])
    written = capsys.readouterr().out
    model_dir = written.split("model written to ")[1].split()[0]
    generator = TextGenerator.from_pretrained(model_dir)
    assert math.isfinite(generator.perplexity(["The with statement."]))
    assert generator.provenance["metrics"]["test/ppl"] > 1
    # The export of the best checkpoint is the model fit wrote.
    (best,) = [path for path in tmp_path.rglob("*.ckpt") if path.name != "last.ckpt"]
    exported = seqkit("export", str(best), str(tmp_path / "exported"))
    assert exported.returncode == 0, exported.stderr
    again = TextGenerator.from_pretrained(tmp_path / "exported")
    ((score, n),) = again.log_likelihoods(["for loops"])
    assert (pytest.approx(score, abs=1e-4), n) == generator.log_likelihoods(["for loops"])[0]
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    # Resuming continues the step count and keeps what a resumed run may change.
    main(["fit", "--config", str(ROOT / f"recipes/{recipe}.yaml"), *tiny, *size, *options,
          "--trainer.max_steps=9", f"--ckpt_path={checkpoint}"])  # fmt: skip
    assert "model written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    "batch, rows",
    [({"target": torch.tensor([[5, 6, 7], [8, 9, PAD]])}, "windows"),  # "pairs/s" before
     ({"src": torch.tensor([[5, 6], [7, PAD]]), "tgt_out": torch.tensor([[5, 6], [7, 8]])},
      "pairs")],
)  # fmt: skip
def test_the_throughput_line_names_a_language_models_rows_as_windows(batch, rows, capsys):
    from types import SimpleNamespace

    from seqkit.callbacks import TokensPerSecond

    counter = TokensPerSecond()
    trainer = SimpleNamespace(global_step=1, log_every_n_steps=50, world_size=1,
                              is_global_zero=True)  # fmt: skip
    counter.on_train_batch_start(trainer, None, batch, 0)
    counter.on_train_batch_end(trainer, None, None, batch, 0)
    counter.on_train_end(trainer, None)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"trained on {5 if rows == 'windows' else 7} tokens in ")
    assert line.endswith(f" {rows}/s")
