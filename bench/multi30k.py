"""Multi30k: train a recipe within a time budget, then score test_2016_flickr.

    python bench/multi30k.py [--recipe recipes/transformer-multi30k.yaml] [--src en --tgt de]
        [--minutes 60] [--data ../shared/data/multi30k] [-- FIT OVERRIDES]

Trains exactly as a user does (`seqkit fit --config RECIPE`), then
decodes the 1,000 test sentences with beam 5 and prints training tokens/s, wall time, decoding
speed, sacreBLEU, chrF and the lowercased 13a-tokenized BLEU that papers report. The last line is
the sacreBLEU figure.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit(args: argparse.Namespace) -> tuple[float, str]:
    run_dir = args.run_dir
    command = [
        sys.executable, "-m", "seqkit.cli", "fit", "--config", str(args.recipe),
        f"--data.path={args.data.resolve()}", f"--data.src_lang={args.src}",
        f"--data.tgt_lang={args.tgt}", f"--trainer.max_time=00:00:{args.minutes}:00",
        f"--trainer.default_root_dir={run_dir}", "--trainer.enable_progress_bar=false",
        *args.overrides,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    (run_dir / "fit.log").write_text(result.stdout + result.stderr)
    if result.returncode:
        sys.exit(f"seqkit fit failed, see {run_dir / 'fit.log'}:\n{result.stderr[-2000:]}")
    return wall, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/transformer-multi30k.yaml")
    parser.add_argument("--src", default="en", help="source language: en, de or fr")
    parser.add_argument("--tgt", default="de", help="target language: en, de or fr")
    parser.add_argument("--minutes", type=int, default=60, help="training budget")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-multi30k")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("overrides", nargs="*", help="extra `seqkit fit` flags, after --")
    args = parser.parse_args()
    args.run_dir.mkdir(parents=True, exist_ok=True)

    wall, log = fit(args)
    rate = re.search(r"trained on ([\d,]+) tokens in (\d+) s of steps: ([\d,]+) tokens/s", log)
    model_dir = Path(re.search(r"model written to (\S+)", log).group(1))

    from seqkit import Seq2Seq
    from seqkit.data.sources import read_lines
    from seqkit.metrics import paper_bleu, translation_scores

    model = Seq2Seq.from_pretrained(model_dir)
    sources = read_lines(args.data / f"test_2016_flickr.{args.src}.gz")
    refs = read_lines(args.data / f"test_2016_flickr.{args.tgt}.gz")
    start = time.perf_counter()
    hyps = model.translate(sources, beam_size=args.beam)
    decode_s = time.perf_counter() - start
    scores = translation_scores(hyps, refs)

    print(f"model: {model_dir}")
    print(
        f"training: {rate.group(3) if rate else '?'} tokens/s, wall time {wall / 60:.1f} min "
        f"(budget {args.minutes} min, including data preparation and the test pass)"
    )
    print(
        f"decoding test2016 (beam {args.beam}): {decode_s:.1f} s, "
        f"{len(sources) / decode_s:.1f} sentences/s"
    )
    print(f"chrF {scores['chrf']:.1f}  ({scores['chrf_signature']})")
    print(f"lowercased tokenized BLEU {paper_bleu(hyps, refs):.1f}")
    ppl = re.search(r"test/ppl\s+([\d.]+)", log)
    print(f"test perplexity {float(ppl.group(1)):.2f}" if ppl else "test perplexity ?")
    print(
        f"sacreBLEU test2016 {args.src}-{args.tgt} beam {args.beam}: {scores['bleu']:.1f}  "
        f"({scores['bleu_signature']})"
    )


if __name__ == "__main__":
    main()
