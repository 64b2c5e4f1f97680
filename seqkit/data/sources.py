"""Read raw parallel text (text files, tables, or a Hugging Face dataset) and reject bad input."""

from __future__ import annotations

import csv
import functools
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import datasets
import pyarrow.parquet as pq

from seqkit.errors import DataError
from seqkit.textio import iter_lines

TABLE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
# Where a row of a table sits, for error messages: "file:LINE" or "file: row N".
Locate = Callable[[int], str]


def load_pairs(
    path: str,
    src_lang: str,
    tgt_lang: str,
    splits: dict[str, str],
    source_column: str | None = None,
    target_column: str | None = None,
) -> dict[str, datasets.Dataset]:
    """Read parallel text for each stage of `splits` (stage -> split name).

    `path` is one of:
      1. a directory with aligned text files `SPLIT.LANG` or `SPLIT.LANG.gz`, one sentence
         per line (the Multi30k layout), or one table `SPLIT.{tsv,csv,jsonl,json,parquet}`
         per split;
      2. a single table file: it is one split and feeds every stage in `splits` (pass e.g.
         `splits={"test": "test"}` to evaluate on it; nothing is held out automatically);
      3. otherwise a Hugging Face dataset name, `name` or `name:config`, read with
         `datasets.load_dataset`; its split names are the values of `splits`.
    Tables take the columns `source_column`/`target_column` (default: the language codes), or,
    when those are absent, a `translation` column of `{lang: text}` dicts (the WMT layout).

    Returns stage -> Dataset with string columns `source` and `target`. Raises DataError, naming
    the file (and line), for a missing file, undecodable bytes, an empty file or sentence,
    files of different lengths, or a missing column. Nothing is dropped or stripped, except
    the newline that ends each text line.
    """
    columns = (source_column or src_lang, target_column or tgt_lang)
    explicit = source_column is not None or target_column is not None
    local = Path(path).expanduser()
    if local.is_dir():
        return {
            stage: _read_split_dir(local, split, (src_lang, tgt_lang), columns, explicit)
            for stage, split in splits.items()
        }
    if local.is_file():
        if local.suffix not in TABLE_SUFFIXES:
            raise DataError(
                f"{local}: unknown file type; give a table ({', '.join(TABLE_SUFFIXES)}) "
                f"or a directory of SPLIT.{src_lang} / SPLIT.{tgt_lang} text files"
            )
        if "train" in splits and len(splits) > 1:
            # Evaluating on the training rows is allowed (e.g. overfitting checks) but never silent.
            warnings.warn(
                f"{local} is one file: stages {list(splits)} read the same rows", stacklevel=2
            )
        pairs = _read_table(local, (src_lang, tgt_lang), columns, explicit)
        return dict.fromkeys(splits, pairs)
    return _read_hub(path, splits, (src_lang, tgt_lang), columns, explicit)


def _pairs(source: list[str], target: list[str]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"source": source, "target": target})


# --- plain text files -------------------------------------------------------------------------


def read_lines(
    source: str | Path | BinaryIO, *, name: str | None = None, allow_empty: bool = False
) -> list[str]:
    """Every line of `iter_lines` (UTF-8, gunzipped if the name ends in .gz, without `\n` or
    `\r\n`). An empty input or an empty line is a DataError unless `allow_empty` (for text
    to translate, where blank lines stay blank)."""
    if isinstance(source, str | Path):
        label = name or str(source)
    else:
        label = name or str(getattr(source, "name", "<stream>"))
    lines = list(iter_lines(source, name=label))
    if not allow_empty:
        if not any(line.strip() for line in lines):
            raise DataError(f"{label}: empty file")
        _check_texts(lines, lambda i: f"{label}:{i + 1}")
    return lines


def _utf8(raw: bytes, label: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataError(f"{label}:{line}: not UTF-8 ({error.reason}); re-encode the file") from None


def _read_text_pair(source_file: Path, target_file: Path) -> datasets.Dataset:
    source, target = read_lines(source_file), read_lines(target_file)
    if len(source) != len(target):
        raise DataError(
            f"{source_file} has {len(source)} lines but {target_file} has {len(target)}: "
            "parallel files must be aligned line by line"
        )
    return _pairs(source, target)


def _find(directory: Path, names: list[str]) -> Path | None:
    return next((directory / name for name in names if (directory / name).is_file()), None)


def _read_split_dir(
    directory: Path, split: str, langs: tuple[str, str], columns: tuple[str, str], explicit: bool
) -> datasets.Dataset:
    text_files = [_find(directory, [f"{split}.{lang}", f"{split}.{lang}.gz"]) for lang in langs]
    if all(text_files):
        return _read_text_pair(*text_files)
    table = _find(directory, [f"{split}{suffix}" for suffix in TABLE_SUFFIXES])
    if table is not None:
        return _read_table(table, langs, columns, explicit)
    src, tgt = langs
    raise DataError(
        f"{directory}: no data for split {split!r}; expected {split}.{src} and {split}.{tgt} "
        f"(optionally .gz) or one of {', '.join(split + suffix for suffix in TABLE_SUFFIXES)}"
    )


# --- tables -----------------------------------------------------------------------------------


def _read_table(
    path: Path, langs: tuple[str, str], columns: tuple[str, str], explicit: bool
) -> datasets.Dataset:
    if path.suffix == ".parquet":
        try:
            table = pq.read_table(path).to_pydict()
        except Exception as error:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: not a readable Parquet file ({error})") from error
        rows, locate = table, (lambda i: f"{path}: row {i + 1}")
    elif path.suffix in (".tsv", ".csv"):
        rows, locate = _read_csv(path)
    else:
        rows, locate = _read_json(path)
    if not rows or not len(next(iter(rows.values()))):
        raise DataError(f"{path}: empty file (no rows)")
    source, target = _select(rows, str(path), langs, columns, explicit, locate)
    return _pairs(source, target)


def _decode(path: Path) -> str:
    """The UTF-8 text of a table file, without a leading byte order mark (Excel's "CSV UTF-8"
    writes one), as `iter_lines` reads text files."""
    try:
        return _utf8(path.read_bytes(), str(path)).removeprefix("\ufeff")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error


def _read_csv(path: Path) -> tuple[dict[str, list[Any]], Locate]:
    text = _decode(path)
    # TSV: no quoting, so sentences may hold quote characters; CSV: standard quoting.
    quoting = csv.QUOTE_NONE if path.suffix == ".tsv" else csv.QUOTE_MINIMAL
    delimiter = "\t" if path.suffix == ".tsv" else ","
    # newline="" as the csv module asks: quoted fields may hold line breaks.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{path}: empty file (no header)")
    rows: dict[str, list[Any]] = {name: [] for name in header}
    lines = []  # first line of each row: a quoted CSV field may span lines
    start = reader.line_num + 1
    for record in reader:
        if not record:
            raise DataError(f"{path}:{start}: empty line; remove it")
        if len(record) != len(header):
            raise DataError(
                f"{path}:{start}: {len(record)} fields, but the header has {len(header)}"
            )
        lines.append(start)
        for name, value in zip(header, record, strict=True):
            rows[name].append(value)
        start = reader.line_num + 1
    return rows, lambda i: f"{path}:{lines[i]}"


def _read_json(path: Path) -> tuple[dict[str, list[Any]], Locate]:
    text = _decode(path)
    if text.lstrip().startswith("["):  # one JSON array of records
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
        numbers = list(range(1, len(records) + 1))
        where = "record"
    else:  # JSON lines; blank lines are not records
        records, numbers = [], []
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: invalid JSON ({error.msg})") from None
            numbers.append(number)
        where = "line"
    for record, number in zip(records, numbers, strict=True):
        if not isinstance(record, dict):
            raise DataError(f"{path}: {where} {number}: expected a JSON object, got {record!r:.60}")
    names = list(dict.fromkeys(name for record in records for name in record))
    rows = {name: [record.get(name) for record in records] for name in names}
    if where == "line":
        return rows, lambda i: f"{path}:{numbers[i]}"
    return rows, lambda i: f"{path}: record {numbers[i]}"


def _select(
    rows: dict[str, list[Any]],
    name: str,
    langs: tuple[str, str],
    columns: tuple[str, str],
    explicit: bool,
    locate: Locate,
    available: list[str] | None = None,
) -> tuple[list[str], list[str]]:
    """The source and target texts of a table, checked; `available`: all its column names."""
    if not explicit and columns[0] not in rows and "translation" in rows:
        values = rows["translation"]
        for i, value in enumerate(values):
            if not isinstance(value, dict) or any(lang not in value for lang in langs):
                raise DataError(f"{locate(i)}: 'translation' must map {langs} to texts")
        source, target = ([value[lang] for value in values] for lang in langs)
    else:
        missing = [column for column in columns if column not in rows]
        if missing:
            raise DataError(
                f"{name}: no column {' or '.join(map(repr, missing))}; columns are "
                f"{available or list(rows)} (choose with source_column=/target_column=)"
            )
        source, target = rows[columns[0]], rows[columns[1]]
    _check_texts(source, locate)
    _check_texts(target, locate)
    return source, target


def _check_texts(texts: list[Any], locate: Locate) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{locate(i)}: expected text, got {text!r:.60}")
        if not text.strip():
            raise DataError(f"{locate(i)}: empty sentence; remove the pair or fill it in")


# --- Hugging Face datasets --------------------------------------------------------------------


def _read_hub(
    name: str,
    splits: dict[str, str],
    langs: tuple[str, str],
    columns: tuple[str, str],
    explicit: bool,
) -> dict[str, datasets.Dataset]:
    dataset_name, _, config = name.partition(":")
    try:
        loaded = datasets.load_dataset(dataset_name, config or None)
    except Exception as error:  # offline, unknown name, bad config: all end up here
        raise DataError(
            f"{name}: no such file or directory, and not a loadable Hugging Face dataset "
            f"name ({type(error).__name__}: {error})"
        ) from error
    result = {}
    for stage, split in splits.items():
        if split not in loaded:
            raise DataError(f"{name}: no split {split!r}; splits are {list(loaded)}")
        dataset = loaded[split]
        # Read only the columns needed: others may be large (images, audio).
        wanted = [c for c in dataset.column_names if c in columns or c == "translation"]
        rows = read_columns(dataset, wanted)
        texts = _select(
            rows,
            f"{name}[{split}]",
            langs,
            columns,
            explicit,
            functools.partial(_hub_row, f"{name}[{split}]"),
            dataset.column_names,
        )
        result[stage] = _pairs(*texts)
    return result


def read_columns(dataset: datasets.Dataset, names: list[str]) -> dict[str, list[Any]]:
    """Columns as Python lists in one Arrow read (iterating `dataset[name]` is row by row)."""
    return dataset.select_columns(names)[:]


def _hub_row(name: str, i: int) -> str:
    return f"{name}: row {i + 1}"  # a row number is the only location a hub dataset has
