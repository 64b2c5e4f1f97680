"""One multilingual model against one model per direction, for the same compute.

    python bench/multilingual.py [--minutes 40] [--langs de fr] [--data ../shared/data/multi30k]
        [--beam 5] [--test-lines N] [--run-dir runs/bench-multilingual] [--reuse de=DIR]
        [-- FIT OVERRIDES]

Trains, as a user does (`seqkit fit --config RECIPE`), the multilingual recipe
(transformer-multi30k-multilingual.yaml: en→each of --langs, tagged sources) and the
single-direction one (--single, transformer-multi30k-15min.yaml) once per direction, each
within --minutes (the recipes set their steps: the multilingual one twice the single one's);
then decodes test_2016_flickr with beam --beam, one direction at a time (for the
multilingual model through `Translator.translate(tgt_lang=)`), and prints sacreBLEU and
chrF per direction and model. FIT OVERRIDES (after --) go to every run, e.g.
`-- --trainer.max_steps=3 --model.init_args.config.d_model=32` for a smoke run. The figures
are also written to RUN_DIR/result.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fit_run import run_fit

ROOT = Path(__file__).resolve().parents[1]
MULTILINGUAL = ROOT / "recipes/transformer-multi30k-multilingual.yaml"
SINGLE = ROOT / "recipes/transformer-multi30k-15min.yaml"


def fit(recipe: Path, run_dir: Path, data_flags: list[str], args: argparse.Namespace) -> Path:
    """Run `seqkit fit` on `recipe` for `args.minutes`; return the exported model directory.
    The log goes to RUN_DIR/fit.log."""
    options = [
        "--config", str(recipe), f"--data.path={args.data.resolve()}", *data_flags,
        f"--trainer.max_time=00:{args.minutes // 60:02d}:{args.minutes % 60:02d}:00",
        *args.overrides,
    ]  # fmt: skip
    return run_fit(options, run_dir)[0]


def score(model_dir: Path, lang: str, args: argparse.Namespace, tagged: bool) -> dict:
    """sacreBLEU and chrF of `model_dir` on test_2016_flickr en→`lang`, beam `args.beam`."""
    from dataclasses import replace

    from seqkit.data.sources import read_lines
    from seqkit.metrics import translation_scores
    from seqkit.translator import Translator

    translator = Translator.from_pretrained(model_dir)
    sources = read_lines(args.data / "test_2016_flickr.en.gz")[: args.test_lines]
    refs = read_lines(args.data / f"test_2016_flickr.{lang}.gz")[: args.test_lines]
    decoding = replace(translator.decoding, beam_size=args.beam)
    hyps = translator.translate(sources, decoding, tgt_lang=lang if tagged else None)
    scores = translation_scores(hyps, refs)
    return {"bleu": scores["bleu"], "chrf": scores["chrf"], "signature": scores["bleu_signature"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=40, help="time guard of each run")
    parser.add_argument("--langs", nargs="+", default=["de", "fr"], help="target languages")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-multilingual")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--test-lines", type=int, help="score only the first N test lines")
    parser.add_argument("--single", type=Path, default=SINGLE, help="single-direction recipe")
    parser.add_argument("--steps", type=int, help="train each single-direction model this many "
                        "steps and the multilingual one twice as many (default: as the recipes "
                        "say, 850 and 1,700)")  # fmt: skip
    parser.add_argument("--reuse", nargs="*", default=[], metavar="LANG=DIR",
                        help="score this trained single-direction model of LANG instead of "
                        "training one (same recipe and budget)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="extra `seqkit fit` flags, after --")
    args = parser.parse_args(argv)
    args.reuse = dict(item.split("=", 1) for item in args.reuse)
    return args


def run(args: argparse.Namespace) -> dict:
    langs = f"[{', '.join(args.langs)}]"
    steps = (lambda n: [f"--trainer.max_steps={n}"]) if args.steps else (lambda n: [])
    models = {"multilingual": fit(MULTILINGUAL, args.run_dir / "multilingual",
                                  [f"--data.tgt_langs={langs}", *steps(2 * (args.steps or 0))],
                                  args)}  # fmt: skip
    for lang in args.langs:
        if lang in args.reuse:
            models[f"en-{lang}"] = Path(args.reuse[lang])
            continue
        flags = [f"--data.tgt_lang={lang}", *steps(args.steps)]
        models[f"en-{lang}"] = fit(args.single, args.run_dir / f"en-{lang}", flags, args)
    result: dict = {"minutes": args.minutes, "beam": args.beam}
    for lang in args.langs:
        result[f"en-{lang}"] = {
            "multilingual": score(models["multilingual"], lang, args, tagged=True),
            "single": score(models[f"en-{lang}"], lang, args, tagged=False),
        }
    result["models"] = {name: str(path) for name, path in models.items()}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    args = parse_args()
    result = run(args)
    lines = "all" if args.test_lines is None else f"first {args.test_lines}"
    budget = f"{args.steps:,} steps a direction" if args.steps else "the recipes' steps"
    print(f"test2016 ({lines} lines), beam {args.beam}, {budget}")
    print(
        f"{'direction':<10} {'multilingual BLEU / chrF':>26} {'single-direction BLEU / chrF':>30}"
    )
    for lang in args.langs:
        multi, single = result[f"en-{lang}"]["multilingual"], result[f"en-{lang}"]["single"]
        print(f"{'en-' + lang:<10} {multi['bleu']:>16.1f} / {multi['chrf']:4.1f}"
              f" {single['bleu']:>20.1f} / {single['chrf']:4.1f}")  # fmt: skip
    print(f"sacreBLEU signature: {result[f'en-{args.langs[0]}']['single']['signature']}")


if __name__ == "__main__":
    main()
