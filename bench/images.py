"""Every image recipe as a user runs it: test accuracy (or exact match), training and
inference images/s, and wall time on this machine.

    python bench/images.py [--recipes vit-digits,vit-mnist,lstm-mnist,transformer-mnist-numbers]

Each recipe is `seqkit fit --config recipes/NAME.yaml` (train, test the best checkpoint,
export), run one after another: never two at once, they would share the cores. Inference is
timed on the exported model over the recipe's whole test split, through `model.predict` (the
images as uint8 arrays, normalized and batched as a user's would be; beam search for the
seq2seq recipe). A recipe whose `runs/bench-images/NAME/result.json` exists is not run again;
delete it to re-measure. Prints a Markdown table; the last line is the ViT's MNIST accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

import yaml
from fit_run import run_fit

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("vit-digits", "vit-mnist", "lstm-mnist", "transformer-mnist-numbers")


def fit(recipe: Path, run_dir: Path) -> tuple[Path, dict]:
    """Run `seqkit fit`; return the exported model and the figures its logs hold."""
    model, wall, output = run_fit(["--config", str(recipe)], run_dir)
    rows = list(csv.DictReader((model.parent / "metrics.csv").open()))
    figures = {"wall_min": wall / 60, "steps": max(int(r["step"]) for r in rows if r["step"])}
    for key in ("test/accuracy", "test/exact_match", "test/bleu"):
        values = [float(r[key]) for r in rows if r.get(key)]
        if values:
            figures[key] = values[-1]
    rates = [float(r["train/images_per_sec"]) for r in rows if r.get("train/images_per_sec")]
    if rates:  # the Classifier logs images/s; a seq2seq run prints its pairs/s
        figures["train_images_per_sec"] = sum(rates) / len(rates)
    elif pairs := re.search(r"([\d,.]+) pairs/s", output):
        figures["train_images_per_sec"] = float(pairs.group(1).replace(",", ""))
    return model, figures


def inference(recipe: Path, model_dir: Path) -> dict:
    """Images/s of `Translator.read` / `Labeler.predict` over the recipe's test split."""
    from seqkit import DigitStripData, ImageData, Labeler, Translator

    data_args = yaml.safe_load(recipe.read_text())["data"]["init_args"]
    if "n_train" in data_args:  # digit strips: images of different widths -> text
        data = DigitStripData(**data_args)
        images = data.strip_images("test", list(range(len(data.strips_of("test")[1]))))
        predict = Translator.from_pretrained(model_dir).read
    else:
        data = ImageData(**data_args)
        data.setup()
        images = data._loaded().images[data.split_indices("test")].numpy()
        predict = Labeler.from_pretrained(model_dir).predict
    predict(images[:8])  # warm-up
    start = time.perf_counter()
    predict(images)
    seconds = time.perf_counter() - start
    return {"test_images": len(images), "infer_images_per_sec": len(images) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/bench-images")
    args = parser.parse_args()
    results = {}
    for name in args.recipes.split(","):
        recipe = ROOT / "recipes" / f"{name}.yaml"
        if not recipe.is_file():
            sys.exit(f"no recipe {recipe}")
        out = args.out / name / "result.json"
        if not out.exists():
            print(f"running {name}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            model, figures = fit(recipe, out.parent)
            figures |= inference(recipe, model) | {"model": str(model)}
            out.write_text(json.dumps(figures, indent=2) + "\n")
        results[name] = json.loads(out.read_text())

    print("| recipe | test metric | train images/s | inference images/s | steps | wall min |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        metric = next(f"{k.split('/')[1]} {r[k]:.3f}" for k in
                      ("test/accuracy", "test/exact_match") if k in r)  # fmt: skip
        train, infer = r.get("train_images_per_sec", 0), r["infer_images_per_sec"]
        print(f"| {name} | {metric} | {train:,.0f} | {infer:,.0f} | {r['steps']} | "
              f"{r['wall_min']:.1f} |")  # fmt: skip
    if "vit-mnist" in results:
        print(f"vit-mnist test accuracy: {results['vit-mnist']['test/accuracy']:.4f}")


if __name__ == "__main__":
    main()
