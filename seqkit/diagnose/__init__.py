"""`seqkit diagnose WHAT ...`: instruments that show what a trained model does inside.

Each instrument is a module with a `main(argv)`, imported only when it is asked for; adding
one is one line of `INSTRUMENTS`.
"""

from __future__ import annotations

import importlib
import sys

INSTRUMENTS = {
    "attention": "seqkit.diagnose.attention:main",
    "gradient-flow": "seqkit.diagnose.gradient_flow:main",
}
"""Instrument name -> "module:function" that takes the rest of the command line."""

USAGE = """usage: seqkit diagnose WHAT [options]

WHAT: {names} (seqkit diagnose WHAT --help says what it shows)
  seqkit diagnose attention --model DIR --text "forty-two" --out DIR
  seqkit diagnose gradient-flow [--model LM_DIR ...] --out DIR
"""


def main(argv: list[str]) -> None:
    """Run the instrument `argv[0]` names on the rest of `argv`."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(names=", ".join(INSTRUMENTS)))
        return
    target = INSTRUMENTS.get(argv[0])
    if target is None:
        sys.stderr.write(f"seqkit diagnose: error: no instrument {argv[0]!r}; "
                         f"choose one of: {', '.join(INSTRUMENTS)}\n")  # fmt: skip
        raise SystemExit(2)
    module, _, function = target.partition(":")
    getattr(importlib.import_module(module), function)(argv[1:])
