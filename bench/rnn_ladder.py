"""The RNN ladder on Multi30k de→en: plain RNN, GRU and LSTM without attention, GRU with
Bahdanau attention, LSTM with Luong attention, and the best of them en→de.

    python bench/rnn_ladder.py [--rungs rnn,gru,...] [--minutes 27] [--best auto]

Every rung is `bench/multi30k.py` on one recipe and one override, run one after another (never
two at once: they would share the two cores). A rung whose `runs/ladder/RUNG/result.json`
exists is not run again; delete it to re-measure. Prints a Markdown table of every measured
rung; the last line is the best de→en sacreBLEU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import multi30k

ROOT = multi30k.ROOT
ATTENTION = "--model.init_args.config.attention"
RUNGS = {  # name: (recipe, overrides)
    "rnn": ("rnn-multi30k.yaml", []),
    # 650 steps (18 min) reached 19.5 lowercased BLEU; 950 steps fit the 30-minute budget.
    "gru": ("gru-multi30k.yaml", [f"{ATTENTION}=none", "--trainer.max_steps=950"]),
    "lstm": ("lstm-multi30k.yaml", [f"{ATTENTION}=none"]),
    "gru+bahdanau": ("gru-multi30k.yaml", []),
    "lstm+luong": ("lstm-multi30k.yaml", []),
}
PUBLISHED = {"lstm": 13.8, "gru": 20.6, "gru+bahdanau": 28.3}  # bentrevett/pytorch-seq2seq


def measure(name: str, recipe: str, overrides: list[str], src: str, tgt: str, a) -> dict:
    run_dir = a.out / name
    if (run_dir / "result.json").exists():
        return json.loads((run_dir / "result.json").read_text())
    print(f"training {name} {src}→{tgt} (at most {a.minutes} min)", flush=True)
    argv = [f"--recipe={ROOT / 'recipes' / recipe}", f"--src={src}", f"--tgt={tgt}",
            f"--minutes={a.minutes}", f"--run-dir={run_dir}", f"--data={a.data}",
            "--", *overrides]  # fmt: skip
    return multi30k.run(multi30k.parse_args(argv))


def de_en_bleu(run_dir: Path) -> float:
    result = run_dir / "result.json"
    return json.loads(result.read_text())["bleu"] if result.exists() else float("-inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rungs", default=",".join(RUNGS), help="comma-separated rung names")
    parser.add_argument(
        "--best", default="auto", help="the rung also trained en→de; auto: the best de→en one"
    )
    parser.add_argument("--minutes", type=int, default=27, help="training budget per rung")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/ladder")
    a = parser.parse_args()
    for name in a.rungs.split(","):
        if name not in RUNGS:
            sys.exit(f"unknown rung {name!r}; choose from {', '.join(RUNGS)}")
        measure(name, *RUNGS[name], "de", "en", a)
    if a.best == "auto":
        a.best = max(RUNGS, key=lambda n: de_en_bleu(a.out / n))
    if a.best:
        measure(f"{a.best}.en-de", *RUNGS[a.best], "en", "de", a)

    print("| model | pair | sacreBLEU | lc tok BLEU (published) | test ppl | train tok/s | "
          "steps | wall min | beam-5 decode s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    done = {}
    for path in sorted(a.out.glob("*/result.json")):
        name, r = path.parent.name, json.loads(path.read_text())
        done[name] = r
        published = f" ({PUBLISHED[name]})" if name in PUBLISHED else ""
        print(f"| {name.split('.')[0]} | {r['pair']} | {r['bleu']:.1f} | "
              f"{r['paper_bleu']:.1f}{published} | {r.get('test_ppl', float('nan')):.1f} | "
              f"{r.get('tokens_per_sec', 0):,} | {r.get('steps', '?')} | "
              f"{r.get('wall_min', float('nan')):.1f} | {r['decode_s']:.1f} |")  # fmt: skip
    de_en = {n: r["bleu"] for n, r in done.items() if r["pair"] == "de-en"}
    if de_en:
        best = max(de_en, key=de_en.get)
        print(f"best de-en sacreBLEU (beam 5): {best} {de_en[best]:.1f}")


if __name__ == "__main__":
    main()
