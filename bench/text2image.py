"""Text to image, measured: how often a classifier reads the digit a prompt asked for.

    python bench/text2image.py [--dataset digits|mnist] [--samples 20]

1. The judge: `seqkit fit --config recipes/vit-digits.yaml` (vit-mnist.yaml for MNIST), or
   `--judge DIR`, a model directory already trained.
2. The text-to-image model: `seqkit fit --config recipes/transformer-text2image.yaml`
   (-mnist.yaml), or `--model DIR`.
3. The codebook: reconstruction error (MSE, PSNR) of the test images, how often the judge
   labels the reconstructions right (the ceiling of the generator), and a picture of
   originals (left) beside reconstructions (right).
4. `--samples` images per digit prompt ("zero" ... "nine") and language, sampled with the
   model's own settings and a fixed seed; the judge labels them (an image of more than one
   digit cell counts as wrong); samples/s covers sampling and decoding the tokens to pixels.
   A grid of them is written, a row per prompt.

Runs are kept under `--out` (default runs/bench-text2image/DATASET): a step whose model is
there is not run again; delete it to re-measure. `--fit-args=` / `--judge-args=` pass options
to `seqkit fit` (e.g. --fit-args="--trainer.max_epochs=1" for a smoke run);
`--temperature` / `--top-k` override the model's sampling; `--codebook-only` fits the
recipe's codebook and measures it alone (seconds). Prints the figure last.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import yaml
from fit_run import run_fit

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"digits": ("vit-digits", "transformer-text2image"),
           "mnist": ("vit-mnist", "transformer-text2image-mnist")}  # fmt: skip
TARGETS = {"digits": 0.90, "mnist": 0.80}
SEED = 1234


def fit(recipe: str, run_dir: Path, extra: list[str]) -> Path:
    """`seqkit fit --config recipes/RECIPE.yaml` into `run_dir` (once): the exported model."""
    done = run_dir / "model.json"
    if done.is_file():
        return Path(json.loads(done.read_text())["model"])
    options = ["--config", f"recipes/{recipe}.yaml", *extra]
    print(f"running seqkit fit {' '.join(options)}", flush=True)
    model, wall, _ = run_fit(options, run_dir)
    done.write_text(json.dumps({"model": str(model), "fit_minutes": wall / 60}) + "\n")
    return model


def test_data(recipe: str, data_args: list[str]):
    """The recipe's `TextToImageData` (with `--data.init_args.KEY=VALUE` overrides, e.g. a
    smoke run's sizes), and its uint8 test-pool digit images (N, C, H, W) and labels."""
    from seqkit.data.text2image import TextToImageData

    init = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())["data"]["init_args"]
    for arg in data_args:
        key, _, value = arg.removeprefix("--data.init_args.").partition("=")
        if arg.startswith("--data.init_args."):
            init[key] = yaml.safe_load(value)
    data = TextToImageData(**init)
    rows = torch.from_numpy(data.pool_rows("test"))
    return data, data.pool.images[rows], data.pool.labels[rows]


def codebook_figures(codebook, judge, images, labels, out: Path) -> dict:
    """Reconstruction MSE/PSNR, the judge's accuracy on originals and reconstructions (with a
    judge), and the picture of 16 originals (left) beside their reconstructions (right)."""
    from seqkit.image_generator import image_grid, save_png

    mse, psnr = codebook.reconstruction_error(images)
    rebuilt = codebook.decode(codebook.encode(images))
    pairs = [torch.cat([images[i].float() / 255, rebuilt[i]], dim=-1) for i in range(16)]
    save_png(image_grid(pairs, 4), out / "codebook.png", scale=4)
    figures = {"mse": mse, "psnr": psnr}
    if judge is not None:
        as_uint8 = rebuilt.mul(255).round().to(torch.uint8).numpy()
        for key, pixels in (
            ("judge_originals", images.numpy()),
            ("judge_reconstructions", as_uint8),
        ):
            labelled = judge.predict(pixels)
            figures[key] = sum(
                int(p) == t for p, t in zip(labelled, labels.tolist(), strict=True)
            ) / len(labels)
    return figures


def sample_figures(generator, judge, samples: int, languages: list[str], out: Path) -> dict:
    """Accuracy of the judge's labels against the asked digits (overall and per language),
    samples/s, and the grid of the first language's samples (a row per digit)."""
    from seqkit.data.text2image import number_prompt
    from seqkit.image_generator import image_grid, save_png

    asked = [(digit, lang) for lang in languages for digit in range(10)]
    sampling = replace(generator.sampling, num_samples=samples, seed=SEED)
    start = time.perf_counter()
    drawn = generator.generate([number_prompt(d, lang) for d, lang in asked], sampling)
    seconds = time.perf_counter() - start
    width = generator.codebook.image_size[1]
    hits, multi_cell = dict.fromkeys(languages, 0), 0
    for (digit, lang), row in zip(asked, drawn, strict=True):
        single = [image for image in row if image.shape[-1] == width]  # one digit cell
        multi_cell += len(row) - len(single)
        if single:
            pixels = torch.stack(single).mul(255).round().to(torch.uint8).numpy()
            hits[lang] += sum(int(label) == digit for label in judge.predict(pixels))
    total = samples * len(asked)
    columns = min(samples, 10)
    grid = [image for row in drawn[:10] for image in row[:columns]]
    save_png(image_grid(grid, columns), out / "samples.png", scale=4)
    per_language = {f"accuracy_{lang}": hits[lang] / (samples * 10) for lang in languages}
    return {"accuracy": sum(hits.values()) / total, "samples": total,
            "samples_per_sec": total / seconds, "multi_cell": multi_cell,
            **per_language}  # fmt: skip


def codebook_only(recipe: str, fit_args: list[str], out: Path) -> None:
    """Fit the recipe's codebook (no model, no judge); print its reconstruction error."""
    data, images, labels = test_data(recipe, fit_args)
    figures = codebook_figures(data.codebook, None, images, labels, out)
    print(
        f"codebook of {recipe}: MSE {figures['mse']:.4f}, PSNR {figures['psnr']:.1f} dB "
        f"on {len(images)} test images; picture {out / 'codebook.png'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(RECIPES), default="digits")
    parser.add_argument("--samples", type=int, default=20, help="samples per prompt")
    parser.add_argument("--judge", type=Path, help="a trained classifier's model directory")
    parser.add_argument("--model", type=Path, help="a trained text-to-image model directory")
    parser.add_argument("--temperature", type=float, help="override the model's sampling")
    parser.add_argument("--top-k", type=int, help="override the model's sampling")
    parser.add_argument("--fit-args", default="", help="options for the model's seqkit fit")
    parser.add_argument("--judge-args", default="", help="options for the judge's seqkit fit")
    parser.add_argument("--out", type=Path, help="default: runs/bench-text2image/DATASET")
    parser.add_argument(
        "--codebook-only",
        action="store_true",
        help="only fit the recipe's codebook and measure its reconstructions",
    )
    args = parser.parse_args()
    from seqkit.image_generator import ImageGenerator
    from seqkit.labeler import Labeler

    out = args.out or ROOT / "runs" / "bench-text2image" / args.dataset
    judge_recipe, recipe = RECIPES[args.dataset]
    fit_args = shlex.split(args.fit_args)
    if args.codebook_only:
        return codebook_only(recipe, fit_args, out)
    judge_dir = args.judge or fit(judge_recipe, out / "judge", shlex.split(args.judge_args))
    model_dir = args.model or fit(recipe, out / "model", fit_args)
    judge, generator = Labeler.from_pretrained(judge_dir), ImageGenerator.from_pretrained(model_dir)
    given = {"temperature": args.temperature, "top_k": args.top_k}
    given = {key: value for key, value in given.items() if value is not None}
    generator.sampling = replace(generator.sampling, **given)
    _, images, labels = test_data(recipe, fit_args)
    figures = codebook_figures(generator.codebook, judge, images, labels, out)
    init = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())["data"]["init_args"]
    languages = list(init.get("languages", ["en", "de"]))
    figures |= sample_figures(generator, judge, args.samples, languages, out)
    figures["sampling"] = asdict(generator.sampling) | {"seed": SEED}
    (out / "result.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"codebook: MSE {figures['mse']:.4f}, PSNR {figures['psnr']:.1f} dB; judge on test "
          f"originals {figures['judge_originals']:.1%}, on reconstructions "
          f"{figures['judge_reconstructions']:.1%}; pictures in {out}")  # fmt: skip
    print(f"text2image {args.dataset}: {figures['accuracy']:.1%} of {figures['samples']} samples "
          f"labelled as asked (target {TARGETS[args.dataset]:.0%}), "
          f"{figures['samples_per_sec']:,.0f} samples/s")  # fmt: skip


if __name__ == "__main__":
    main()
