"""Where a number-words Transformer's first decoding step looks: the query made from the
start-of-sentence token alone, over the source, in every decoder layer.

    python bench/first_query.py --model DIR [--n 100] [--seed 0]

Draws `--n` numbers from 21,001 to 99,999 whose thousands are not a multiple of ten
("seventy-five thousand, seven hundred and seventy-seven"): German writes them units first
("fünfundsiebzigtausend..."), so the first German word comes from the third English token,
the unit after the tens word and the hyphen. Records greedy decoding with
`seqkit.diagnose.attention.record_attention` and prints, per decoder layer, the step-1 weight
on that token (mean over heads and numbers) and the share of heads putting more than half
there; the last line is the greedy exact match on these numbers.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from num2words import num2words

from seqkit.data.batching import pad
from seqkit.decoding import DecodingConfig
from seqkit.diagnose.attention import record_attention
from seqkit.translator import Translator

UNITS = {num2words(n) for n in range(1, 10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a number-words model directory")
    parser.add_argument("--n", type=int, default=100, help="numbers to draw")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    thousands = [t for t in range(21, 100) if t % 10]
    numbers = [rng.choice(thousands) * 1000 + rng.randrange(1, 1000) for _ in range(args.n)]
    texts = [num2words(n) for n in numbers]
    translator = Translator.from_pretrained(args.model)
    src = pad(translator.tokenizers.encode_source(texts))
    records = record_attention(translator, src, None, DecodingConfig(beam_size=1))
    if any(r.source[1] != "-" or r.source[2] not in UNITS for r in records):
        raise SystemExit("this tokenizer does not make the unit word the third token")
    on_unit = np.stack([r.cross[0][:, :, 2] for r in records])  # (N, L, H)
    for layer, weights in enumerate(on_unit.transpose(1, 0, 2), start=1):
        print(f"decoder layer {layer}: weight on the unit word {weights.mean():.2f}, "
              f"heads with > 0.5 there {(weights > 0.5).mean():.0%}")  # fmt: skip
    exact = np.mean(
        [r.text == num2words(n, lang="de") for r, n in zip(records, numbers, strict=True)]
    )
    print(f"greedy exact match on these {args.n} numbers: {exact:.3f}")


if __name__ == "__main__":
    main()
