"""Fine-tuning walk-through: a Multi30k en→de model learns a user's own data (number words).

    python bench/finetune.py --model runs/bench-multi30k/.../model [--pairs 1000] [--steps 300]

Writes the user's data as text pairs (`my-data/{train,val,test}.{en,de}`, numbers drawn by
seed), scores the pre-trained model on its test part and on Multi30k test2016, fine-tunes it
exactly as a user does (`seqkit fit --config recipes/finetune.yaml --model.init_args.init_from
MODEL ...`), and scores the fine-tuned model on both again. The last line is the fine-tuned
exact match on the user's test part.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from num2words import num2words

ROOT = Path(__file__).resolve().parents[1]


def write_user_data(directory: Path, pairs: int, seed: int) -> Path:
    from seqkit.data.numbers import sample_numbers

    sizes = {"train": pairs, "val": 100, "test": 200}
    directory.mkdir(parents=True, exist_ok=True)
    for split, numbers in sample_numbers(sizes, 0, 999_999, seed).items():
        for lang in ("en", "de"):
            text = "".join(num2words(n, lang=lang) + "\n" for n in numbers)
            (directory / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return directory


def scores(model_dir: Path, src: Path, ref: Path) -> dict:
    from seqkit import DecodingConfig, Translator
    from seqkit.data.sources import read_lines
    from seqkit.metrics import translation_scores

    translator = Translator.from_pretrained(model_dir)
    hyps = translator.translate(read_lines(src), DecodingConfig(beam_size=5))
    return translation_scores(hyps, read_lines(ref))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="pre-trained en→de model dir")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs of user data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--multi30k", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-finetune")
    args = parser.parse_args()
    data = write_user_data(args.run_dir / "my-data", args.pairs, args.seed)
    tests = {
        "user test": (data / "test.en", data / "test.de"),
        "Multi30k test2016": (
            args.multi30k / "test_2016_flickr.en.gz",
            args.multi30k / "test_2016_flickr.de.gz",
        ),
    }
    before = {name: scores(args.model, *files) for name, files in tests.items()}

    command = [
        sys.executable, "-m", "seqkit.cli", "fit", "--config", str(ROOT / "recipes/finetune.yaml"),
        f"--model.init_args.init_from={args.model}", f"--data.path={data}",
        "--data.held_out=0", "--data.splits={train: train, val: val, test: test}",
        f"--trainer.max_steps={args.steps}", f"--trainer.default_root_dir={args.run_dir}",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    (args.run_dir / "fit.log").write_text(result.stdout + result.stderr)
    if result.returncode:
        sys.exit(f"seqkit fit failed, see {args.run_dir / 'fit.log'}:\n{result.stderr[-2000:]}")
    tuned = Path(re.search(r"model written to (\S+)", result.stdout).group(1))
    after = {name: scores(tuned, *files) for name, files in tests.items()}

    print(f"fine-tuned on {args.pairs} pairs, {args.steps} steps, {wall / 60:.1f} min: {tuned}")
    print("| test set | BLEU before | BLEU after | exact match before | exact match after |")
    print("|---|---|---|---|---|")
    for name in tests:
        b, a = before[name], after[name]
        print(f"| {name} | {b['bleu']:.1f} | {a['bleu']:.1f} | "
              f"{b['exact_match']:.3f} | {a['exact_match']:.3f} |")  # fmt: skip
    print(f"user test exact match after fine-tuning: {after['user test']['exact_match']:.3f}")


if __name__ == "__main__":
    main()
