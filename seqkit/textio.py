"""Plain text in and out, line by line: UTF-8, gzip by name, errors naming file and line."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO

from seqkit.errors import DataError

BOM = "\ufeff"


def iter_lines(source: str | Path | BinaryIO, *, name: str | None = None) -> Iterator[str]:
    """Lines of UTF-8 text as they are read, each without its `\\n` or `\\r\\n` (nothing else
    ends a line: `\\x0b`, `\\x1c` or `\\u2028` inside a sentence stay in it), gunzipped if
    the name ends in .gz, a byte-order mark at the start dropped. Memory holds one line.

    `source` is a path or a binary stream (e.g. `sys.stdin.buffer`; `name` labels it).

    Raises:
        DataError: naming the file (and line) for a missing or unreadable file, a corrupt
            or truncated gzip stream, or bytes that are not UTF-8.
    """
    path = Path(source) if isinstance(source, str | Path) else None
    label = name or (str(path) if path else str(getattr(source, "name", "<stream>")))
    number = 0
    try:
        stream = path.open("rb") if path else nullcontext(source)  # leave stdin open
        with (
            stream as opened,
            gzip.open(opened) if label.endswith(".gz") else nullcontext(opened) as lines,
        ):
            for number, raw in enumerate(lines, start=1):
                line = _utf8(raw, label, number)
                if number == 1 and line.startswith(BOM):
                    line = line[1:]
                yield line[:-1] if line.endswith("\n") else line
    except (OSError, EOFError, zlib.error) as error:  # missing, unreadable, corrupt gzip
        reason = getattr(error, "strerror", None) or error
        where = f"{label}:{number + 1}" if number else label
        raise DataError(f"{where}: cannot read ({reason})") from error


def _utf8(raw: bytes, label: str, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{label}:{number}: not UTF-8 ({error.reason}); re-encode the file"
        ) from None
    return text[:-2] + "\n" if text.endswith("\r\n") else text
