"""Tokens per word: how finely a tokenizer cuts a text, against the model's own training data.

Byte-level BPE encodes any text, but a language its merges were not learned on falls back to
short pieces: longer sequences, slower training and a harder task. The rate is measured per
whitespace-separated word (Rust et al., 2021, "How good is your tokenizer?", call it
fertility). A model records its own training data's rates in config.json's provenance
(`tokens_per_word`); `seqkit fit` with `init_from` and `seqkit inspect-data` compare new
data against them and name the remedy, `--data.extend_vocab N`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

FACTOR = 1.5
"""A side cut into more than this many times its old rate of tokens per word is warned about."""
REMEDY = "--data.extend_vocab N"
SAMPLE = 100_000
"""Pairs a data module measures at most (the first ones of the split)."""
SIDES = ("source", "target")


def tokens_per_word(tokenizer: Tokenizer, texts: Sequence[str]) -> float:
    """Tokens (EOS not counted) per whitespace-separated word over all of `texts`; 0.0 when
    they hold no word."""
    words = sum(len(text.split()) for text in texts)
    if not words:
        return 0.0
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return sum(len(e.ids) for e in encodings) / words


def side_rates(tokenizers, sources: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """{"source": rate, "target": rate} of parallel text under a `Tokenizers` pair, rounded to
    4 places (what config.json's provenance records)."""
    return {
        "source": round(tokens_per_word(tokenizers.source, sources), 4),
        "target": round(tokens_per_word(tokenizers.target, targets), 4),
    }


def _provenance(directory: str | Path | None) -> dict:
    path = Path(directory) / "config.json" if directory else None
    if path is None or not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}  # the model loader names a broken config.json; a report does without
    provenance = meta.get("provenance") if isinstance(meta, dict) else None
    return provenance if isinstance(provenance, dict) else {}


def recorded_rates(directory: str | Path | None) -> dict[str, float] | None:
    """The tokens per word of the training data of the model in `directory` (config.json's
    provenance), or None: directories written before seqkit recorded them, tokenizer-only
    directories, or values that are not positive numbers."""
    rates = _provenance(directory).get("tokens_per_word")
    if not isinstance(rates, dict):
        return None
    values = {side: rates.get(side) for side in SIDES}
    if all(isinstance(v, int | float) and v > 0 for v in values.values()):
        return {side: float(v) for side, v in values.items()}
    return None


def recorded_languages(directory: str | Path | None) -> dict[str, str]:
    """{"source": code, "target": code} the model in `directory` was trained on, as its
    provenance names them; {} when it does not."""
    data = _provenance(directory).get("data")
    data = data if isinstance(data, dict) else {}
    langs = {"source": data.get("src_lang"), "target": data.get("tgt_lang")}
    return langs if all(isinstance(v, str) for v in langs.values()) else {}


@dataclass(frozen=True)
class SideReport:
    """One side of new data against the model's own training data."""

    side: str
    """"source" or "target"."""
    language: str
    """The new data's language code on this side."""
    rate: float
    """Tokens per word of the new data with the model's tokenizer."""
    own: float | None
    """Tokens per word of the model's own training data on this side; None if unrecorded."""
    extended: float | None = None
    """Tokens per word with the extended tokenizer (`extend_vocab`); None without one."""

    @property
    def used(self) -> float:
        """The rate of the tokenizer training will use."""
        return self.extended if self.extended is not None else self.rate

    @property
    def ratio(self) -> float | None:
        return self.used / self.own if self.own else None


def report(sides: list[SideReport], extend_vocab: int = 0) -> tuple[str, list[str]]:
    """A table of tokens per word for each side, and one warning for each side cut into more
    than `FACTOR` times its old rate, naming the remedy."""
    extended = any(s.extended is not None for s in sides)
    head = f"{'side':<8}{'lang':<7}{'model tokenizer':>16}"
    head += f"{'extended':>10}" * extended + f"{'model own data':>16}{'ratio':>7}"
    lines = ["tokens per word (whitespace-separated words)", head]
    warnings = []
    for s in sides:
        row = f"{s.side:<8}{s.language:<7}{s.rate:>16.2f}"
        row += (f"{s.extended:>10.2f}" if s.extended is not None else f"{'':>10}") * extended
        own = f"{s.own:.2f}" if s.own else "unknown"
        ratio = f"{s.ratio:.2f}" if s.ratio is not None else "-"
        lines.append(f"{row}{own:>16}{ratio:>7}")
        if s.ratio is not None and s.ratio > FACTOR:
            warnings.append(_warning(s, extend_vocab))
    return "\n".join(lines), warnings


def _warning(s: SideReport, extend_vocab: int) -> str:
    what = "the extended tokenizer" if s.extended is not None else "the model's tokenizer"
    remedy = (
        f"raise --data.extend_vocab (now {extend_vocab})"
        if extend_vocab
        else f"learn merges for it with {REMEDY} (e.g. 2000)"
    )
    return (
        f"{s.side} side ({s.language}): {s.used:.2f} tokens per word with {what}, "
        f"{s.ratio:.1f}x the {s.own:.2f} of the model's own training data: it cuts this "
        f"text into short pieces (longer sequences, slower and weaker training); {remedy}"
    )
