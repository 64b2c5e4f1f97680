"""Seq2Seq: a tiny model learns a tiny task; save → load is exact; tokenizers stay paired."""

import lightning as L
import pytest
import torch

from seqkit import NumberWordsData, OptimizerConfig, Seq2Seq, TransformerConfig, Translator
from seqkit.decoding import DecodingConfig
from seqkit.lit.cli import load_checkpoint
from seqkit.lit.loss import label_smoothed_nll


def beam(k: int) -> DecodingConfig:
    return DecodingConfig(beam_size=k)


TINY = TransformerConfig(
    d_model=64,
    n_heads=4,
    n_encoder_layers=2,
    n_decoder_layers=2,
    d_ff=128,
    dropout=0.0,
    share_embeddings=True,
)


def small_numbers(tmp_path, **overrides) -> NumberWordsData:
    options = dict(
        n_train=900,
        n_val=50,
        n_test=50,
        low=0,
        high=999,
        vocab_size=300,
        max_tokens=1024,
        cache_dir=str(tmp_path / "cache"),
    )
    return NumberWordsData(**(options | overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Transformer trained on number words 0–999 for a few epochs (~30 s)."""
    tmp = tmp_path_factory.mktemp("numbers")
    L.seed_everything(0)
    data = small_numbers(tmp)
    model = Seq2Seq(TINY, OptimizerConfig(lr=3e-3, warmup_steps=30), label_smoothing=0.0)
    trainer = L.Trainer(
        max_epochs=12,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        check_val_every_n_epoch=12,
    )
    first = {}

    class FirstLoss(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            first.setdefault("loss", float(outputs["loss"]))

    trainer.callbacks.append(FirstLoss())
    trainer.fit(model, data)
    return model, data, trainer, first["loss"]


def test_a_tiny_model_learns_number_words(trained):
    model, data, trainer, first_loss = trained
    metrics = trainer.callback_metrics
    assert float(metrics["val/loss"]) < first_loss / 4
    assert float(metrics["val/exact_match"]) >= 0.8, metrics
    assert model.translator.translate(["forty-two"], beam(3)) == ["zweiundvierzig"]


def test_save_pretrained_then_load_gives_identical_outputs(trained, tmp_path):
    model, data, _, _ = trained
    model.translator.save_pretrained(tmp_path / "model")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "model").iterdir()
    }
    loaded = Translator.from_pretrained(tmp_path / "model")
    batch = next(iter(data.test_dataloader()))
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model.net(batch["src"], batch["tgt_in"]), loaded.net(batch["src"], batch["tgt_in"])
        )
    texts = batch["src_text"][:8]
    assert loaded.translate(texts) == model.translator.translate(texts)


def test_checkpoint_loads_without_unpickling(trained):
    model, _, trainer, _ = trained
    path = trainer.checkpoint_callback.best_model_path
    checkpoint = torch.load(path, weights_only=True)  # plain data only
    assert "tokenizers" in checkpoint
    restored = load_checkpoint(path)
    assert restored.tokenizers.fingerprint() == model.tokenizers.fingerprint()
    assert restored.translator.translate(["seven"], beam(1)) == model.translator.translate(
        ["seven"], beam(1)
    )


def test_translate_keeps_order_and_empty_lines(trained):
    model, _, _, _ = trained
    texts = ["nine hundred and one", "", "three", "   ", "twelve"]
    out = model.translator.translate(texts, beam(2), max_tokens=16)  # forces several batches
    assert out[1] == "" and out[3] == ""
    assert out[0] == model.translator.translate([texts[0]], beam(2))[0]
    assert out[4] == model.translator.translate([texts[4]], beam(2))[0]


def test_a_model_refuses_a_tokenizer_it_was_not_trained_with(trained, tmp_path):
    model, _, _, _ = trained
    other = small_numbers(tmp_path, vocab_size=280, seed=7)
    other.setup("fit")
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="not the one this model was trained with"):
        trainer.fit(model, other)


def test_label_smoothed_loss_ignores_padding():
    logits = torch.randn(2, 4, 7)
    target = torch.tensor([[5, 6, 2, 0], [4, 2, 0, 0]])
    loss, nll, n = label_smoothed_nll(logits, target, 0.1)
    trimmed, _, m = label_smoothed_nll(logits[:, :3], target[:, :3], 0.1)
    assert n == m == 5
    torch.testing.assert_close(loss, trimmed)
    reference = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=0, label_smoothing=0.1
    )
    torch.testing.assert_close(loss, reference)


def test_rnn_fits_without_a_validation_split_and_round_trips(tmp_path):
    from num2words import num2words

    from seqkit import RNNConfig, TranslationData

    for split, numbers in {"train": range(300), "test": range(300, 330)}.items():
        for lang in ("en", "de"):
            text = "".join(num2words(n, lang=lang) + "\n" for n in numbers)
            (tmp_path / f"{split}.{lang}").write_text(text, encoding="utf-8")
    data = TranslationData(
        path=str(tmp_path), splits={"train": "train", "test": "test"}, vocab_size=280,
        max_tokens=512, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    config = RNNConfig(cell="gru", attention="luong", embed_dim=32, hidden_size=48, dropout=0.0)
    model = Seq2Seq(config, OptimizerConfig(lr=3e-3, warmup_steps=10))
    trainer = L.Trainer(max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, data)
    assert trainer.test(model, data)[0]["test/chrf"] >= 0
    model.translator.save_pretrained(tmp_path / "model")
    loaded = Translator.from_pretrained(tmp_path / "model")
    assert isinstance(loaded.config, RNNConfig)
    texts = ["three hundred and one", "seven"]
    assert loaded.translate(texts, beam(3)) == model.translator.translate(texts, beam(3))
