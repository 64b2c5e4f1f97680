"""`seqkit generate`: continue prompts with a language model, translate lines with a seq2seq
model, or draw images for prompts with a text-to-image model (a grid PNG, `--out`), by
sampling (temperature, top-k, top-p), greedy search or beam search. The model directory's
`model_type` says which; outputs follow the input's order."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from seqkit.cli import JSON_LINE_BREAKS, _input, _usage_error

if TYPE_CHECKING:
    from seqkit.generator import TextGenerator
    from seqkit.image_generator import ImageGenerator
    from seqkit.sampling import Decoding
    from seqkit.translator import Translator

# SamplingConfig / DecodingConfig field -> the flag that sets it, for errors.
FLAGS = {"temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
         "num_samples": "--num-samples", "beam_size": "--beam-size",
         "max_len": "--max-new-tokens", "min_len": "--max-new-tokens"}  # fmt: skip
SAMPLING = ("temperature", "top_k", "top_p", "num_samples")
CHUNK = 256  # prompts generated (and written) at a time


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkit generate",
        description="Continue prompts with a language model, translate lines with a seq2seq "
        "model, or draw images for prompts with a text-to-image model (--out grid.png), by "
        "sampling (the default), greedy search or beam search. Inputs come from --prompt, or "
        "one per line from --input or stdin; outputs follow their order.",
    )
    parser.add_argument(
        "--model", required=True, help="model directory (LM, seq2seq or text to image)"
    )
    parser.add_argument("--prompt", action="append", help="an input; repeat for several")
    parser.add_argument("--input", help="inputs, one per line, .gz allowed (default: stdin)")
    parser.add_argument("--num-samples", type=int, help="samples per input (default 1)")
    parser.add_argument(
        "--temperature", type=float, help="divides the logits: <1 sharper, >1 flatter, 0 greedy"
    )
    parser.add_argument("--top-k", type=int, help="draw from the K most probable tokens (0: all)")
    parser.add_argument(
        "--top-p", type=float, help="draw from the smallest set of mass >= P (nucleus; 1: all)"
    )
    parser.add_argument("--greedy", action="store_true", help="the most probable token, always")
    parser.add_argument("--beam-size", type=int, help="beam search of this width")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        help="most tokens per output (default: LM 100; seq2seq 1.5 × source + 10)",
    )
    parser.add_argument("--seed", type=int, help="draw the same samples on every run")
    parser.add_argument(
        "--format",
        choices=["text", "jsonl"],
        default="text",
        help="text: one line per input, or with --num-samples N > 1 N lines "
        "'INDEX ||| TEXT ||| SCORE'; jsonl: one JSON object per output with index, sample, "
        "text and score",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--out",
        help="text-to-image models: write the images here as one grid PNG, a row per "
        "prompt (one prompt: a square grid of its samples)",
    )
    parser.add_argument("--scale", type=int, default=4, help="--out: pixels per image pixel")
    return parser


def main(argv: list[str]) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.prompt is not None and args.input is not None:
        _usage_error(parser, "--prompt", "give prompts or --input, not both")
    if args.greedy and args.beam_size is not None:
        _usage_error(parser, "--greedy", "is beam search of width 1: not with --beam-size")
    if args.scale < 1:
        _usage_error(parser, "--scale", f"must be at least 1, got {args.scale}")
    if args.out is not None and not args.out.lower().endswith(".png"):
        _usage_error(parser, "--out", f"a PNG file name (.png), got {args.out!r}")
    decoding = _decoding(parser, args)  # validated before the model loads
    model = _load(args.model, args.device)
    lines = args.prompt if args.prompt is not None else _input(args.input)
    if _draws_images(parser, args, model):
        _draw(model, list(lines), _image_decoding(model, decoding, args), args)
        return
    outputs = _outputs(model, lines, decoding)
    n = decoding.num_returned
    for index, hyps in enumerate(outputs):
        _write(sys.stdout, index, hyps, args.format, n)
        if (index + 1) % CHUNK == 0:
            sys.stdout.flush()


def _draws_images(parser: argparse.ArgumentParser, args: argparse.Namespace, model) -> bool:
    """Whether `model` is a text-to-image model; exits naming the flag that does not fit."""
    from seqkit.image_generator import ImageGenerator

    if not isinstance(model, ImageGenerator):
        if args.out is not None:
            _usage_error(parser, "--out", f"{args.model} writes text, not images: drop --out")
        return False
    if args.out is None:
        _usage_error(parser, "--out", f"{args.model} draws images: give --out grid.png")
    if args.max_new_tokens is not None:
        _usage_error(parser, "--max-new-tokens", "an image's length is fixed by its codebook")
    return True


def _decoding(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Decoding:
    """The `SamplingConfig`, or with --greedy or --beam-size the `DecodingConfig`, that the
    flags give; a bad value exits with status 2 and one line naming its flag."""
    from seqkit.decoding import DecodingConfig, DecodingError
    from seqkit.sampling import SamplingConfig

    sampling = {k: getattr(args, k) for k in SAMPLING if getattr(args, k) is not None}
    lengths = {} if args.max_new_tokens is None else {"max_len": args.max_new_tokens}
    searching = args.greedy or args.beam_size is not None
    if searching and sampling:
        _usage_error(parser, FLAGS[next(iter(sampling))],
                     "sets sampling: not with --greedy or --beam-size")  # fmt: skip
    try:
        if searching:
            beam = 1 if args.greedy else args.beam_size
            return DecodingConfig(beam_size=beam, n_best=1, **lengths)
        return SamplingConfig(**sampling, **lengths, seed=args.seed)
    except DecodingError as err:
        _usage_error(parser, FLAGS[err.field], err.reason)


def _load(directory: str, device: str) -> TextGenerator | Translator | ImageGenerator:
    """An `ImageGenerator` for a text-to-image model's directory, a `TextGenerator` for a
    language model's, else a `Translator`."""
    from seqkit.models import LMConfig, ModelConfig, read_model_config

    if _model_type(directory) == "transformer-text2image":
        from seqkit.image_generator import ImageGenerator

        return ImageGenerator.from_pretrained(directory, device=device)
    _, config = read_model_config(directory, ModelConfig | LMConfig)
    if isinstance(config, LMConfig):
        from seqkit.generator import TextGenerator

        return TextGenerator.from_pretrained(directory, device=device)
    from seqkit.translator import Translator

    translator = Translator.from_pretrained(directory, device=device)
    translator.check_text_source()
    return translator


def _model_type(directory: str) -> str | None:
    """The `model_type` config.json names, or None (the loaders report what is wrong)."""
    try:
        meta = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta.get("model_type") if isinstance(meta, dict) else None


def _image_decoding(model: ImageGenerator, decoding: Decoding, args: argparse.Namespace):
    """The flags' decoding over the model's own sampling settings (searching: as given)."""
    from seqkit.sampling import SamplingConfig

    if not isinstance(decoding, SamplingConfig):
        return decoding
    given = {k: getattr(decoding, k) for k in SAMPLING if getattr(args, k) is not None}
    seed = {"seed": args.seed} if args.seed is not None else {}
    return replace(model.sampling, **given, **seed)


def _draw(model: ImageGenerator, prompts: list[str], decoding: Decoding, args) -> None:
    """Draw every prompt's images and write them as one grid PNG to `args.out`: a row per
    prompt, or for one prompt a square grid of its samples."""
    from seqkit.errors import DataError
    from seqkit.image_generator import image_grid, save_png

    if not prompts:
        raise DataError(f"{args.input or '<stdin>'}: no prompts")
    rows = model.generate(prompts, decoding)
    n = decoding.num_returned
    columns = n if len(prompts) > 1 else math.ceil(math.sqrt(n))
    grid = image_grid([image for row in rows for image in row], columns)
    path = save_png(grid, args.out, args.scale)
    h, w = grid.shape[:2]
    print(f"{n * len(prompts)} image(s) of {len(prompts)} prompt(s) written to {path} "
          f"({w * args.scale}x{h * args.scale} pixels)")  # fmt: skip


def _outputs(
    model: TextGenerator | Translator, lines: Iterable[str], decoding: Decoding
) -> Iterator[list[tuple[str, float]]]:
    """(text, score) of each output of each input, in input order, as chunks are done."""
    from seqkit.decoding import DecodingConfig
    from seqkit.generator import TextGenerator

    if isinstance(model, TextGenerator):
        lines = iter(lines)
        while chunk := list(itertools.islice(lines, CHUNK)):
            for outputs in model.generate(chunk, decoding):
                yield [(c.text, c.score) for c in outputs]
        return
    # A seq2seq model keeps its own length penalty, min_len and max_len unless told.
    base = model.decoding
    lengths = {"min_len": base.min_len, "max_len": base.max_len}
    if isinstance(decoding, DecodingConfig):
        lengths["alpha"] = base.alpha
    given = {"max_len": decoding.max_len} if decoding.max_len is not None else {}
    decoding = replace(decoding, **{**lengths, **given})
    for translation in model.translate_stream(lines, decoding, chunk_size=CHUNK):
        yield [(h.text, h.score) for h in translation.hypotheses]


def _write(out: TextIO, index: int, hyps: list[tuple[str, float]], fmt: str, n: int) -> None:
    """One input's outputs: one line (text), `INDEX ||| TEXT ||| SCORE` lines (several
    outputs, as `seqkit translate --nbest`), or one JSON object per output (jsonl)."""
    from seqkit.translator import one_line

    for sample, (text, score) in enumerate(hyps):
        if fmt == "jsonl":
            record = {"index": index, "sample": sample, "text": text, "score": round(score, 6)}
            out.write(json.dumps(record, ensure_ascii=False).translate(JSON_LINE_BREAKS) + "\n")
        elif n > 1:
            out.write(f"{index} ||| {one_line(text)} ||| {score:.4f}\n")
        else:
            out.write(one_line(text) + "\n")
