"""Raw parallel text (sources.py) and the TranslationData module (translation.py)."""

import csv
import gzip
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from seqkit.data import BOS, EOS, PAD, DataError, Tokenizers, TranslationData, load_pairs
from seqkit.data.sources import read_lines

EN = ["A dog runs.", "Two men, one hat.", " Leading space kept", "Tabs\tstay inside"]
DE = ["Ein Hund rennt.", "Zwei Männer, ein Hut.", "Führende Leerstelle ", "Tabs\tbleiben drin"]
ONE = {"train": "train"}


def write_text(path: Path, lines: list[str], newline: str = "\n") -> Path:
    data = "".join(line + newline for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def pairs(data: datasets.Dataset) -> list[tuple[str, str]]:
    return list(zip(data["source"], data["target"], strict=True))


# --- sources: good input ----------------------------------------------------------------------


def test_text_directory_plain_and_gzip(tmp_path: Path) -> None:
    write_text(tmp_path / "train.en", EN, newline="\r\n")
    write_text(tmp_path / "train.de", DE)
    write_text(tmp_path / "val.en.gz", EN[:2])
    write_text(tmp_path / "val.de.gz", DE[:2])
    loaded = load_pairs(str(tmp_path), "en", "de", {"train": "train", "val": "val"})
    # Only the line ending goes: leading/trailing spaces and tabs are text.
    assert pairs(loaded["train"]) == list(zip(EN, DE, strict=True))
    assert pairs(loaded["val"]) == list(zip(EN[:2], DE[:2], strict=True))


def test_reverse_direction_reads_the_other_files(tmp_path: Path) -> None:
    write_text(tmp_path / "train.en", EN)
    write_text(tmp_path / "train.de", DE)
    assert pairs(load_pairs(str(tmp_path), "de", "en", ONE)["train"])[0] == (DE[0], EN[0])


def write_table(path: Path, columns: dict[str, list]) -> Path:
    rows = [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
    if path.suffix == ".tsv":  # unquoted, as parallel corpora come
        lines = ["\t".join(columns), *("\t".join(row.values()) for row in rows)]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        pq.write_table(pa.table(columns), path)
    return path


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl", ".json", ".parquet"])
def test_table_files(tmp_path: Path, suffix: str) -> None:
    # Quotes and commas inside sentences must survive every format.
    en = [*EN[:2], 'He said "hi", then left.']
    de = [*DE[:2], "Er sagte „hallo“, dann ging er."]
    path = write_table(tmp_path / f"data{suffix}", {"id": ["1", "2", "3"], "en": en, "de": de})
    loaded = load_pairs(str(path), "en", "de", {"test": "data"})
    assert pairs(loaded["test"]) == list(zip(en, de, strict=True))


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".jsonl", ".json"])
def test_a_byte_order_mark_opening_a_table_is_read_as_in_text_files(tmp_path, suffix) -> None:
    # Before: "no column 'en'; columns are ['\ufeffen', 'de']" (CSV, TSV) or invalid JSON.
    path = write_table(tmp_path / f"data{suffix}", {"en": EN[:2], "de": DE[:2]})
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # as Excel's "CSV UTF-8" writes
    loaded = load_pairs(str(path), "en", "de", {"test": "data"})
    assert pairs(loaded["test"]) == list(zip(EN[:2], DE[:2], strict=True))


def test_table_with_named_columns_feeds_every_stage(tmp_path: Path) -> None:
    path = write_table(tmp_path / "d.jsonl", {"question": EN, "answer": DE})
    loaded = load_pairs(str(path), "en", "de", {"val": "d", "test": "d"}, "question", "answer")
    assert pairs(loaded["val"]) == pairs(loaded["test"]) == list(zip(EN, DE, strict=True))


def test_single_file_for_train_and_eval_warns(tmp_path: Path) -> None:
    path = write_table(tmp_path / "d.csv", {"en": EN, "de": DE})
    with pytest.warns(UserWarning, match="same rows"):
        loaded = load_pairs(str(path), "en", "de", {"train": "d", "val": "d"})
    assert pairs(loaded["train"]) == pairs(loaded["val"])


def test_directory_of_tables_per_split(tmp_path: Path) -> None:
    write_table(tmp_path / "train.tsv", {"en": EN[:3], "de": DE[:3]})
    write_table(tmp_path / "val.parquet", {"en": EN[:1], "de": DE[:1]})
    loaded = load_pairs(str(tmp_path), "en", "de", {"train": "train", "val": "val"})
    assert len(loaded["train"]) == 3 and pairs(loaded["val"]) == [(EN[0], DE[0])]


def test_translation_dict_column(tmp_path: Path) -> None:
    column = [{"de": d, "en": e} for e, d in zip(EN, DE, strict=True)]
    path = write_table(tmp_path / "wmt.jsonl", {"translation": column})
    assert pairs(load_pairs(str(path), "en", "de", ONE)["train"]) == list(zip(EN, DE, strict=True))


def test_hub_dataset_with_config(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_load_dataset(name: str, config: str | None) -> datasets.DatasetDict:
        calls.append((name, config))
        column = [{"de": d, "en": e} for e, d in zip(EN, DE, strict=True)]
        return datasets.DatasetDict(
            {"validation": datasets.Dataset.from_dict({"translation": column})}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_pairs("wmt14:de-en", "de", "en", {"val": "validation"})
    assert calls == [("wmt14", "de-en")]
    assert pairs(loaded["val"]) == list(zip(DE, EN, strict=True))
    with pytest.raises(DataError, match=r"no split 'test'.*validation"):
        load_pairs("wmt14:de-en", "de", "en", {"test": "test"})


def test_multi30k(multi30k: Path) -> None:
    splits = {"train": "train", "val": "val", "test": "test_2016_flickr"}
    loaded = load_pairs(str(multi30k), "en", "de", splits)
    assert [len(loaded[stage]) for stage in splits] == [29_000, 1_014, 1_000]
    assert loaded["train"][0]["source"] == "Two young, White males are outside near many bushes."


def test_read_lines_for_translation_keeps_blank_lines(tmp_path: Path) -> None:
    stream = io.BytesIO(b"eins\r\n\n  \nzwei\n")
    assert read_lines(stream, name="<stdin>", allow_empty=True) == ["eins", "", "  ", "zwei"]
    assert read_lines(io.BytesIO(b""), allow_empty=True) == []
    with pytest.raises(DataError, match="<stdin>:2: empty"):
        read_lines(io.BytesIO(b"a\n\n"), name="<stdin>")
    path = write_text(tmp_path / "x.de.gz", DE)
    assert read_lines(str(path)) == DE


# --- sources: bad input, each one DataError naming the file ----------------------------------


def load_error(path: Path, splits: dict[str, str] = ONE, **columns: str) -> str:
    with pytest.raises(DataError) as caught:
        load_pairs(str(path), "en", "de", splits, **columns)
    return str(caught.value)


def test_misaligned_files_name_both_files_and_counts(tmp_path: Path) -> None:
    write_text(tmp_path / "train.en", EN)
    write_text(tmp_path / "train.de.gz", DE[:3])
    message = load_error(tmp_path)
    assert all(part in message for part in ("train.en", "train.de.gz", " 4 ", " 3"))


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_empty_line_names_file_and_line(tmp_path: Path, blank: str) -> None:
    write_text(tmp_path / "train.en", EN)
    write_text(tmp_path / "train.de", [DE[0], DE[1], blank, DE[3]])
    assert re.search(r"train\.de:3: empty", load_error(tmp_path))


def test_bad_bytes_name_file_and_line(tmp_path: Path) -> None:
    write_text(tmp_path / "train.en", EN)
    (tmp_path / "train.de").write_bytes(
        "\n".join(DE[:2]).encode() + "\nGr\xfc\xdfe\n".encode("latin-1")
    )
    assert re.search(r"train\.de:3: not UTF-8", load_error(tmp_path))


def test_empty_file(tmp_path: Path) -> None:
    write_text(tmp_path / "train.en", EN)
    (tmp_path / "train.de").write_bytes(b"")
    assert re.search(r"train\.de: empty file", load_error(tmp_path))


def test_missing_split_names_the_expected_files(tmp_path: Path) -> None:
    write_text(tmp_path / "train.en", EN)
    message = load_error(tmp_path)
    assert str(tmp_path) in message and "train.de" in message and "train.tsv" in message


def test_missing_path(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nowhere")
    assert "nowhere" in message and "no such file" in message
    with pytest.raises(DataError, match=f"{tmp_path / 'gone.txt'}: cannot read"):
        read_lines(tmp_path / "gone.txt")


def test_unknown_file_type(tmp_path: Path) -> None:
    assert "unknown file type" in load_error(write_text(tmp_path / "corpus.txt", EN))


def test_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_table(tmp_path / "data.tsv", {"english": EN[:3], "de": DE[:3]})
    message = load_error(path)
    assert all(part in message for part in ("data.tsv", "'en'", "'english'", "'de'"))


@pytest.mark.parametrize(
    ("suffix", "where"),
    [(".tsv", "data.tsv:4"), (".jsonl", "data.jsonl:3"), (".parquet", "data.parquet: row 3")],
)
def test_empty_cell_names_file_and_line(tmp_path: Path, suffix: str, where: str) -> None:
    path = write_table(tmp_path / f"data{suffix}", {"en": EN[:3], "de": [DE[0], DE[1], " "]})
    assert f"{where}: empty sentence" in load_error(path)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("data.tsv", "en\tde\na\tb\nc\td\te\n", "data.tsv:3: 3 fields"),
        # A CSV row is located by its first line, though a quoted field spans two.
        ("data.csv", 'en,de\n"two\nlines",b\n\nc,d\n', "data.csv:4: empty line"),
        ("data.csv", 'en,de\n"two\nlines",b\nc,"",x\n', "data.csv:4: 3 fields"),
        ("data.csv", 'en,de\n"two\nlines",b\nc,""\n', "data.csv:4: empty sentence"),
        ("data.csv", "en,de\n", "data.csv: empty file"),
        ("data.jsonl", '{"en": "a", "de": "b"}\n{"en": "c",\n', "data.jsonl:2: invalid JSON"),
        ("data.json", '[{"en": "a", "de": "b"}, ["c", "d"]]', "data.json: record 2: expected"),
    ],
)
def test_malformed_tables(tmp_path: Path, name: str, content: str, expected: str) -> None:
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert expected in load_error(tmp_path / name)


# --- TranslationData ------------------------------------------------------------------------

WORDS_EN = ["the", "dog", "cat", "man", "woman", "child", "runs", "sits", "eats", "sees"]
WORDS_DE = ["der", "Hund", "Katze", "Mann", "Frau", "Kind", "rennt", "sitzt", "isst", "sieht"]


def sentences(words: list[str], count: int, start: int) -> list[str]:
    # Deterministic, varied lengths (3-14 words); every 17th one is long (30 words).
    result = []
    for i in range(start, start + count):
        length = 30 if i % 17 == 0 else 3 + i % 12
        result.append(" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(length)) + ".")
    return result


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    directory = tmp_path / "corpus"
    directory.mkdir()
    for split, count, start in (("train", 300, 0), ("val", 40, 1000), ("test", 30, 2000)):
        write_text(directory / f"{split}.en", sentences(WORDS_EN, count, start))
        write_text(directory / f"{split}.de", sentences(WORDS_DE, count, start))
    return directory


def make(corpus: Path, tmp_path: Path, **kwargs) -> TranslationData:
    options = {
        "path": str(corpus),
        "splits": {"train": "train", "val": "val", "test": "test"},
        "vocab_size": 300,
        "max_tokens": 256,
        "max_length": 128,
        "cache_dir": str(tmp_path / "cache"),
        **kwargs,
    }
    return TranslationData(**options)


def test_batches_follow_the_documented_format(corpus: Path, tmp_path: Path) -> None:
    data = make(corpus, tmp_path, max_length=128)
    data.prepare_data()
    data.setup("fit")
    raw = data.raw()["train"]
    seen = []
    for batch in data.train_dataloader():
        src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == torch.long
        assert tgt_in.shape == tgt_out.shape and src.shape[0] == tgt_in.shape[0]
        assert src.numel() <= 256 and tgt_out.numel() <= 256
        src_len = (src != PAD).sum(1)
        tgt_len = (tgt_out != PAD).sum(1)
        for row in range(src.shape[0]):
            s, n = src_len[row], tgt_len[row]
            assert src[row, s - 1] == EOS and (src[row, s:] == PAD).all()
            assert tgt_out[row, n - 1] == EOS and (tgt_out[row, n:] == PAD).all()
            assert tgt_in[row, 0] == BOS and (tgt_in[row, n:] == PAD).all()
            assert torch.equal(tgt_in[row, 1:n], tgt_out[row, : n - 1])
        index = batch["index"].tolist()
        assert (
            batch["src_text"] == raw[index]["source"] and batch["tgt_text"] == raw[index]["target"]
        )
        assert data.tokenizers.decode_target(tgt_out) == batch["tgt_text"]
        seen += index
    assert sorted(seen) == list(range(300))
    assert data.src_vocab_size == data.tgt_vocab_size <= 300


def test_eval_loaders_are_sorted_and_complete(corpus: Path, tmp_path: Path) -> None:
    data = make(corpus, tmp_path, eval_max_tokens=128)
    data.setup("validate")
    lengths = []
    for batch in data.val_dataloader():
        assert batch["src"].numel() <= 128
        lengths += torch.maximum(
            (batch["src"] != PAD).sum(1), (batch["tgt_out"] != PAD).sum(1)
        ).tolist()
    assert lengths == sorted(lengths) and len(lengths) == 40
    predicted = [i for batch in data.predict_dataloader() for i in batch["index"].tolist()]
    assert sorted(predicted) == list(range(30))


def overlong_counts(data: TranslationData, stage: str) -> int:
    raw = data.raw()[stage]
    src = data.tokenizers.encode_source(raw["source"])
    tgt = data.tokenizers.encode_target(raw["target"])
    return sum(max(len(s), len(t)) > data.max_length for s, t in zip(src, tgt, strict=True))


def test_truncation_is_reported_and_keeps_eos(corpus: Path, tmp_path: Path) -> None:
    data = make(corpus, tmp_path, max_length=12)
    with pytest.warns(UserWarning) as warned:
        data.setup("fit")
    expected = overlong_counts(data, "train")
    assert 0 < expected < 300
    assert any(f"train: truncated {expected} of 300" in str(w.message) for w in warned)
    for batch in data.train_dataloader():
        assert batch["src"].shape[1] <= 12 and batch["tgt_out"].shape[1] <= 12
        assert (batch["src"][:, -1] != PAD).sum() == (batch["src"][:, -1] == EOS).sum()
    assert len(data.datasets["train"]) == 300


def test_drop_applies_to_train_only(corpus: Path, tmp_path: Path) -> None:
    data = make(corpus, tmp_path, max_length=12, overlong="drop")
    with pytest.warns(UserWarning) as warned:
        data.setup("fit")
    dropped, truncated = overlong_counts(data, "train"), overlong_counts(data, "val")
    messages = [str(w.message) for w in warned]
    assert any(f"train: dropped {dropped} of 300" in m for m in messages)
    assert any(f"val: truncated {truncated} of 40" in m for m in messages)
    assert len(data.datasets["train"]) == 300 - dropped
    assert len(data.datasets["val"]) == 40 and len(data.datasets["test"]) == 30


def test_second_run_reuses_the_cache(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    first = make(corpus, tmp_path)
    first.prepare_data()
    first.setup()
    files = {stage: first.cache_file(stage) for stage in first.splits}
    assert all(path.is_file() for path in files.values())

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(datasets.Dataset, "map", fail)
    monkeypatch.setattr(Tokenizers, "train", fail)
    second = make(corpus, tmp_path)
    second.prepare_data()
    second.setup()
    assert second.tokenizers.fingerprint() == first.tokenizers.fingerprint()
    for stage in first.splits:
        assert second.datasets[stage][:] == first.datasets[stage][:]
    # Other settings or other text mean another cache entry.
    assert make(corpus, tmp_path, max_length=100).cache_file("val") != files["val"]
    write_text(corpus / "val.de", sentences(WORDS_DE, 40, 5000))
    assert make(corpus, tmp_path).cache_file("val") != files["val"]


def test_given_tokenizer_is_reused(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    trained = make(corpus, tmp_path, joint_vocab=False)
    trained.tokenizers.save(tmp_path / "tok")
    monkeypatch.setattr(Tokenizers, "train", lambda *a, **k: pytest.fail("trained a tokenizer"))
    data = make(corpus, tmp_path, tokenizer=str(tmp_path / "tok"), vocab_size=5000)
    data.setup()
    assert data.tokenizers.fingerprint() == trained.tokenizers.fingerprint()
    assert not data.tokenizers.joint
    assert data.src_vocab_size == trained.src_vocab_size <= 300


def test_eval_only_needs_a_tokenizer(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer="):
        make(corpus, tmp_path, splits={"test": "test"}).setup()


def test_rejects_budgets_below_max_length(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="eval_max_tokens=64"):
        make(corpus, tmp_path, max_length=100, eval_max_tokens=64)


def test_sampler_follows_the_trainer_ranks(corpus: Path, tmp_path: Path) -> None:
    data = make(corpus, tmp_path)
    data.trainer = SimpleNamespace(world_size=2, global_rank=1)
    sampler = data.train_dataloader().sampler
    assert (sampler.num_replicas, sampler.rank) == (2, 1)


def test_line_breaks_inside_training_sentences_are_reported(tmp_path: Path) -> None:
    rows = [{"en": "two lines", "de": "zwei\nZeilen"}]
    rows += [{"en": e, "de": d} for e, d in zip(EN[:30], DE[:30], strict=True)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    data = TranslationData(path=str(path), vocab_size=280, max_tokens=256, max_length=64,
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    data.prepare_data()
    with pytest.warns(UserWarning, match=r"1 pairs hold a line break inside a sentence \(rows 1\)"):
        data.setup("fit")
