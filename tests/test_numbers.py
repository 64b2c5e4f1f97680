"""The number-words corpus: correct German, disjoint seeded splits, cached generation."""

from pathlib import Path

import pytest

from seqkit.data import numbers
from seqkit.data.numbers import NumberWordsData, number_pairs, sample_numbers

SIZES = {"train": 300, "val": 40, "test": 40}


@pytest.mark.parametrize(
    ("number", "english", "german"),
    [
        (0, "zero", "null"),
        (1, "one", "eins"),
        (21, "twenty-one", "einundzwanzig"),
        (101, "one hundred and one", "einhunderteins"),
        (1001, "one thousand and one", "eintausendeins"),
        (
            342105,
            "three hundred and forty-two thousand, one hundred and five",
            "dreihundertzweiundvierzigtausendeinhundertfünf",
        ),
        (999999, "nine hundred and ninety-nine thousand, nine hundred and ninety-nine",
         "neunhundertneunundneunzigtausendneunhundertneunundneunzig"),
    ],
)  # fmt: skip
def test_number_words(number: int, english: str, german: str) -> None:
    assert number_pairs([number]) == ([english], [german])


def test_splits_are_disjoint_sized_and_seeded() -> None:
    split = sample_numbers(SIZES, 0, 999, seed=7)
    assert {stage: len(values) for stage, values in split.items()} == SIZES
    assert len(set().union(*split.values())) == sum(SIZES.values())
    assert all(0 <= n <= 999 for values in split.values() for n in values)
    assert sample_numbers(SIZES, 0, 999, seed=7) == split
    assert sample_numbers(SIZES, 0, 999, seed=8) != split


def test_range_must_hold_the_splits() -> None:
    with pytest.raises(ValueError, match="holds 100 numbers"):
        NumberWordsData(n_train=90, n_val=10, n_test=1, low=0, high=99)
    with pytest.raises(ValueError, match="at least one"):
        NumberWordsData(n_val=0)


def make(tmp_path: Path, **kwargs) -> NumberWordsData:
    sizes = {"n_train": 300, "n_val": 40, "n_test": 40, **kwargs}
    return NumberWordsData(**sizes, cache_dir=str(tmp_path / "cache"))


def test_raw_splits_are_deterministic_and_cached(tmp_path: Path, monkeypatch) -> None:
    raw = make(tmp_path).raw()
    assert {stage: len(data) for stage, data in raw.items()} == SIZES
    sources = [set(data["source"]) for data in raw.values()]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    other = make(tmp_path / "elsewhere").raw()  # fresh cache: generated again, same text
    assert all(other[stage]["target"] == raw[stage]["target"] for stage in SIZES)
    assert make(tmp_path / "third", seed=5).raw()["train"]["source"] != raw["train"]["source"]
    monkeypatch.setattr(numbers, "number_pairs", lambda n: pytest.fail("not read from cache"))
    assert make(tmp_path).raw()["val"]["source"] == raw["val"]["source"]


def test_batches_decode_to_the_german_words(tmp_path: Path) -> None:
    data = make(tmp_path)
    data.setup()
    assert data.src_vocab_size <= 1000
    batch = next(iter(data.val_dataloader()))
    assert data.tokenizers.decode_target(batch["tgt_out"]) == batch["tgt_text"]
    assert data.tokenizers.decode_source(batch["src"]) == batch["src_text"]


def test_hyperparameters_rebuild_the_module(tmp_path: Path) -> None:
    # load_from_checkpoint calls NumberWordsData(**hparams): only its own arguments may be there.
    data = make(tmp_path, seed=3)
    assert NumberWordsData(**data.hparams).raw()["test"]["source"] == data.raw()["test"]["source"]
