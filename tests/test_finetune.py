"""Export every model family and load it back; fine-tune a saved model on files of every
format, reusing its tokenizer; freezing; refusals."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from num2words import num2words
from safetensors.torch import load_file

from seqkit import Seq2Seq, TranslationData, Translator
from seqkit.data.tokenizer import Tokenizers
from seqkit.lit.cli import cli_main
from seqkit.models import RNNConfig, TransformerConfig

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in range(0, 400, 3)]
FAMILIES = {
    "transformer": TransformerConfig(d_model=32, n_heads=4, n_encoder_layers=1,
                                     n_decoder_layers=1, d_ff=64, dropout=0.0),
    "gru+bahdanau": RNNConfig(cell="gru", attention="bahdanau", embed_dim=16, hidden_size=24),
    "lstm+luong": RNNConfig(cell="lstm", attention="luong", embed_dim=16, hidden_size=24,
                            input_feeding=True),
    "rnn": RNNConfig(cell="rnn", attention="none", embed_dim=16, hidden_size=24),
}  # fmt: skip


def untrained(config, tokenizers: Tokenizers) -> Seq2Seq:
    sizes = {
        "src_vocab_size": tokenizers.src_vocab_size,
        "tgt_vocab_size": tokenizers.tgt_vocab_size,
    }
    model = Seq2Seq(type(config)(**{**config.__dict__, **sizes}))
    model.tokenizers = tokenizers
    return model.eval()


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train([en for en, _ in PAIRS], [de for _, de in PAIRS], vocab_size=300)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_and_loads_back_identically(family, tokenizers, tmp_path):
    torch.manual_seed(0)
    model = untrained(FAMILIES[family], tokenizers)
    model.translator.save_pretrained(tmp_path, metrics={"test/bleu": 12.5})
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json", "model.safetensors", "tokenizer.json", "README.md",
    }  # fmt: skip
    loaded = Translator.from_pretrained(tmp_path)
    src = torch.tensor(tokenizers.encode_source(["seven", "three hundred and one"])[1:])
    tgt = torch.tensor([[1, 40, 41, 42]])
    assert torch.equal(model.net(src, tgt), loaded.net(src, tgt))
    texts = ["seven", "three hundred and one"]
    assert loaded.translate(texts) == model.translator.translate(texts)
    card = (tmp_path / "README.md").read_text()
    assert "library_name: seqkit" in card and "| test | sacreBLEU | 12.5 |" in card


def write_table(path: Path, src_col: str = "en", tgt_col: str = "de") -> Path:
    rows = [{src_col: en, tgt_col: de} for en, de in PAIRS]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(
                f, [src_col, tgt_col], delimiter="\t" if path.suffix == ".tsv" else ","
            )
            writer.writeheader()
            writer.writerows(rows)
    return path


def write_text_pair(directory: Path) -> Path:
    directory.mkdir()
    for split, part in (("train", PAIRS[20:]), ("val", PAIRS[:10]), ("test", PAIRS[10:20])):
        for lang, column in (("en", 0), ("de", 1)):
            (directory / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in part))
    return directory


@pytest.fixture(scope="module")
def pretrained(tokenizers, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("pretrained")
    untrained(FAMILIES["transformer"], tokenizers).translator.save_pretrained(directory)
    return directory


def finetune(pretrained: Path, tmp_path: Path, *args: str):
    return cli_main([
        "fit", "--config", str(ROOT / "recipes/finetune.yaml"),
        f"--model.init_args.init_from={pretrained}", "--trainer.max_steps=4",
        "--trainer.val_check_interval=4", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", "--data.max_tokens=512",
        f"--data.cache_dir={tmp_path / 'cache'}", "--model.init_args.decoding.beam_size=1", *args,
    ])  # fmt: skip


@pytest.mark.parametrize("fmt", [".tsv", ".csv", ".jsonl", ".parquet", "text pair", "columns"])
def test_fine_tuning_reuses_the_model_and_its_tokenizer(fmt, pretrained, tokenizers, tmp_path):
    if fmt == "text pair":
        args = [f"--data.path={write_text_pair(tmp_path / 'pairs')}", "--data.held_out=0",
                "--data.splits={train: train, val: val, test: test}"]  # fmt: skip
    elif fmt == "columns":
        table = write_table(tmp_path / "mine.tsv", "english", "german")
        args = [f"--data.path={table}", "--data.held_out=10",
                "--data.source_column=english", "--data.target_column=german"]  # fmt: skip
    else:
        args = [f"--data.path={write_table(tmp_path / f'mine{fmt}')}", "--data.held_out=10"]
    cli = finetune(pretrained, tmp_path, "--model.init_args.freeze=[embeddings, encoder]", *args)
    assert cli.datamodule.tokenizers.fingerprint() == tokenizers.fingerprint()
    assert cli.trainer.global_step == 4
    before = load_file(pretrained / "model.safetensors")
    after = load_file(next(tmp_path.glob("lightning_logs/version_0/model")) / "model.safetensors")
    for name, weight in after.items():
        frozen = name.startswith(("encoder.", "encoder_norm.", "src_embed.", "pos_embed."))
        frozen |= name == "output.weight"  # tied to the (shared) embedding
        assert torch.equal(weight, before[name]) == frozen, name  # trained from the pretrained


def test_a_tokenizer_other_than_the_models_is_refused(pretrained, tmp_path):
    other = Tokenizers.train(["a b c"] * 10, ["d e f"] * 10, vocab_size=280)
    other.save(tmp_path / "other")
    table = write_table(tmp_path / "mine.tsv")
    with pytest.raises(ValueError, match="not the one this model was trained with"):
        finetune(
            pretrained,
            tmp_path,
            f"--data.path={table}",
            "--data.held_out=10",
            f"--data.tokenizer={tmp_path / 'other'}",
        )


def test_init_from_fixes_the_architecture_but_not_dropout(pretrained):
    model = Seq2Seq(TransformerConfig(dropout=0.3), init_from=str(pretrained))
    assert model.config.dropout == 0.3 and model.config.d_model == 32
    with pytest.raises(ValueError, match=r"fixes the architecture.*d_model"):
        Seq2Seq(TransformerConfig(d_model=64), init_from=str(pretrained))
    with pytest.raises(ValueError, match="freeze: unknown part"):
        Seq2Seq(freeze=["decoder_only"])


def test_held_out_splits_one_file_by_seed(tmp_path):
    from seqkit import TranslationData

    table = write_table(tmp_path / "mine.tsv")
    data = TranslationData(str(table), held_out=10, cache_dir=str(tmp_path / "cache"))
    raw = data.load_raw()
    assert [len(raw[s]) for s in ("train", "val", "test")] == [len(PAIRS) - 20, 10, 10]
    seen = [tuple(raw[s]["source"]) for s in ("train", "val", "test")]
    assert len(set().union(*map(set, seen))) == len(PAIRS)  # disjoint and complete
    again = TranslationData(str(table), held_out=10).load_raw()
    assert list(again["val"]["source"]) == list(raw["val"]["source"])


def test_the_handshake_goes_one_way_from_data_to_model(pretrained, tokenizers, tmp_path):
    """The data module hands its tokenizer over (`model_inputs`) and never reads the model,
    even through the trainer; fine-tuning gives it the model's tokenizer explicitly."""

    class NoPeeking:
        @property
        def lightning_module(self):
            raise AssertionError("the data module read the model")

    data = TranslationData(path=str(write_table(tmp_path / "mine.tsv")), held_out=10,
                           vocab_size=280, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    data.trainer = NoPeeking()
    data.use_tokenizer(str(pretrained))
    data.prepare_data()
    data.setup("fit")
    inputs = data.model_inputs()
    assert inputs.tokenizers.fingerprint() == tokenizers.fingerprint()
    assert inputs.image_source is None and inputs.max_length == data.max_length
    model = Seq2Seq(TransformerConfig(), init_from=str(pretrained))
    model.use_inputs(inputs)  # what Seq2Seq.setup does with the trainer's data module
    other = Tokenizers.train(["a b c"] * 10, ["d e f"] * 10, vocab_size=280)
    with pytest.raises(ValueError, match="not the one this model was trained with"):
        model.use_inputs(replace(inputs, tokenizers=other))


def test_a_fine_tuning_run_resumes_from_its_checkpoint_by_the_command_line(pretrained, tmp_path):
    """`seqkit fit ... --ckpt_path last.ckpt` of a run started with init_from: the recipe's
    default config is not taken for another architecture, and the data module encodes with
    the fine-tuned model's tokenizer again."""
    data = [f"--data.path={write_table(tmp_path / 'mine.tsv')}", "--data.held_out=10"]
    first = finetune(pretrained, tmp_path / "first", *data)
    last = next((tmp_path / "first").glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    resumed = finetune(pretrained, tmp_path / "again", *data, f"--ckpt_path={last}",
                       "--trainer.max_steps=6")  # fmt: skip
    assert resumed.trainer.global_step == 6
    fingerprint = first.datamodule.tokenizers.fingerprint()
    assert resumed.datamodule.tokenizers.fingerprint() == fingerprint
    assert resumed.model.config == first.model.config
