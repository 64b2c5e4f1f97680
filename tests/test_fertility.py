"""Tokens per word: measured, recorded with a model, reported when fine-tuning starts and by
`seqkit inspect-data`, with a warning naming the remedy for a new script and none for the
training language."""

import csv
import warnings
from pathlib import Path

import pytest
import torch
from num2words import num2words

from seqkit import TranslationData, Translator
from seqkit.cli import main
from seqkit.data.fertility import recorded_rates, side_rates, tokens_per_word
from seqkit.data.tokenizer import Tokenizers
from seqkit.lit import finetune
from seqkit.models import TransformerConfig, build_model

NUMBERS = range(0, 400, 3)
PAIRS = {
    lang: [(num2words(n, lang="en"), num2words(n, lang=lang)) for n in NUMBERS]
    for lang in ("de", "ru")
}


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train(*zip(*PAIRS["de"], strict=True), vocab_size=300)


def write_table(path: Path, lang: str) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["en", lang])
        writer.writerows(PAIRS[lang])
    return path


@pytest.fixture(scope="module")
def model_dir(tokenizers, tmp_path_factory) -> Path:
    """An en→de model recording its training data's real rates, as `seqkit fit` does."""
    torch.manual_seed(0)
    sizes = {"src_vocab_size": tokenizers.src_vocab_size,
             "tgt_vocab_size": tokenizers.tgt_vocab_size}  # fmt: skip
    net = build_model(TransformerConfig(d_model=16, n_heads=2, n_encoder_layers=1,
                                        n_decoder_layers=1, d_ff=32, **sizes))  # fmt: skip
    rates = side_rates(tokenizers, *zip(*PAIRS["de"], strict=True))
    provenance = {"data": {"src_lang": "en", "tgt_lang": "de"}, "tokens_per_word": rates}
    directory = tmp_path_factory.mktemp("en-de")
    return Translator(net.eval(), tokenizers, provenance=provenance).save_pretrained(directory)


def test_tokens_per_word_counts_tokens_over_whitespace_words(tokenizers):
    texts = ["seven hundred", "  three\tthousand and one "]
    tokens = sum(len(e.ids) for e in tokenizers.source.encode_batch(texts))
    assert tokens_per_word(tokenizers.source, texts) == tokens / 6
    assert tokens_per_word(tokenizers.source, ["", "  "]) == 0.0
    # A script the merges never saw falls back to bytes (two per Cyrillic letter).
    ru = [r for _, r in PAIRS["ru"]]
    assert tokens_per_word(tokenizers.target, ru) > 1.5 * tokens_per_word(
        tokenizers.target, [d for _, d in PAIRS["de"]]
    )


def caught(model_dir: Path, tmp_path: Path, lang: str) -> list[str]:
    data = TranslationData(str(write_table(tmp_path / f"en-{lang}.tsv", lang)), tgt_lang=lang,
                           held_out=5, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    data.use_tokenizer(str(model_dir))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune.report_fertility(str(model_dir), data)
    return [str(w.message) for w in caught if "tokens per word" in str(w.message)]


def test_fine_tuning_warns_for_a_new_script_and_not_for_the_training_language(model_dir, tmp_path):
    (warning,) = caught(model_dir, tmp_path, "ru")
    assert warning.startswith("target side (ru)") and "--data.extend_vocab N" in warning
    assert caught(model_dir, tmp_path, "de") == []


def test_older_directories_without_rates_still_report(tokenizers, tmp_path):
    net = build_model(TransformerConfig(d_model=16, n_heads=2, n_encoder_layers=1,
                                        n_decoder_layers=1, d_ff=32, src_vocab_size=300,
                                        tgt_vocab_size=300))  # fmt: skip
    old = Translator(net.eval(), tokenizers).save_pretrained(tmp_path / "old")
    assert recorded_rates(old) is None
    assert caught(old, tmp_path, "ru") == []  # nothing to compare with: no warning


def test_inspect_data_prints_the_table_and_warns(model_dir, tmp_path, capsys):
    table = write_table(tmp_path / "en-ru.tsv", "ru")
    main(["inspect-data", "--model", str(model_dir), "--data", str(table), "--tgt-lang", "ru"])
    out, err = capsys.readouterr()
    assert "tokens per word" in out and "\ntarget  ru" in out and "\nsource  en" in out
    assert err.startswith("warning: target side (ru)") and "--data.extend_vocab" in err
    main(["inspect-data", "--model", str(model_dir), "--data", str(table), "--tgt-lang", "ru",
          "--extend-vocab", "100"])  # fmt: skip
    out, err = capsys.readouterr()
    assert "extended" in out


def test_inspect_data_errors_name_the_bad_path(model_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["inspect-data", "--model", str(model_dir), "--data", str(tmp_path / "nope.tsv")])
    assert str(exit_.value.code).startswith("seqkit inspect-data: ") and "nope.tsv" in str(
        exit_.value.code
    )
    with pytest.raises(SystemExit) as exit_:
        main(["inspect-data", "--model", str(tmp_path), "--data", str(tmp_path)])
    assert "no tokenizer found" in str(exit_.value.code)
