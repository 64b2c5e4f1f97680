"""Generated inputs through every reader (hypothesis): each either loads, and the test checks
what loaded, or raises seqkit's own error naming the file. Never another exception, never a
hang. EXAMPLES below is the count README reports."""

import gzip
import json
import shutil
import struct
import tempfile
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqkit.data.images import IDX_IMAGES, read_idx
from seqkit.data.sources import load_pairs, read_lines
from seqkit.data.tokenizer import SPECIAL_TOKENS, Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.errors import DataError
from seqkit.pretrained import load_network
from seqkit.translator import Translator

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
EXAMPLES = {
    "lines": 300,
    "text_pair": 200,
    "table": 250,
    "idx": 150,
    "config": 150,
    "tokenizer": 150,
    "translate": 100,
}
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": SLOW}
# Text as users' files hold it: any Unicode, control characters, BOMs, CR, NUL, tabs.
TRICKY = st.sampled_from(["\r", "\x00", "\ufeff", "\t", "\x0b", "\x1c", "\u2028", " ", "<s>"])
LINE = st.lists(st.one_of(st.characters(blacklist_characters="\n"), TRICKY), max_size=30).map(
    "".join
)


def tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="seqkit-fuzz-"))


def expected_lines(lines: list[str]) -> list[str]:
    """What reading back `lines`, written one per line with "\\n", must give."""
    out = [line[:-1] if line.endswith("\r") else line for line in lines]
    if out and out[0].startswith("\ufeff"):
        out[0] = out[0][1:]
    return out


@settings(max_examples=EXAMPLES["lines"], **SETTINGS)
@given(lines=st.lists(LINE, max_size=8), raw=st.binary(max_size=60),
       kind=st.sampled_from(["text", "bytes", "gz", "cut-gz"]))  # fmt: skip
def test_lines_load_exactly_or_are_refused_naming_the_file(lines, raw, kind):
    folder = tmpdir()
    try:
        path = folder / ("in.txt.gz" if "gz" in kind else "in.txt")
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        data = raw if kind == "bytes" else data
        if "gz" in kind:
            data = gzip.compress(data)
            data = data[: len(data) // 2] if kind == "cut-gz" else data
        path.write_bytes(data)
        try:
            got = read_lines(path, allow_empty=True)
        except DataError as err:
            assert str(path) in str(err)
            assert kind in ("bytes", "cut-gz") or not data
            return
        if kind in ("text", "gz"):
            assert got == expected_lines(lines)
        else:  # bytes that decoded: the same text, split at "\n" only
            text = raw.decode("utf-8") if kind == "bytes" else None
            assert text is None or "\n".join(got) == expected_text(text)
    finally:
        shutil.rmtree(folder)


def expected_text(text: str) -> str:
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return "\n".join(expected_lines(lines))


@settings(max_examples=EXAMPLES["text_pair"], **SETTINGS)
@given(source=st.lists(LINE, min_size=0, max_size=6), target=st.lists(LINE, max_size=6),
       gz=st.booleans())  # fmt: skip
def test_parallel_text_files_load_aligned_or_are_refused(source, target, gz):
    folder = tmpdir()
    try:
        suffix = ".gz" if gz else ""
        for lang, lines in (("en", source), ("de", target)):
            data = "".join(line + "\n" for line in lines).encode("utf-8")
            (folder / f"train.{lang}{suffix}").write_bytes(gzip.compress(data) if gz else data)
        try:
            pairs = load_pairs(str(folder), "en", "de", {"train": "train"})["train"]
        except DataError as err:
            assert f"train.en{suffix}" in str(err) or f"train.de{suffix}" in str(err)
            src, tgt = expected_lines(source), expected_lines(target)
            assert len(src) != len(tgt) or not src or any(not s.strip() for s in src + tgt)
            return
        assert list(pairs["source"]) == expected_lines(source)
        assert list(pairs["target"]) == expected_lines(target)
    finally:
        shutil.rmtree(folder)


CELL = st.one_of(LINE, st.none(), st.integers(-5, 5))


@settings(max_examples=EXAMPLES["table"], **SETTINGS)
@given(rows=st.lists(st.fixed_dictionaries({"en": CELL, "de": CELL}, optional={"x": CELL}),
                     max_size=5),
       fmt=st.sampled_from([".tsv", ".csv", ".jsonl", ".parquet"]),
       drop=st.sampled_from([None, "en", "de"]))  # fmt: skip
def test_tables_load_their_cells_or_are_refused_naming_the_file(rows, fmt, drop):
    folder = tmpdir()
    try:
        path = folder / f"pairs{fmt}"
        columns = [c for c in ("en", "de", "x") if c != drop and any(c in r for r in rows)]
        columns = columns or ["en"]
        write_table(path, rows, columns)
        try:
            pairs = load_pairs(str(path), "en", "de", {"train": "train"})["train"]
        except DataError as err:
            assert str(path) in str(err)
            return
        source, target = list(pairs["source"]), list(pairs["target"])
        assert "en" in columns and "de" in columns
        assert all(isinstance(s, str) and s.strip() for s in source + target)
        assert len(pairs) == len(rows) > 0
        if fmt in (".jsonl", ".parquet"):  # typed formats: the cells exactly
            assert source == [str(r["en"]) for r in rows]
            assert target == [str(r["de"]) for r in rows]
    finally:
        shutil.rmtree(folder)


def write_table(path: Path, rows: list[dict], columns: list[str]) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({c: r.get(c) for c in columns}) + "\n" for r in rows))
    elif path.suffix == ".parquet":
        table = {c: [None if r.get(c) is None else str(r.get(c)) for r in rows] for c in columns}
        pq.write_table(pa.table(table) if rows else pa.table({c: [] for c in columns}), path)
    else:
        sep = "\t" if path.suffix == ".tsv" else ","
        cells = [[str(r.get(c, "")) if r.get(c) is not None else "" for c in columns] for r in rows]
        path.write_text("\n".join(sep.join(line) for line in [columns, *cells]) + "\n")


@settings(max_examples=EXAMPLES["idx"], **SETTINGS)
@given(dims=st.lists(st.integers(0, 5), min_size=0, max_size=4), extra=st.integers(-3, 3),
       magic=st.sampled_from([IDX_IMAGES, 0x00000801, 0x00000803 + 0x100, 0]),
       gz=st.booleans())  # fmt: skip
def test_idx_files_load_their_declared_shape_or_are_refused(dims, extra, magic, gz):
    folder = tmpdir()
    try:
        header = struct.pack(">I", (magic & ~0xFF) | len(dims) if magic else 0)
        header += struct.pack(f">{len(dims)}I", *dims)
        body = bytes(max(0, int(np.prod(dims)) + extra)) if dims else bytes(max(0, extra))
        path = folder / ("x-images-idx3-ubyte" + (".gz" if gz else ""))
        data = header + body
        path.write_bytes(gzip.compress(data) if gz else data)
        try:
            array = read_idx(path, IDX_IMAGES)
        except DataError as err:
            assert str(path) in str(err)
            return
        assert array.shape == (*dims,) and len(dims) == 3 and len(body) == np.prod(dims)
    finally:
        shutil.rmtree(folder)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model") / "model"
    shutil.copytree(LEGACY / "transformer", directory)
    return directory


@settings(max_examples=EXAMPLES["config"], suppress_health_check=list(HealthCheck),
          deadline=None, derandomize=True)  # fmt: skip
@given(where=st.sampled_from(["", "config", "decoding", "model_type"]), key=st.text(max_size=12),
       value=JSON, field=st.sampled_from(["d_model", "n_heads", "max_positions",
                                          "src_vocab_size", "beam_size", "max_len"]))  # fmt: skip
def test_a_mangled_config_json_loads_or_is_refused_naming_it(model_dir, where, key, value, field):
    folder = tmpdir()
    try:
        directory = folder / "model"
        shutil.copytree(model_dir, directory)
        meta = json.loads((directory / "config.json").read_text())
        if where == "":
            meta = value
        elif where == "model_type":
            meta["model_type"] = value
        else:
            section = meta[where]
            section[field if field in section else key] = value
        (directory / "config.json").write_text(json.dumps(meta))
        try:
            translator = Translator.from_pretrained(directory)
        except (ValueError, FileNotFoundError) as err:
            assert "config.json" in str(err) or "model.safetensors" in str(err)
            return
        assert translator.translate(["seven"], DecodingConfig(beam_size=1, max_len=2))
    finally:
        shutil.rmtree(folder)


def json_paths(node, prefix: tuple = ()) -> list[tuple]:
    """Every place in a tokenizer's JSON, vocab and merges as wholes."""
    if isinstance(node, list):
        node = dict(enumerate(node))
    if not isinstance(node, dict) or prefix[-1:] in (("vocab",), ("merges",)):
        return [prefix]
    return [prefix] + [p for key, child in node.items() for p in json_paths(child, (*prefix, key))]


TOKENIZER_FILES = {"transformer": ["tokenizer.json"],
                   "gru-bahdanau": ["source_tokenizer.json", "target_tokenizer.json"]}  # fmt: skip
PLACES = json_paths(json.loads((LEGACY / "transformer" / "tokenizer.json").read_text()))


def mutate(text: str, how: str, where: int, value, token: str | int, token_id: int) -> str:
    """`text`, a tokenizer's JSON, with one thing changed: cut at `where`, `where` tokens
    more, `token` (by name, or the n-th) given `token_id` or dropped, or the `where`-th place
    in the JSON replaced by `value`."""
    data = json.loads(text)
    vocab = data["model"]["vocab"]
    token = token if isinstance(token, str) else sorted(vocab)[token % len(vocab)]
    if how == "cut":
        return text[: where % len(text)]
    if how == "grow":  # tokens config.json does not count: up to an enormous vocabulary
        vocab.update({f"x{i}": len(vocab) + i for i in range(where % 5_000)})
    elif how == "id":
        vocab[token] = token_id
    elif how == "drop":
        del vocab[token]
        data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != token]
    else:
        *path, last = PLACES[where % len(PLACES)] or [None]
        node = data
        for key in path:
            node = node[key]
        if last is None:
            data = value
        else:
            node[last] = value
    return json.dumps(data)


@settings(max_examples=EXAMPLES["tokenizer"], suppress_health_check=list(HealthCheck),
          deadline=None, derandomize=True)  # fmt: skip
@given(name=st.sampled_from(sorted(TOKENIZER_FILES)), side=st.integers(0, 1),
       how=st.sampled_from(["replace", "id", "drop", "grow", "cut"]), where=st.integers(0, 10**6),
       value=JSON, token=st.sampled_from(SPECIAL_TOKENS) | st.integers(0, 300),
       token_id=st.integers(-2, 300) | st.just(10**9))  # fmt: skip
def test_a_mangled_tokenizer_json_loads_or_is_refused_before_the_weights(
    name, side, how, where, value, token, token_id
):
    folder = tmpdir()
    try:
        directory = Path(shutil.copytree(LEGACY / name, folder / name))
        files = TOKENIZER_FILES[name]
        path = directory / files[side % len(files)]
        path.write_text(mutate(path.read_text(), how, where, value, token, token_id))
        texts = {file: (directory / file).read_text() for file in files}
        try:  # as a checkpoint's tokenizers: checked alike, named by file name
            Tokenizers.from_dict(texts)
            checkpoint_refused = False
        except DataError as err:
            assert str(err).startswith(f"{path.name}: ")
            checkpoint_refused = True
        with patch("seqkit.translator.load_network", wraps=load_network) as loading:
            try:
                translator = Translator.from_pretrained(directory)
            except DataError as err:
                assert str(err).startswith(f"{path}: ") and not loading.called
                return
        assert not checkpoint_refused
        assert translator.translate(["seven"], DecodingConfig(beam_size=1, max_len=2))
    finally:
        shutil.rmtree(folder)


@pytest.fixture(scope="module")
def translator() -> Translator:
    return Translator.from_pretrained(LEGACY / "transformer")


@settings(max_examples=EXAMPLES["translate"], suppress_health_check=list(HealthCheck),
          deadline=None, derandomize=True)  # fmt: skip
@given(lines=st.lists(st.one_of(LINE, st.text(max_size=300)), max_size=6),
       chunk=st.integers(1, 4), budget=st.integers(1, 64))  # fmt: skip
def test_translate_gives_one_output_per_input_in_order(translator, lines, chunk, budget):
    decoding = DecodingConfig(beam_size=1, max_len=2)
    out = list(translator.translate_stream(lines, decoding, chunk_size=chunk, max_tokens=budget))
    assert len(out) == len(lines)
    for line, translation in zip(lines, out, strict=True):
        assert (translation.text == "") == (not line.strip()) or translation.text == ""
        assert len(translation.hypotheses) == 1
    assert [t.text for t in out] == [t.text for t in translator.translate_stream(lines, decoding)]
