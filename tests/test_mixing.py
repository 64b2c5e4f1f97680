"""Mixing the original data into fine-tuning data (`TranslationData(mix_with=, mix_ratio=)`)."""

import gzip
import logging
from collections import Counter
from pathlib import Path

import pytest

from seqkit.data import TranslationData
from seqkit.data.mixing import mix_rows

SPLITS = {"train": "train", "val": "val", "test": "test"}


def write_corpus(directory: Path, name: str, sizes: dict[str, int]) -> Path:
    """SPLIT.en.gz / SPLIT.de.gz with distinct, recognisable sentences."""
    directory.mkdir()
    for split, size in sizes.items():
        for lang in ("en", "de"):
            lines = "".join(f"{name} {split} {lang} {i}\n" for i in range(size))
            with gzip.open(directory / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write(lines)
    return directory


@pytest.fixture
def corpora(tmp_path: Path) -> tuple[Path, Path]:
    own = write_corpus(tmp_path / "own", "own", {"train": 100, "val": 10, "test": 12})
    original = write_corpus(tmp_path / "orig", "orig", {"train": 50, "val": 5, "test": 5})
    return own, original


def make(own: Path, tmp_path: Path, **options) -> TranslationData:
    return TranslationData(path=str(own), splits=SPLITS, vocab_size=300, max_tokens=256,
                           max_length=64, cache_dir=str(tmp_path / "cache"), **options)  # fmt: skip


def test_mixing_gives_the_asked_share_and_leaves_val_and_test_alone(corpora, tmp_path, caplog):
    own, original = corpora
    with caplog.at_level(logging.INFO):
        train = make(own, tmp_path, mix_with=str(original), mix_ratio=0.3).raw()["train"]
    sources = train["source"]
    mine = [s for s in sources if s.startswith("own train")]
    drawn = [s for s in sources if s.startswith("orig train")]
    assert sorted(mine) == sorted(f"own train en {i}" for i in range(100))  # all kept, once
    assert len(drawn) == 43 == len(set(drawn))  # round(0.3 * 100 / 0.7), without replacement
    assert len(drawn) / len(sources) == pytest.approx(0.3, abs=0.005)
    for source, target in zip(train["source"], train["target"], strict=True):
        assert target == source.replace(" en ", " de ")  # pairs stay aligned
    assert "100 pairs" in caplog.text and "43 of" in caplog.text  # the counts are reported
    mixed = make(own, tmp_path, mix_with=str(original), mix_ratio=0.3).raw()
    plain = make(own, tmp_path).raw()
    for stage in ("val", "test"):
        assert mixed[stage]["source"] == plain[stage]["source"]


def test_mixing_is_seeded(corpora, tmp_path):
    own, original = corpora

    def drawn(seed: int) -> list[str]:
        data = make(own, tmp_path, mix_with=str(original), mix_ratio=0.2, seed=seed)
        return [s for s in data.raw()["train"]["source"] if s.startswith("orig")]

    assert drawn(0) == drawn(0)
    assert sorted(drawn(0)) != sorted(drawn(1))


def test_more_than_the_original_holds_takes_whole_copies_then_a_draw():
    rows = mix_rows(n_own=100, n_other=30, ratio=0.6, seed=0)  # 150 rows from 30
    counts = Counter(rows.tolist())
    assert len(rows) == 150 and set(counts) == set(range(30))
    assert set(counts.values()) == {5}
    rows = mix_rows(n_own=100, n_other=40, ratio=0.6, seed=0)  # 150 = 3 copies + 30 drawn
    assert sorted(Counter(Counter(rows.tolist()).values()).items()) == [(3, 10), (4, 30)]
    assert len(mix_rows(n_own=100, n_other=40, ratio=0.0, seed=0)) == 0


def test_the_cache_keys_include_the_mixing(corpora, tmp_path):
    own, original = corpora
    plain = make(own, tmp_path)
    mixed = [make(own, tmp_path, mix_with=str(original), mix_ratio=r) for r in (0.2, 0.3)]
    prints = {d.raw_fingerprint("train") for d in (plain, *mixed)}
    assert len(prints) == 3
    assert mixed[0].raw_fingerprint("val") == plain.raw_fingerprint("val")
    mixed[0].setup("fit")  # tokenizer trained on the mixed train split, all splits tokenized
    assert len(mixed[0].datasets["train"]) == 125  # 100 own + round(0.2 * 100 / 0.8)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"mix_with": "x", "mix_ratio": 1.0}, "mix_ratio=1.0"),
        ({"mix_with": "x", "mix_ratio": -0.1}, "mix_ratio=-0.1"),
        ({"mix_with": "x", "mix_ratio": float("nan")}, "mix_ratio=nan"),
        ({"mix_with": "x"}, "mix_with='x' needs mix_ratio"),
        ({"mix_ratio": 0.3}, "needs mix_with"),
    ],
)
def test_bad_mixing_options_are_named(tmp_path, options, named):
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        make(tmp_path, tmp_path, **options)


def test_the_command_line_takes_the_mixing_options(corpora, tmp_path, monkeypatch):
    from seqkit.lit.cli import cli_main

    own, original = corpora
    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "finetune.yaml"
    cli = cli_main(["--config", str(recipe), f"--data.path={own}", "--data.held_out=0",
                    f"--data.mix_with={original}", "--data.mix_ratio=0.3"], run=False)  # fmt: skip
    assert (cli.datamodule.mix_with, cli.datamodule.mix_ratio) == (str(original), 0.3)
    assert cli.datamodule.hparams["mix_ratio"] == 0.3
