"""`seqkit inspect-data`: what a model's tokenizer does to parallel data, before fine-tuning.

    seqkit inspect-data --model runs/en-de/model --data ../shared/data/multi30k \\
        --src-lang en --tgt-lang fr [--split train] [--extend-vocab 2000]

prints the tokens per whitespace-separated word of each side with the model's tokenizer (and,
with --extend-vocab N, with that tokenizer extended by N merges learned on the data, as
`--data.extend_vocab N` would), against the model's own training data, and warns, naming the
remedy, for a side cut into more than 1.5 times its old rate (`seqkit.data.fertility`).
"""

from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seqkit inspect-data",
        description="Tokens per word of parallel data with a model's tokenizer, against the "
        "model's own training data; warns when fine-tuning on it needs --data.extend_vocab.",
    )
    p.add_argument("--model", required=True, help="model directory (seqkit fit, seqkit export)")
    p.add_argument("--data", required=True,
                   help="parallel data, as seqkit fit's --data.path takes it: a directory of "
                   "SPLIT.LANG files, a table file or a Hugging Face dataset name")  # fmt: skip
    p.add_argument("--src-lang", help="source language code (default: the model's)")
    p.add_argument("--tgt-lang", help="target language code (default: the model's)")
    p.add_argument("--split", default="train", help="the split to read (default: train)")
    p.add_argument("--source-column", help="source column of a table (default: --src-lang)")
    p.add_argument("--target-column", help="target column of a table (default: --tgt-lang)")
    p.add_argument("--extend-vocab", type=int, default=0, metavar="N",
                   help="also show the rates after learning N merges on the data")  # fmt: skip
    p.add_argument("--min-frequency", type=int, default=2,
                   help="minimum count of a pair for a merge, with --extend-vocab")  # fmt: skip
    return p


def main(argv: list[str]) -> None:
    """Print the table; warnings go to stderr. Exit status 0, 2 for a bad option; a missing
    model or unreadable data ends with one line naming it (`seqkit.cli.main`)."""
    args = parser().parse_args(argv)
    if args.extend_vocab < 0:
        parser().exit(2, f"seqkit inspect-data: error: argument --extend-vocab: must be >= 0, "
                      f"got {args.extend_vocab}\n")  # fmt: skip
    from seqkit.data import fertility
    from seqkit.data.sources import load_pairs, read_columns
    from seqkit.data.tokenizer import Tokenizers
    from seqkit.data.vocab_extension import extend_tokenizers, old_sides

    tokenizers = Tokenizers.load(args.model)
    known = fertility.recorded_languages(args.model) or {"source": "en", "target": "de"}
    langs = {"source": args.src_lang or known["source"], "target": args.tgt_lang or known["target"]}
    pairs = load_pairs(args.data, langs["source"], langs["target"], {args.split: args.split},
                       args.source_column, args.target_column)[args.split]  # fmt: skip
    texts = read_columns(pairs, ["source", "target"])
    rates = fertility.side_rates(tokenizers, texts["source"], texts["target"])
    extended = {}
    if args.extend_vocab:
        old = old_sides(tokenizers, args.model, langs["source"], langs["target"])
        grown = extend_tokenizers(tokenizers, texts["source"], texts["target"], args.extend_vocab,
                                  min_frequency=args.min_frequency, old_sides=old)  # fmt: skip
        extended = fertility.side_rates(grown, texts["source"], texts["target"])
    own = fertility.recorded_rates(args.model) or {}
    sides = [fertility.SideReport(side, langs[side], rates[side], own.get(side),
                                  extended.get(side)) for side in fertility.SIDES]  # fmt: skip
    table, warnings = fertility.report(sides, args.extend_vocab)
    print(f"{args.data} [{args.split}], {len(pairs):,} pairs, with the tokenizer of {args.model}")
    print(table)
    if not own:
        print(f"({args.model} records no tokens per word of its own training data: it was "
              "written before seqkit recorded them)")  # fmt: skip
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
