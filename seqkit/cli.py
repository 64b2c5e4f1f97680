"""The `seqkit` command: LightningCLI's fit/validate/test/predict (`seqkit.lit.cli`, imported
only for them); translate, evaluate, serve, predict, export, average and diagnose, which load
a model directory without Lightning."""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from seqkit.export import CTRANSLATE2_COMPUTE_TYPES, CTRANSLATE2_QUANTIZATIONS

if TYPE_CHECKING:
    from seqkit.translator import Translation, Translator

USAGE = """usage: seqkit COMMAND [options]

Training (LightningCLI; `seqkit COMMAND --help` lists every option):
  fit        train a recipe: seqkit fit --config recipes/transformer-numbers.yaml
             (then tests the best checkpoint and exports it next to the logs)
  validate   score a checkpoint on the validation split
  test       score a checkpoint on the test split
  predict    the test split's (or a "predict" split's) translations or labels, in order,
             into LOG_DIR/predictions.txt

Using trained models:
  translate  translate lines as they come: seqkit translate --model DIR < src.txt > hyp.txt
  generate   sample from an LM or seq2seq model: seqkit generate --model DIR --prompt "Once"
  evaluate   sacreBLEU and chrF: seqkit evaluate --model DIR --src test.en.gz --ref test.de.gz
  serve      an HTTP API: seqkit serve --model DIR [--host 127.0.0.1] [--port 8000]
  predict    label or read image files: seqkit predict --model DIR a.png b.png
  export     write a checkpoint as a model directory: seqkit export CKPT DIR
             (or for CTranslate2 / ONNX Runtime: seqkit export --format ctranslate2 SRC DIR)
  average    average checkpoints: seqkit average --last 5 RUN_DIR/checkpoints --out DIR
  diagnose   look inside: seqkit diagnose attention --model DIR --text "forty-two" --out DIR
  inspect-data  tokens per word of new data with a model's tokenizer, before fine-tuning:
             seqkit inspect-data --model DIR --data PATH --src-lang en --tgt-lang fr
"""
ENGINES = ("seqkit", "ctranslate2", "onnxruntime")
EXPORT_FORMATS = ("safetensors", "ctranslate2", "onnx")
# DecodingConfig field -> the flag that sets it, so that an error names what the user typed.
FLAGS = {"beam_size": "--beam", "n_best": "--nbest", "alpha": "--alpha",
         "min_len": "--min-len", "max_len": "--max-len"}  # fmt: skip
SHOWN = 10  # line numbers a warning lists
JSON_LINE_BREAKS = {ord(c): f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"}


def _decoding_args(parser: argparse.ArgumentParser, engines: bool = False) -> None:
    """The model and decoding flags; `engines`: the command also has --engine."""
    parser.add_argument("--model", required=True, help="model directory (seqkit export)")
    parser.add_argument("--beam", type=int, help="beam size, 1 = greedy (default: the model's)")
    parser.add_argument("--nbest", type=int, help="hypotheses per input, at most --beam")
    parser.add_argument("--alpha", type=float, help="length penalty exponent (GNMT), 0 to 50")
    parser.add_argument("--min-len", type=int, help="fewest output tokens (EOS banned before)")
    parser.add_argument(
        "--max-len", type=int, help="most output tokens per sentence (default: 1.5 × source + 10)"
    )
    parser.add_argument("--max-tokens", type=int, default=4096, help="source tokens per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--compute-type",
        help="inference precision: float32 (default), bfloat16, or int8 (dynamic quantization, "
        "CPU)"
        + (
            "; with --engine ctranslate2 any CTranslate2 compute type (default: the export's)"
            if engines
            else ""
        ),
    )


def _load(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Translator:
    """The model `--model` names, on `--device`, with the decoding flags applied (validated:
    a bad value exits with status 2 and one line naming the flag)."""
    from seqkit.decoding import DecodingError
    from seqkit.precision import COMPUTE_TYPES
    from seqkit.translator import Translator

    if args.max_tokens < 1:
        _usage_error(parser, "--max-tokens", f"must be at least 1, got {args.max_tokens}")
    compute_type = args.compute_type or "float32"
    if compute_type not in COMPUTE_TYPES:
        _usage_error(parser, "--compute-type", f"choose one of {', '.join(COMPUTE_TYPES)}, "
                     f"got {compute_type!r}")  # fmt: skip
    translator = Translator.from_pretrained(args.model, args.device, compute_type)
    n_best = args.nbest
    if n_best is None and args.beam is not None:  # a narrower beam keeps what n-best it can
        n_best = min(translator.decoding.n_best, max(args.beam, 1))
    given = {"beam_size": args.beam, "n_best": n_best, "alpha": args.alpha,
             "min_len": args.min_len, "max_len": args.max_len}  # fmt: skip
    try:
        translator.decoding = replace(
            translator.decoding, **{k: v for k, v in given.items() if v is not None}
        )
    except DecodingError as err:
        _usage_error(parser, FLAGS[err.field], err.reason)
    return translator


def _usage_error(parser: argparse.ArgumentParser, flag: str, reason: str) -> None:
    parser.exit(2, f"{parser.prog}: error: argument {flag}: {reason}\n")


def _input(path: str | None):
    from seqkit.errors import DataError
    from seqkit.textio import iter_lines

    if path is None or path == "-":
        return iter_lines(sys.stdin.buffer, name="<stdin>")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    return iter_lines(path)


def _check_output(
    parser: argparse.ArgumentParser, out: str | None, inputs: dict[str, str | None]
) -> None:
    """Refuse an --out that would destroy one of the command's `inputs` (flag: file) or
    cannot be a file, before it is opened."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        _usage_error(parser, "--out", f"{out} is a directory")
    for flag, file in inputs.items():
        if file not in (None, "-") and path.exists() and path.samefile(file):
            _usage_error(parser, "--out", f"{out} is the {flag} file: it would be overwritten")


class _Report:
    """Counts what a user must hear about (to stderr) while lines stream through."""

    def __init__(self, text_output: bool, start: int = 0) -> None:
        self.n = self.start = start  # lines done before this run (--resume)
        self.clock = time.perf_counter()
        self.truncated: list[int] = []
        self.hit_limit: list[int] = []
        self.line_breaks: list[int] = []
        self.text_output = text_output  # jsonl escapes line breaks: nothing to report

    def add(self, translation: Translation) -> None:
        self.n += 1
        if translation.source_truncated:
            self.truncated.append(self.n)
        if translation.hit_limit:
            self.hit_limit.append(self.n)
        if self.text_output and any(_breaks(h.text) for h in translation.hypotheses):
            self.line_breaks.append(self.n)

    def progress(self, stream: TextIO) -> None:
        seconds, n = time.perf_counter() - self.clock, self.n - self.start
        stream.write(f"\r{n:,} lines, {n / max(seconds, 1e-9):,.1f} sentences/s")
        stream.flush()

    def close(self, stream: TextIO, positions: int | None) -> None:
        seconds, n = time.perf_counter() - self.clock, self.n - self.start
        stream.write(f"\r{n:,} lines translated in {seconds:.1f} s "
                     f"({n / max(seconds, 1e-9):,.1f} sentences/s)\n")  # fmt: skip
        for lines, what in (
            (self.truncated, f"source(s) longer than max_positions={positions} tokens, cut"),
            (self.hit_limit, "translation(s) stopped at their length limit without ending"),
            (self.line_breaks, "translation(s) held line breaks, written as spaces"),
        ):
            if lines:
                shown = ", ".join(map(str, lines[:SHOWN])) + (", ..." if len(lines) > SHOWN else "")
                stream.write(f"warning: {len(lines)} {what}: line(s) {shown}\n")


def _breaks(text: str) -> bool:
    from seqkit.translator import one_line

    return one_line(text) != text


def _write(out: TextIO, index: int, translation: Translation, fmt: str, n_best: int) -> None:
    """One input's output: its line (text), its n-best lines `INDEX ||| HYPOTHESIS ||| SCORE`
    (Moses, fairseq), or one JSON object (jsonl)."""
    from seqkit.translator import one_line

    if fmt == "jsonl":
        hyps = [{"text": h.text, "score": round(h.score, 6)} for h in translation.hypotheses]
        record = {"index": index, "hypotheses": hyps, "hit_limit": translation.hit_limit,
                  "source_truncated": translation.source_truncated}  # fmt: skip
        line = json.dumps(record, ensure_ascii=False)
        # Valid raw inside JSON strings, but some readers split lines on them: escape them.
        out.write(line.translate(JSON_LINE_BREAKS) + "\n")
    elif n_best > 1:
        for h in translation.hypotheses:
            out.write(f"{index} ||| {one_line(h.text)} ||| {h.score:.4f}\n")
    else:
        out.write(one_line(translation.text) + "\n")


def translate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit translate",
        description="Translate plain text line by line as it comes (chunks sorted by length, "
        "written in input order as soon as they are done): output line N belongs to input "
        "line N; empty lines stay empty.",
    )
    _decoding_args(parser, engines=True)
    parser.add_argument("--src", help="input file, .gz allowed (default: stdin)")
    parser.add_argument("--out", help="output file (default: stdout)")
    parser.add_argument(
        "--format",
        choices=["text", "jsonl"],
        default="text",
        help="text: one line per input, or with --nbest N > 1, N lines "
        "'INDEX ||| HYPOTHESIS ||| SCORE' (Moses/fairseq); jsonl: one JSON object per input "
        "with its hypotheses and scores",
    )
    parser.add_argument("--chunk-size", type=int, default=2000, help="lines read at a time")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run: keep --out's complete outputs, drop a partial last one, "
        "and translate the input from the first line not yet done",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="seqkit",
        help="seqkit: the model directory in PyTorch; ctranslate2 or onnxruntime: a directory "
        "written by seqkit export --format ctranslate2 or onnx (text output, best hypothesis)",
    )
    _tgt_lang_arg(parser)
    args = parser.parse_args(argv)
    if args.chunk_size < 1:
        _usage_error(parser, "--chunk-size", f"must be at least 1, got {args.chunk_size}")
    if args.resume and not args.out:
        _usage_error(parser, "--resume", "needs --out, the file to continue")
    if args.engine == "seqkit":
        translator = _load(parser, args)
        translator.check_text_source()
        decoding = translator.decoding
    else:
        translator, decoding = _engine(parser, args)
    _check_tgt_lang(parser, translator, args.tgt_lang)
    lines = _input(args.src)
    _check_output(parser, args.out, {"--src": args.src})
    per_input = decoding.n_best if args.format == "text" and decoding.n_best > 1 else 1
    done = _resume_point(Path(args.out), per_input) if args.resume else 0
    if done:
        lines = itertools.islice(lines, done, None)
        print(f"resuming {args.out} after {done:,} lines of input", file=sys.stderr)
    report = _Report(text_output=args.format == "text", start=done)
    with _output(args.out, args.resume) as out:
        options = {"max_tokens": args.max_tokens, "chunk_size": args.chunk_size,
                   "tgt_lang": args.tgt_lang}  # fmt: skip
        stream = translator.translate_stream(lines, decoding, **options)
        for index, translation in enumerate(stream, start=done):
            _write(out, index, translation, args.format, decoding.n_best)
            report.add(translation)
            if report.n % args.chunk_size == 0:  # a chunk is done: let readers have it
                out.flush()
                if sys.stderr.isatty():
                    report.progress(sys.stderr)
    report.close(sys.stderr, translator.max_positions)


@contextmanager
def _output(path: str | None, append: bool) -> Iterator[TextIO]:
    """`path` opened for writing (appending with `append`), or stdout; flushed, and closed
    if a file, however the block ends."""
    out = open(path, "a" if append else "w", encoding="utf-8") if path else sys.stdout  # noqa: SIM115
    try:
        yield out
    finally:
        out.flush()
        if out is not sys.stdout:
            out.close()


def _engine(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The CTranslate2 or ONNX Runtime translator of `--model` and its decoding settings with
    the flags applied (a bad value exits with status 2 naming the flag); a missing extra or a
    directory that is not such an export exits with one line naming it."""
    from seqkit.decoding import DecodingConfig, DecodingError

    if args.format != "text" or (args.nbest or 1) > 1:
        _usage_error(parser, "--engine", f"{args.engine} writes text, one best hypothesis a line "
                     "(drop --format jsonl and --nbest)")  # fmt: skip
    if args.max_tokens < 1:
        _usage_error(parser, "--max-tokens", f"must be at least 1, got {args.max_tokens}")
    try:
        if args.engine == "ctranslate2":
            from seqkit.export.ctranslate2 import CTranslate2Translator

            if args.compute_type not in (None, *CTRANSLATE2_COMPUTE_TYPES):
                types = ", ".join(CTRANSLATE2_COMPUTE_TYPES)
                message = f"choose one of CTranslate2's {types}, got {args.compute_type!r}"
                _usage_error(parser, "--compute-type", message)
            translator = CTranslate2Translator.from_directory(
                args.model, device=args.device, compute_type=args.compute_type or "default"
            )
        else:
            from seqkit.export.onnx import OnnxTranslator

            if args.device != "cpu":
                _usage_error(parser, "--device", "the onnxruntime engine runs on the CPU")
            if args.compute_type not in (None, "float32"):
                _usage_error(parser, "--compute-type", "the onnxruntime engine runs float32")
            translator = OnnxTranslator.from_directory(args.model)
    except ImportError as err:
        extra = {"ctranslate2": "ctranslate2", "onnxruntime": "onnx"}[args.engine]
        hint = "" if "seqkit[" in str(err) else f" (pip install 'seqkit[{extra}]')"
        sys.exit(f"seqkit translate: --engine {args.engine}: {err}{hint}")
    given = {"beam_size": args.beam, "n_best": 1, "alpha": args.alpha,
             "min_len": args.min_len, "max_len": args.max_len}  # fmt: skip
    try:
        decoding = replace(getattr(translator, "decoding", None) or DecodingConfig(),
                           **{k: v for k, v in given.items() if v is not None})  # fmt: skip
    except DecodingError as err:
        _usage_error(parser, FLAGS[err.field], err.reason)
    return translator, decoding


def _resume_point(path: Path, per_input: int) -> int:
    """How many inputs `path` holds complete (`per_input` lines each); cuts off what follows
    them (a line or n-best group a stopped run left half written)."""
    if not path.exists():
        return 0
    lines = offset = keep = 0
    with path.open("rb") as f:  # line by line: the file may be larger than memory
        for line in f:
            offset += len(line)
            if line.endswith(b"\n"):
                lines += 1
                keep = offset if lines % per_input == 0 else keep
    if keep < offset:
        with path.open("r+b") as f:
            f.truncate(keep)
    return lines // per_input


def _tgt_lang_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tgt-lang",
        help="the language to write, for a multilingual model (one trained with "
        "MultilingualTranslationData; its languages are listed when this is left out)",
    )


def _check_tgt_lang(parser: argparse.ArgumentParser, translator, tgt_lang: str | None) -> None:
    """A usage error naming --tgt-lang when the model cannot write `tgt_lang` (or needs one)."""
    try:
        translator.tag_id(tgt_lang)
    except ValueError as err:
        _usage_error(parser, "--tgt-lang", str(err))


def evaluate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit evaluate",
        description="Translate --src and score it against --ref with sacreBLEU and chrF "
        "(the code path validation uses).",
    )
    _decoding_args(parser)
    parser.add_argument("--src", required=True, help="source file, .gz allowed")
    parser.add_argument("--ref", required=True, help="reference file, .gz allowed")
    parser.add_argument("--out", help="also write the translations here")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    _tgt_lang_arg(parser)
    args = parser.parse_args(argv)
    from seqkit.metrics import translation_scores
    from seqkit.translator import one_line

    _check_output(parser, args.out, {"--src": args.src, "--ref": args.ref})
    sources, refs = list(_input(args.src)), list(_input(args.ref))
    if len(sources) != len(refs):
        sys.exit(
            f"seqkit evaluate: {args.src} has {len(sources)} lines but {args.ref} has "
            f"{len(refs)}; they must be aligned line by line"
        )
    if not any(line.strip() for line in sources):
        sys.exit(f"seqkit evaluate: {args.src}: no sentences to score")
    translator = _load(parser, args)
    _check_tgt_lang(parser, translator, args.tgt_lang)
    hyps = translator.translate(sources, max_tokens=args.max_tokens, tgt_lang=args.tgt_lang)
    if args.out:
        Path(args.out).write_text("".join(one_line(h) + "\n" for h in hyps), encoding="utf-8")
    scores = translation_scores(hyps, refs)
    if args.json:
        print(json.dumps(scores, indent=2))
        return
    print(f"BLEU = {scores['bleu']:.2f}  {scores['bleu_signature']}")
    print(f"chrF = {scores['chrf']:.2f}  {scores['chrf_signature']}")
    print(f"exact match = {scores['exact_match']:.4f}")


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit export",
        description="Write a training checkpoint as a self-contained model directory "
        "(config.json, model.safetensors, tokenizer file(s), README.md), or a checkpoint or "
        "model directory for another inference engine: CTranslate2 (Transformer seq2seq "
        "models) or ONNX Runtime; or a model directory with a LoRA adapter merged into it "
        "(--merge-adapter).",
    )
    parser.add_argument("source", help="a .ckpt file written by seqkit fit, or (for "
                        "--format ctranslate2 or onnx, or --merge-adapter) a model "
                        "directory")  # fmt: skip
    parser.add_argument("directory", help="where to write the model")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default="safetensors",
                        help="safetensors: a seqkit model directory (default); ctranslate2: "
                        "for seqkit translate --engine ctranslate2; onnx: for --engine "
                        "onnxruntime")  # fmt: skip
    parser.add_argument("--merge-adapter", metavar="ADAPTER_DIR",
                        help="a LoRA adapter directory (adapter_config.json, "
                        "adapter_model.safetensors) to merge into the model directory SOURCE, "
                        "its base")  # fmt: skip
    parser.add_argument("--quantize", choices=CTRANSLATE2_QUANTIZATIONS,
                        help="weight type of a ctranslate2 export (default: float32)")  # fmt: skip
    args = parser.parse_args(argv)
    source = Path(args.source)
    if args.quantize and args.format != "ctranslate2":
        _usage_error(parser, "--quantize", "only with --format ctranslate2")
    if args.merge_adapter:
        if not source.is_dir():
            _usage_error(parser, "--merge-adapter", f"SOURCE {source} is not a model directory")
        out = _merge_adapter(source, Path(args.merge_adapter), Path(args.directory), args)
        print(f"model written to {Path(out).resolve()}")
        return
    if args.format == "safetensors" and source.is_dir():
        _usage_error(parser, "source", f"{source} is already a model directory; give a .ckpt "
                     "file, or --format ctranslate2 or onnx")  # fmt: skip
    if not source.is_file() and not source.is_dir():
        sys.exit(f"seqkit export: {source}: no such checkpoint file or model directory")
    if args.format == "safetensors":
        out = _checkpoint_to_directory(source, Path(args.directory))
    elif source.is_dir():
        out = _export_directory(source, Path(args.directory), args.format, args.quantize)
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="seqkit-export-") as temp:
            model_dir = _checkpoint_to_directory(source, Path(temp) / "model")
            out = _export_directory(model_dir, Path(args.directory), args.format, args.quantize)
    print(f"model written to {Path(out).resolve()}")


def _merge_adapter(source: Path, adapter: Path, out: Path, args: argparse.Namespace) -> Path:
    """The model directory `source` with the LoRA `adapter` merged in, written to `out` in
    `args.format`; an adapter that does not fit exits with one line naming it."""
    import tempfile

    from seqkit.translator import Translator

    try:
        translator = Translator.from_pretrained(source, adapter=adapter)
    except (OSError, ValueError, ImportError) as err:
        sys.exit(f"seqkit export: --merge-adapter {adapter}: {err}")
    if args.format == "safetensors":
        return translator.save_pretrained(out)
    with tempfile.TemporaryDirectory(prefix="seqkit-export-") as temp:
        model_dir = translator.save_pretrained(Path(temp) / "model")
        return _export_directory(model_dir, out, args.format, args.quantize)


def _checkpoint_to_directory(checkpoint: Path, directory: Path) -> Path:
    from seqkit.lit.cli import load_checkpoint, pretrained

    return pretrained(load_checkpoint(checkpoint)).save_pretrained(directory)


def _export_directory(model_dir: Path, out: Path, fmt: str, quantize: str | None) -> Path:
    """Export the model directory `model_dir` to `fmt` (ctranslate2, onnx) at `out`; a missing
    extra exits with one line naming it."""
    try:
        if fmt == "ctranslate2":
            from seqkit.export.ctranslate2 import export_ctranslate2

            return export_ctranslate2(model_dir, out, quantization=quantize)
        from seqkit.export.onnx import export_onnx

        return export_onnx(model_dir, out)
    except ImportError as err:
        extra = {"ctranslate2": "ctranslate2", "onnx": "onnx"}[fmt]
        hint = "" if "seqkit[" in str(err) else f" (pip install 'seqkit[{extra}]')"
        sys.exit(f"seqkit export: --format {fmt}: {err}{hint}")


def predict_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit predict",
        description="Label image files with an image classifier, or read them with an "
        "image-to-text seq2seq model; prints FILE<TAB>OUTPUT per image. (Without --model DIR, "
        "`seqkit predict` is LightningCLI's: it predicts a recipe's test split.)",
    )
    parser.add_argument("--model", required=True, help="model directory (seqkit export)")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--beam", type=int, help="beam size of a seq2seq model")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    from seqkit.decoding import DecodingError
    from seqkit.labeler import Labeler
    from seqkit.models import ImageModelConfig, ModelConfig, read_model_config
    from seqkit.translator import Translator, one_line

    if args.batch_size < 1:
        _usage_error(parser, "--batch-size", f"must be at least 1, got {args.batch_size}")
    _, config = read_model_config(args.model, ModelConfig | ImageModelConfig)
    if isinstance(config, ImageModelConfig):
        labeler = Labeler.from_pretrained(args.model, device=args.device)
        outputs = labeler.predict(args.images, batch_size=args.batch_size)
    else:
        translator = Translator.from_pretrained(args.model, device=args.device)
        try:
            beam = {"beam_size": args.beam} if args.beam is not None else {}
            decoding = replace(translator.decoding, **beam)
        except DecodingError as err:
            _usage_error(parser, "--beam", err.reason)
        outputs = translator.read(args.images, decoding, batch_size=args.batch_size)
    for path, output in zip(args.images, outputs, strict=True):
        print(f"{path}\t{one_line(str(output))}")


TOOLS = {
    "translate": translate_main,
    "generate": "seqkit.generate_cli:main",
    "evaluate": evaluate_main,
    "serve": "seqkit.serve:main",
    "export": export_main,
    "average": "seqkit.average:main",
    "diagnose": "seqkit.diagnose:main",
    "inspect-data": "seqkit.inspect_data:main",
}
"""Command -> its function, or "module:function" for one imported only when it runs."""


def _tool(name: str):
    tool = TOOLS[name]
    if isinstance(tool, str):
        module, _, function = tool.partition(":")
        tool = getattr(importlib.import_module(module), function)
    return tool


def _names_model_directory(args: list[str]) -> bool:
    """Whether `--model` names an exported model (LightningCLI's takes a class or options)."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--model=") else None
        if arg == "--model" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None:  # a class name or option string has no "/"
            return (Path(value) / "config.json").is_file() or "/" in value
    return False


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    from seqkit.errors import ConfigError, DataError, TrainingError

    try:
        if args[0] in TOOLS:
            _tool(args[0])(args[1:])
        elif args[0] == "predict" and _names_model_directory(args[1:]):
            predict_main(args[1:])
        else:
            from seqkit.lit.cli import cli_main

            cli_main(argv)  # None: LightningCLI reads sys.argv itself
    except BrokenPipeError:  # `seqkit translate ... | head`: the reader has all it wants
        sys.stderr.close()
    except (DataError, ConfigError, TrainingError, FileNotFoundError) as err:  # named
        sys.exit(f"seqkit {args[0]}: {err}")
    except OSError as err:  # an output that cannot be written: full disk, no permission
        sys.exit(f"seqkit {args[0]}: {err.filename or 'output'}: {err.strerror or err}")
    except ValueError as err:  # a model directory or option the tools refuse, by name
        if args[0] not in TOOLS and args[0] != "predict":
            raise
        sys.exit(f"seqkit {args[0]}: {err}")


if __name__ == "__main__":
    main()
