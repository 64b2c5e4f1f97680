"""Multi30k: train a recipe within a time budget, then score test_2016_flickr.

    python bench/multi30k.py [--recipe recipes/transformer-multi30k.yaml] [--src en --tgt de]
        [--minutes M] [--data ../shared/data/multi30k] [--model DIR [--alpha A]] [-- FIT OVERRIDES]

Trains exactly as a user does (`seqkit fit --config RECIPE`), then decodes the 1,000 test
sentences with beam 5 and prints training tokens/s, wall time, decoding speed, test perplexity,
sacreBLEU, chrF and the lowercased 13a-tokenized BLEU that tutorials report. With `--model`, an
exported model of an earlier run is scored without training. The figures are also written to
`RUN_DIR/result.json`. The last line is the sacreBLEU figure.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

from fit_run import run_fit

ROOT = Path(__file__).resolve().parents[1]


def fit(args: argparse.Namespace) -> Path:
    """Run `seqkit fit`; return the exported model directory. The log goes to RUN_DIR/fit.log."""
    options = [
        "--config", str(args.recipe), f"--data.path={args.data.resolve()}",
        f"--data.src_lang={args.src}", f"--data.tgt_lang={args.tgt}",
        *([f"--trainer.max_time=00:00:{args.minutes}:00"] if args.minutes else []),
        *args.overrides,
    ]  # fmt: skip
    return run_fit(options, args.run_dir)[0]


def training_figures(model_dir: Path) -> dict:
    """Tokens/s, steps and wall time from the run's fit.log; test perplexity from metrics.csv."""
    figures: dict = {}
    log = model_dir.parents[2] / "fit.log"
    if log.exists():
        text = log.read_text()
        if rate := re.search(r"in \d+ s of steps: ([\d,]+) tokens/s", text):
            figures["tokens_per_sec"] = int(rate.group(1).replace(",", ""))
        if wall := re.search(r"wall time (\d+) s", text):
            figures["wall_min"] = int(wall.group(1)) / 60
    metrics = model_dir.parent / "metrics.csv"
    if metrics.exists():
        rows = list(csv.DictReader(metrics.open()))
        figures["steps"] = max(int(r["step"]) for r in rows if r.get("step"))
        ppl = [float(r["test/ppl"]) for r in rows if r.get("test/ppl")]
        if ppl:
            figures["test_ppl"] = ppl[-1]
    return figures


def score(model_dir: Path, args: argparse.Namespace) -> dict:
    """Beam-search the test set and score it."""
    from dataclasses import replace

    from seqkit import Translator
    from seqkit.data.sources import read_lines
    from seqkit.metrics import paper_bleu, translation_scores

    translator = Translator.from_pretrained(model_dir)
    sources = read_lines(args.data / f"test_2016_flickr.{args.src}.gz")
    refs = read_lines(args.data / f"test_2016_flickr.{args.tgt}.gz")
    start = time.perf_counter()
    decoding = replace(translator.decoding, beam_size=args.beam)
    if args.alpha is not None:
        decoding = replace(decoding, alpha=args.alpha)
    hyps = translator.translate(sources, decoding)
    decode_s = time.perf_counter() - start
    scores = translation_scores(hyps, refs)
    return {
        "decode_s": decode_s,
        "sentences_per_sec": len(sources) / decode_s,
        "bleu": scores["bleu"],
        "chrf": scores["chrf"],
        "paper_bleu": paper_bleu(hyps, refs),
        "bleu_signature": scores["bleu_signature"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/transformer-multi30k.yaml")
    parser.add_argument("--src", default="en", help="source language: en, de or fr")
    parser.add_argument("--tgt", default="de", help="target language: en, de or fr")
    parser.add_argument("--minutes", type=int, help="trainer.max_time (default: the recipe's)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-multi30k")
    parser.add_argument("--model", type=Path, help="score this exported model, do not train")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--alpha", type=float, help="length penalty (default: the model's own)")
    parser.add_argument("overrides", nargs="*", help="extra `seqkit fit` flags, after --")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    args.run_dir.mkdir(parents=True, exist_ok=True)
    model_dir = args.model or fit(args)
    result = {"model": str(model_dir), "pair": f"{args.src}-{args.tgt}", "beam": args.beam,
              "alpha": args.alpha}  # fmt: skip
    result |= training_figures(model_dir) | score(model_dir, args)
    (args.run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    args = parse_args()
    r = run(args)
    print(f"model: {r['model']}")
    print(
        f"training: {r.get('tokens_per_sec', '?'):,} tokens/s, {r.get('steps', '?')} steps, "
        f"wall time {r.get('wall_min', float('nan')):.1f} min "
        "(data preparation, training and the test pass)"
    )
    print(f"decoding test2016 (beam {args.beam}): {r['decode_s']:.1f} s, "
          f"{r['sentences_per_sec']:.1f} sentences/s")  # fmt: skip
    print(f"chrF {r['chrf']:.1f}")
    print(f"lowercased tokenized BLEU {r['paper_bleu']:.1f}")
    print(f"test perplexity {r.get('test_ppl', float('nan')):.2f}")
    print(f"sacreBLEU test2016 {r['pair']} beam {args.beam}: {r['bleu']:.1f}  "
          f"({r['bleu_signature']})")  # fmt: skip


if __name__ == "__main__":
    main()
