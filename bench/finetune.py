"""Fine-tuning walk-through: a Multi30k en→de model learns a user's own data (number words),
with a remedy against forgetting Multi30k.

    python bench/finetune.py --model runs/bench-multi30k/.../model [--pairs 1000] [--steps 300]
        [--remedy full mix lora] [--mix-ratio 0.5] [--lora-rank 8] [--lora-lr 0.003]

Writes the user's data as text pairs (`my-data/{train,val,test}.{en,de}`, numbers drawn by
seed), scores the pre-trained model on its test part and on Multi30k test2016, fine-tunes it
exactly as a user does (`seqkit fit --config recipes/finetune.yaml --model.init_args.init_from
MODEL ...`) once per remedy, and scores each fine-tuned model on both again:

- full: every weight trains (the recipe as it is);
- mix: Multi30k's train split is mixed in (`--data.mix_with MULTI30K --data.mix_ratio r`);
- lora: LoRA adapters of rank r on the Linear layers (`--model.init_args.lora.rank r`), at
  the learning rate `--lora-lr`; the base weights stay fixed.

One row per remedy: trainable parameters, the user's test exact match and Multi30k test2016
sacreBLEU before and after.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fit_run import run_fit
from num2words import num2words

ROOT = Path(__file__).resolve().parents[1]
REMEDIES = ("full", "mix", "lora")


def write_user_data(directory: Path, pairs: int, seed: int) -> Path:
    from seqkit.data.numbers import sample_numbers

    sizes = {"train": pairs, "val": 100, "test": 200}
    directory.mkdir(parents=True, exist_ok=True)
    for split, numbers in sample_numbers(sizes, 0, 999_999, seed).items():
        for lang in ("en", "de"):
            text = "".join(num2words(n, lang=lang) + "\n" for n in numbers)
            (directory / f"{split}.{lang}").write_text(text, encoding="utf-8")
    return directory


def scores(model_dir: Path, src: Path, ref: Path, limit: int | None) -> dict:
    from seqkit import DecodingConfig, Translator
    from seqkit.data.sources import read_lines
    from seqkit.metrics import translation_scores

    translator = Translator.from_pretrained(model_dir)
    sources, refs = list(read_lines(src))[:limit], list(read_lines(ref))[:limit]
    hyps = translator.translate(sources, DecodingConfig(beam_size=5))
    return translation_scores(hyps, refs)


def remedy_args(remedy: str, args: argparse.Namespace) -> list[str]:
    """The `seqkit fit` options that make `remedy` out of recipes/finetune.yaml."""
    if remedy == "mix":
        return [f"--data.mix_with={args.multi30k}", f"--data.mix_ratio={args.mix_ratio}"]
    if remedy == "lora":
        return [f"--model.init_args.lora.rank={args.lora_rank}",
                f"--model.init_args.optimizer.lr={args.lora_lr}"]  # fmt: skip
    return []


def finetune(args: argparse.Namespace, data: Path, remedy: str) -> tuple[Path, float]:
    """Fine-tune `args.model` on `data` with `remedy`: the model directory and wall seconds."""
    options = [
        "--config", str(ROOT / "recipes/finetune.yaml"),
        f"--model.init_args.init_from={args.model}", f"--data.path={data}", "--data.held_out=0",
        "--data.splits={train: train, val: val, test: test}", f"--trainer.max_steps={args.steps}",
        *remedy_args(remedy, args), *args.fit_args,
    ]  # fmt: skip
    model, wall, _ = run_fit(options, args.run_dir / remedy, remedy)
    return model, wall


def trainable_parameters(model_dir: Path, remedy: str) -> int:
    """Weights that trained: the adapter's for LoRA, else every stored tensor (tied ones once)."""
    from safetensors import safe_open

    from seqkit.lora import ADAPTER_DIR, WEIGHTS_FILE

    path = model_dir / (
        f"{ADAPTER_DIR}/{WEIGHTS_FILE}" if remedy == "lora" else "model.safetensors"
    )
    with safe_open(str(path), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="pre-trained en→de model dir")
    parser.add_argument("--pairs", type=int, default=1000, help="training pairs of user data")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--remedy", nargs="+", choices=REMEDIES, default=["full"],
                        help="one fine-tuning run and table row each")  # fmt: skip
    parser.add_argument("--mix-ratio", type=float, default=0.5, help="mix: share of Multi30k")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=3e-3, help="lora: peak learning rate")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="score the first N sentences of each test set only")  # fmt: skip
    parser.add_argument("--multi30k", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-finetune")
    parser.add_argument("fit_args", nargs="*", help="more `seqkit fit` options, after --")
    args = parser.parse_args()
    data = write_user_data(args.run_dir / "my-data", args.pairs, args.seed)
    tests = {
        "user test": (data / "test.en", data / "test.de"),
        "Multi30k test2016": (
            args.multi30k / "test_2016_flickr.en.gz",
            args.multi30k / "test_2016_flickr.de.gz",
        ),
    }
    before = {name: scores(args.model, *files, args.test_limit) for name, files in tests.items()}
    print(f"pre-trained: user test exact match {before['user test']['exact_match']:.3f}, "
          f"Multi30k test2016 BLEU {before['Multi30k test2016']['bleu']:.1f}")  # fmt: skip
    rows = []
    for remedy in args.remedy:
        tuned, wall = finetune(args, data, remedy)
        after = {name: scores(tuned, *files, args.test_limit) for name, files in tests.items()}
        rows.append((remedy, trainable_parameters(tuned, remedy), wall, after))
        print(f"{remedy}: {args.steps} steps on {args.pairs} pairs in {wall / 60:.1f} min: {tuned}")
    print("| remedy | trainable parameters | minutes | user test exact match "
          "(before → after) | Multi30k test2016 BLEU (before → after) |")  # fmt: skip
    print("|---|---|---|---|---|")
    user, m30k = before["user test"], before["Multi30k test2016"]
    for remedy, n_params, wall, after in rows:
        print(f"| {remedy} | {n_params:,} | {wall / 60:.1f} | {user['exact_match']:.3f} → "
              f"{after['user test']['exact_match']:.3f} | {m30k['bleu']:.1f} → "
              f"{after['Multi30k test2016']['bleu']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
