"""Vocabulary extension (`--data.extend_vocab N`): merges appended to a trained tokenizer keep
old ids, merges and the tokenization of protected text; networks of every family grow with
old rows unchanged and new rows at the mean of their pieces; an extended fine-tuned model
saves, loads and resumes with the new vocabulary size."""

import csv
import gzip
import itertools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from num2words import num2words
from safetensors.torch import load_file

from seqkit import Seq2Seq, TranslationData, Translator
from seqkit.data.tokenizer import Tokenizers
from seqkit.data.vocab_extension import (
    extend_bpe,
    extend_tokenizers,
    extends,
    new_token_pieces,
    segment,
)
from seqkit.errors import ConfigError
from seqkit.lit.cli import cli_main, load_checkpoint
from seqkit.models import RNNConfig, TransformerConfig, build_model
from seqkit.models.resize import grow_vocabularies

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = range(0, 400, 3)
EN_DE = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in NUMBERS]
EN_FR = [(num2words(n, lang="en"), num2words(n, lang="fr")) for n in NUMBERS]
TINY = {"d_model": 32, "n_heads": 4, "n_encoder_layers": 1, "n_decoder_layers": 1, "d_ff": 64}
FAMILIES = {
    "transformer tied": TransformerConfig(**TINY),
    "transformer untied": TransformerConfig(**TINY, tie_embeddings=False),
    "transformer shared": TransformerConfig(**TINY, share_embeddings=True),
    "gru bahdanau untied": RNNConfig(cell="gru", embed_dim=16, hidden_size=24),
    "lstm luong tied": RNNConfig(cell="lstm", attention="luong", embed_dim=24, hidden_size=24,
                                 tie_embeddings=True, input_feeding=True),
    "rnn none": RNNConfig(cell="rnn", attention="none", embed_dim=16, hidden_size=24),
}  # fmt: skip


@pytest.fixture(scope="module")
def old() -> Tokenizers:
    return Tokenizers.train([e for e, _ in EN_DE], [d for _, d in EN_DE], vocab_size=300)


@pytest.fixture(scope="module")
def new(old) -> Tokenizers:
    return extend_tokenizers(old, [e for e, _ in EN_FR], [f for _, f in EN_FR], 60,
                             old_sides=frozenset({"source"}))  # fmt: skip


def test_extension_appends_ids_and_merges_after_the_old_ones(old, new):
    before, after = old.source.get_vocab(), new.source.get_vocab()
    assert all(after[token] == i for token, i in before.items())
    assert sorted(after.values()) == list(range(len(after)))  # new ids right after the old
    assert len(after) > len(before) and extends(new, old) and not extends(old, new)
    old_merges = json.loads(old.source.to_str())["model"]["merges"]
    new_merges = json.loads(new.source.to_str())["model"]["merges"]
    assert new_merges[: len(old_merges)] == old_merges and len(new_merges) == len(old_merges) + 60
    # French is cut into fewer pieces; the protected English side exactly as before.
    fr = [f for _, f in EN_FR]
    assert sum(map(len, new.encode_target(fr))) < sum(map(len, old.encode_target(fr)))
    en = [e for e, _ in EN_FR]
    assert new.encode_source(en) == old.encode_source(en)


def test_a_tokenizer_per_side_grows_only_on_its_new_side():
    en, de, fr = ([p[i] for p in pairs] for pairs, i in ((EN_DE, 0), (EN_DE, 1), (EN_FR, 1)))
    base = Tokenizers.train(en, de, vocab_size=300, joint=False)
    grown = extend_tokenizers(base, en, fr, 30, old_sides=frozenset({"source"}))
    assert grown.source is base.source and not grown.joint  # English: nothing to learn
    assert grown.tgt_vocab_size > base.tgt_vocab_size and extends(grown, base)
    assert grown.tgt_vocab_size <= base.tgt_vocab_size + 30  # a merge adds at most one token


def test_protection_is_what_keeps_old_text(old):
    """Without protecting English, merges learned on it change its tokens: the guarantee
    comes from the protected words, and the test can fail."""
    en = [e for e, _ in EN_FR]
    unprotected = extend_bpe(old.source, en, 60, min_frequency=1)
    assert [e.ids for e in unprotected.encode_batch(en)] != [
        e.ids for e in old.source.encode_batch(en)
    ]


def test_negative_or_missing_tokenizer_is_refused(old, tmp_path):
    with pytest.raises(ValueError, match="extend_vocab=-1"):
        extend_bpe(old.source, ["x"], -1)
    with pytest.raises(ValueError, match="extend_vocab=-2"):
        TranslationData(str(tmp_path), extend_vocab=-2)
    data = TranslationData(str(write_table(tmp_path / "t.tsv", EN_FR, "fr")), tgt_lang="fr",
                           extend_vocab=10, held_out=5)  # fmt: skip
    with pytest.raises(ConfigError, match="extend_vocab=10 extends a given tokenizer"):
        _ = data.tokenizers


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def test_multi30k_old_text_tokenizes_exactly_as_before(multi30k):
    """en–de tokenizer extended by 1000 merges on Multi30k fr (en side protected): every
    English training sentence keeps its ids; a German word changes only where its old
    pieces hold a learned pair (the documented contract), and French gets shorter."""
    en, de, fr = (_lines(multi30k / f"train.{lang}.gz")[:10000] for lang in ("en", "de", "fr"))
    base = Tokenizers.train(en, de, vocab_size=4000)
    grown = extend_tokenizers(base, en, fr, 1000, old_sides=frozenset({"source"}))
    assert extends(grown, base) and grown.src_vocab_size > base.src_vocab_size
    assert grown.encode_source(en) == base.encode_source(en)
    new_merges = json.loads(grown.source.to_str())["model"]["merges"][len(
        json.loads(base.source.to_str())["model"]["merges"]):]  # fmt: skip
    learned = {tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in new_merges}
    test_de = _lines(multi30k / "test_2016_flickr.de.gz")
    changed = 0
    for word, n in segment(base.source, test_de).items():
        pieces = [t.value for t in grown.source.model.tokenize("".join(word))]
        if pieces != list(word):
            changed += n
            assert set(itertools.pairwise(word)) & learned, word
    assert changed < 0.01 * sum(len(s.split()) for s in test_de)
    test_fr = _lines(multi30k / "test_2016_flickr.fr.gz")
    assert sum(map(len, grown.encode_target(test_fr))) < 0.8 * sum(
        map(len, base.encode_target(test_fr)))  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_growth_keeps_old_rows_and_starts_new_ones_at_the_mean_of_their_pieces(family, old, new):
    torch.manual_seed(0)
    config = FAMILIES[family]
    joint = {"src_vocab_size": old.src_vocab_size, "tgt_vocab_size": old.tgt_vocab_size}
    net = build_model(type(config)(**{**config.__dict__, **joint})).eval()
    if isinstance(net.output.bias, torch.Tensor):
        torch.nn.init.normal_(net.output.bias)  # a zero bias would hide a wrong mean
    before = {k: v.clone() for k, v in net.state_dict().items()}
    pieces = new_token_pieces(old.source, new.source)
    src = torch.tensor([old.encode_source(["seven hundred"])[0]])
    tgt_in = torch.tensor([[1, 40, 41, 42]])
    logits = net(src, tgt_in)
    grow_vocabularies(net, pieces, pieces)
    v_old, v_new = old.tgt_vocab_size, new.tgt_vocab_size
    assert (net.config.src_vocab_size, net.config.tgt_vocab_size) == (v_new, v_new)
    after = net.state_dict()
    assert after.keys() == before.keys()
    for name, value in before.items():
        if value.shape == after[name].shape:
            assert torch.equal(after[name], value), name
        else:  # a vocabulary matrix or bias: old rows bit for bit, new rows the mean
            assert torch.equal(after[name][:v_old], value), name
            for i, p in enumerate(pieces):
                assert torch.allclose(after[name][v_old + i], value[p].mean(0)), name
    c = net.config
    assert (net.output.weight is net.tgt_embed.weight) == c.tie_embeddings
    assert (net.src_embed is net.tgt_embed) == getattr(c, "share_embeddings", False)
    grown_logits = net(src, tgt_in)
    assert grown_logits.shape[-1] == v_new
    assert torch.allclose(grown_logits[..., :v_old], logits, atol=1e-6)
    new_src = torch.tensor([new.encode_source(["quatre-vingt-dix"])[0]])
    assert new_src.max() >= v_old and torch.isfinite(net(new_src, tgt_in)).all()


def write_table(path: Path, pairs, tgt: str) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["en", tgt])
        writer.writerows(pairs)
    return path


@pytest.fixture(scope="module")
def en_de_model(old, tmp_path_factory) -> Path:
    """A tiny en→de model directory that records its languages and tokens per word."""
    torch.manual_seed(0)
    sizes = {"src_vocab_size": old.src_vocab_size, "tgt_vocab_size": old.tgt_vocab_size}
    net = build_model(TransformerConfig(**TINY, **sizes, dropout=0.0)).eval()
    provenance = {"data": {"src_lang": "en", "tgt_lang": "de"},
                  "tokens_per_word": {"source": 1.2, "target": 1.3}}  # fmt: skip
    directory = tmp_path_factory.mktemp("en-de")
    return Translator(net, old, provenance=provenance).save_pretrained(directory)


def test_extended_fine_tuning_saves_loads_and_resumes_with_the_new_size(en_de_model, tmp_path):
    table = write_table(tmp_path / "en-fr.tsv", EN_FR, "fr")
    args = ["fit", "--config", str(ROOT / "recipes/finetune.yaml"),
            f"--model.init_args.init_from={en_de_model}", "--trainer.max_steps=3",
            "--trainer.val_check_interval=3", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}", "--data.max_tokens=512",
            f"--data.path={table}", "--data.held_out=10", "--data.tgt_lang=fr",
            "--data.extend_vocab=40", f"--data.cache_dir={tmp_path / 'cache'}",
            "--model.init_args.decoding.beam_size=1"]  # fmt: skip
    cli = cli_main(args)
    size = cli.datamodule.tokenizers.tgt_vocab_size
    assert size > 300 and extends(cli.datamodule.tokenizers, Tokenizers.load(en_de_model))
    out = next(tmp_path.glob("lightning_logs/version_0/model"))
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["tgt_vocab_size"] == meta["config"]["src_vocab_size"] == size
    assert set(meta["provenance"]["tokens_per_word"]) == {"source", "target"}
    stored = load_file(out / "model.safetensors")  # tied weights are stored once
    assert {v.shape[0] for k, v in stored.items() if "embed." in k or "output" in k} == {size}
    loaded = Translator.from_pretrained(out)
    assert loaded.net.output.out_features == loaded.net.src_embed.num_embeddings == size
    src = torch.tensor(loaded.tokenizers.encode_source(["trois cent trois", "seven"])[:1])
    tgt_in = torch.tensor([[1, size - 1, 40]])
    model = cli.model.eval()
    assert torch.equal(loaded.net(src, tgt_in), model.net(src, tgt_in))
    texts = ["three hundred and three", "twelve"]
    assert loaded.translate(texts) == model.translator.translate(texts)
    checkpoint = next(tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    resumed = load_checkpoint(checkpoint)  # built with the new size from its config
    assert resumed.config.tgt_vocab_size == size
    assert resumed.tokenizers.fingerprint() == cli.datamodule.tokenizers.fingerprint()
    # Resuming training: the model grows in setup, then takes the weights and optimizer state.
    model = Seq2Seq(init_from=str(en_de_model))
    data = TranslationData(str(table), tgt_lang="fr", held_out=10, max_tokens=512,
                           tokenizer=str(en_de_model), extend_vocab=40,
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    trainer = L.Trainer(max_steps=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(model, data, ckpt_path=checkpoint)
    assert trainer.global_step == 4 and model.net.output.out_features == size


def test_a_tokenizer_that_does_not_extend_the_models_is_still_refused(en_de_model):
    model = Seq2Seq(TransformerConfig(), init_from=str(en_de_model))
    other = Tokenizers.train(["a b c"] * 10, ["d e f"] * 10, vocab_size=280)
    from seqkit.data.inputs import ModelInputs

    with pytest.raises(ValueError, match="nor an extension of it"):
        model.use_inputs(ModelInputs(other))
