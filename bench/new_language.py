"""A new target language: from an en→de Multi30k model to en→fr, three ways in the same time.

    python bench/new_language.py --model runs/bench-multi30k/.../model [--minutes 15]
        [--extend-vocab 2000] [--rows old-tokenizer extend-vocab scratch] [-- FIT OVERRIDES]

Each row trains exactly as a user does, for the same wall-clock minutes (`--trainer.max_time`)
or, with `--steps N`, the same steps (batches hold the same tokens: equal compute):

- old-tokenizer: `seqkit fit --config recipes/finetune.yaml --model.init_args.init_from MODEL`
  on Multi30k en→fr, encoding French with the en→de model's tokenizer;
- extend-vocab: the same with `--data.extend_vocab N` (N merges learned on the French side,
  the model's embeddings and output grown to match);
- scratch: `seqkit fit --config RECIPE` on en→fr with its own tokenizer, RECIPE being the
  one the model was trained by (`--scratch-recipe`, default transformer-multi30k-15min.yaml).

Prints one row each: target tokens per word of the French train split with the tokenizer the
run used, training steps, and test2016 sacreBLEU (beam 5).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from fit_run import run_fit

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("old-tokenizer", "extend-vocab", "scratch")
SPLITS = "--data.splits={train: train, val: val, test: test_2016_flickr}"


def fit_options(row: str, args: argparse.Namespace) -> list[str]:
    """The `seqkit fit` options of one row."""
    recipe = args.scratch_recipe if row == "scratch" else ROOT / "recipes/finetune.yaml"
    command = ["--config", str(recipe), f"--data.path={args.data.resolve()}",
               "--data.src_lang=en", "--data.tgt_lang=fr",
               f"--trainer.max_time=00:{args.minutes // 60:02d}:{args.minutes % 60:02d}:00",
               f"--trainer.max_steps={args.steps or -1}"]  # fmt: skip
    if row != "scratch":
        command += [f"--model.init_args.init_from={args.model}", "--data.held_out=0", SPLITS,
                    f"--model.init_args.optimizer.lr={args.finetune_lr}"]  # fmt: skip
    if row == "extend-vocab":
        command.append(f"--data.extend_vocab={args.extend_vocab}")
    return command + args.fit_args


def fit(row: str, args: argparse.Namespace) -> tuple[Path, float]:
    """Train one row: its exported model directory and wall seconds; the log beside it."""
    model, wall, _ = run_fit(fit_options(row, args), args.run_dir / row, row)
    return model, wall


def score(model_dir: Path, args: argparse.Namespace) -> dict:
    """Test2016 sacreBLEU (beam 5), the training steps and the train split's target tokens
    per word with the model's own (possibly extended) tokenizer."""
    from seqkit import DecodingConfig, Translator
    from seqkit.data.fertility import tokens_per_word
    from seqkit.data.sources import read_lines
    from seqkit.metrics import translation_scores

    translator = Translator.from_pretrained(model_dir)
    test = args.data / "test_2016_flickr"
    sources = list(read_lines(Path(f"{test}.en.gz")))[: args.test_limit]
    refs = list(read_lines(Path(f"{test}.fr.gz")))[: args.test_limit]
    hyps = translator.translate(sources, DecodingConfig(beam_size=5))
    train_fr = list(read_lines(args.data / "train.fr.gz"))
    rows = list(csv.DictReader((model_dir.parent / "metrics.csv").open()))
    return {
        "bleu": translation_scores(hyps, refs)["bleu"],
        "tokens_per_word": tokens_per_word(translator.tokenizers.target, train_fr),
        "vocab": translator.config.tgt_vocab_size,
        "steps": max((int(r["step"]) for r in rows if r.get("step")), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="pre-trained en→de model dir")
    parser.add_argument("--minutes", type=int, default=15, help="training time of every row")
    parser.add_argument("--steps", type=int, help="train every row this many steps instead "
                        "(batches hold the same tokens, so equal steps are equal compute; "
                        "--minutes is then only the guard)")  # fmt: skip
    parser.add_argument(
        "--scratch-recipe",
        type=Path,
        default=ROOT / "recipes/transformer-multi30k-15min.yaml",
        help="the scratch row's recipe: the one the --model was trained by",
    )
    parser.add_argument("--finetune-lr", type=float, default=1e-3,
                        help="peak learning rate of the fine-tuning rows")  # fmt: skip
    parser.add_argument("--extend-vocab", type=int, default=2000, help="merges to learn")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--test-limit", type=int, default=None,
                        help="score the first N test sentences only (smoke runs)")  # fmt: skip
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-new-language")
    parser.add_argument("fit_args", nargs="*", help="more `seqkit fit` options, after --")
    args = parser.parse_args()
    results = []
    for row in args.rows:
        model_dir, wall = fit(row, args)
        results.append((row, wall, score(model_dir, args)))
        print(f"{row}: {wall / 60:.1f} min, {model_dir}", flush=True)
    print("| en→fr | target vocabulary | fr tokens per word | steps | minutes | test2016 BLEU |")
    print("|---|---|---|---|---|---|")
    for row, wall, s in results:
        print(f"| {row} | {s['vocab']:,} | {s['tokens_per_word']:.2f} | {s['steps']:,} | "
              f"{wall / 60:.1f} | {s['bleu']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
