"""Decoding speed against Hugging Face and CTranslate2, side by side, rounds interleaved.

    pip install -e ".[bench]"
    python bench/decode_speed.py [--model DIR] [--sentences 200] [--batch 50] [--rounds 3]
        [--no-hf] [--compute-types float32 int8 bfloat16] [--onnx] [--compile]
        [--ct2-in-process]

Every system decodes the same test2016 English sentences in the same length-sorted batches,
with outputs forced to `--length` tokens (min = max length), so that each does the same work
whatever its weights: greedy and beam 5, 2 threads each, rounds interleaved (A B C A B C ...);
the median round counts. Systems:

- seqkit in float32, and in its fastest inference options (`--compute-type` int8: PyTorch's
  dynamic quantization; bfloat16);
- Hugging Face `MarianMTModel.generate` of the same size (its own random weights);
- CTranslate2 float32 and int8 on seqkit's own weights (`seqkit export --format ctranslate2`),
  each in a worker process of its own, fed the same batches (see `ct2_system`);
- with `--onnx`, seqkit's search on ONNX Runtime over its own ONNX export (`onnx_system`);
- with `--compile`, seqkit float32 over `torch.compile(net.decode, dynamic=True)`, its
  compilation timed on the warm-up batch.

Without `--model`, the model is untrained, of the d_model 256 Multi30k size (3+3 layers,
d_model 256, 4 heads, FFN 1024) with an 8,000-token joint vocabulary learned on Multi30k. With
`--model` (a trained model directory), it also decodes the whole test set at natural length with
beam 5, and prints sacreBLEU of seqkit and CTranslate2 side by side. Ratios are printed last.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared/data/multi30k"
THREADS = 2


def build_model(directory: Path) -> Path:
    """An untrained Transformer of the d_model 256 Multi30k size with a Multi30k tokenizer."""
    from seqkit.data.sources import read_lines
    from seqkit.data.tokenizer import Tokenizers
    from seqkit.models import TransformerConfig, build_model
    from seqkit.translator import Translator

    texts = read_lines(DATA / "train.en.gz") + read_lines(DATA / "train.de.gz")
    tokenizers = Tokenizers.train(texts, texts, vocab_size=8000, joint=True)
    torch.manual_seed(0)
    config = TransformerConfig(
        src_vocab_size=tokenizers.src_vocab_size, tgt_vocab_size=tokenizers.tgt_vocab_size,
        d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024,
        share_embeddings=True,
    )  # fmt: skip
    return Translator(build_model(config).eval(), tokenizers).save_pretrained(directory)


def batches(ids: list[list[int]], size: int) -> list[torch.Tensor]:
    """Padded (B, S) batches of `size` sources, sorted by length (every system gets these)."""
    from seqkit.data.batching import pad

    order = sorted(ids, key=len)
    return [pad([torch.tensor(x) for x in order[i : i + size]]) for i in range(0, len(ids), size)]


def seqkit_system(
    model: Path, compute_type: str, beam: int, length: int, compiled: bool = False
) -> Callable:
    """seqkit's search; with `compiled`, over `torch.compile(net.decode, dynamic=True)`,
    printing how long the first batch (the compilation) took."""
    from seqkit.decoding import DecodingConfig, search
    from seqkit.translator import Translator

    net = Translator.from_pretrained(model, compute_type=compute_type).net
    config = DecodingConfig(beam_size=beam, min_len=length, max_len=length)

    def run(batch: torch.Tensor):
        return search(net, batch, batch != 0, config)

    if not compiled:
        return run
    net.decode = torch.compile(net.decode, dynamic=True)
    first = True

    def run_compiled(batch: torch.Tensor):
        nonlocal first
        start = time.perf_counter()
        out = run(batch)
        if first:
            print(f"  (beam {beam}: torch.compile's first batch took "
                  f"{time.perf_counter() - start:.1f} s)", flush=True)  # fmt: skip
            first = False
        return out

    return run_compiled


def hf_system(vocab: int, beam: int, length: int) -> Callable:
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(
        vocab_size=vocab, d_model=256, encoder_layers=3, decoder_layers=3,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
        decoder_ffn_dim=1024, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=1, forced_eos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    options = {"num_beams": beam, "do_sample": False, "min_new_tokens": length,
               "max_new_tokens": length, "early_stopping": False}  # fmt: skip

    def run(batch: torch.Tensor):
        with torch.inference_mode():
            return model.generate(input_ids=batch, attention_mask=batch != 0, **options)

    return run


def ct2_system(
    export: Path, vocab: list[str], beam: int, length: int, own_process: bool = True
) -> Callable:
    """CTranslate2 decoding, called batch by batch; in a process of its own (`_ct2_serve`)
    unless `own_process` is False (`--ct2-in-process`: in this process, where `main`'s export
    has imported ctranslate2 as seqkit does).

    Imported plainly after PyTorch, CTranslate2 binds to the OpenMP runtime PyTorch loaded
    first (its symbols are global), and both engines slow down once both have run (see
    `seqkit.export.ctranslate2._ctranslate2`, which avoids it). A process of its own measures
    CTranslate2 alone whatever imported it first.
    """
    if own_process:
        context = multiprocessing.get_context("spawn")
        conn, child = context.Pipe()
        args = (child, str(export), beam, length)
        context.Process(target=_ct2_serve, args=args, daemon=True).start()

        def translate(tokens: list[list[str]]) -> int:
            conn.send(tokens)
            return conn.recv()
    else:
        translate = _ct2_translate(str(export), beam, length)
    return lambda batch: translate([[vocab[i] for i in row if i] for row in batch.tolist()])


def _ct2_translate(export: str, beam: int, length: int) -> Callable[[list[list[str]]], int]:
    import ctranslate2

    translator = ctranslate2.Translator(export, device="cpu", inter_threads=1,
                                        intra_threads=THREADS)  # fmt: skip

    def translate(tokens: list[list[str]]) -> int:
        # With scores, as seqkit's search (and its CTranslate2 engine) returns them: without,
        # CTranslate2's greedy search skips the log-softmax over the vocabulary.
        translator.translate_batch(
            tokens, beam_size=beam, min_decoding_length=length, max_decoding_length=length,
            max_batch_size=len(tokens), return_scores=True,
        )  # fmt: skip
        return len(tokens)

    return translate


def _ct2_serve(conn, export: str, beam: int, length: int) -> None:
    """Translate each batch of token lists received on `conn` and answer with its size, until
    the other end closes."""
    translate = _ct2_translate(export, beam, length)
    while True:
        try:
            tokens = conn.recv()
        except EOFError:  # the bench is done with this system
            return
        conn.send(translate(tokens))


def onnx_system(export: Path, beam: int, length: int, spinning: bool = False) -> Callable:
    """seqkit's search over its ONNX export on ONNX Runtime (`--engine onnxruntime`); with
    `spinning`, sessions keep ONNX Runtime's default of threads spinning between runs, which
    seqkit turns off (see `OnnxTranslator.from_directory`)."""
    from seqkit.decoding import DecodingConfig, search
    from seqkit.export.onnx import DECODER_FILE, ENCODER_FILE, OnnxTranslator

    net = OnnxTranslator.from_directory(export, threads=THREADS).net
    if spinning:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        net.encoder, net.decoder = (
            ort.InferenceSession(str(export / f), options, providers=["CPUExecutionProvider"])
            for f in (ENCODER_FILE, DECODER_FILE)
        )
    config = DecodingConfig(beam_size=beam, min_len=length, max_len=length)
    return lambda batch: search(net, batch, batch != 0, config)


def timed_rounds(systems: dict[str, Callable], data: list[torch.Tensor], rounds: int) -> dict:
    """Sentences/s of each system: one warm-up pass, then `rounds` interleaved; the median."""
    n = sum(len(b) for b in data)
    times: dict[str, list[float]] = {name: [] for name in systems}
    for run in systems.values():
        run(data[0])
    for _ in range(rounds):
        for name, run in systems.items():
            start = time.perf_counter()
            for batch in data:
                run(batch)
            times[name].append(time.perf_counter() - start)
    return {name: n / statistics.median(t) for name, t in times.items()}


def natural_length(model: Path, export: Path, args: argparse.Namespace) -> None:
    """Beam 5 over the whole test set at natural length: speed and sacreBLEU, seqkit vs CT2,
    each engine in a fresh process of its own (see `ct2_system`), one after the other."""
    from seqkit.data.sources import read_lines
    from seqkit.metrics import translation_scores

    sources = read_lines(DATA / "test_2016_flickr.en.gz")
    refs = read_lines(DATA / "test_2016_flickr.de.gz")
    print(f"\nnatural length, beam 5, {len(sources)} test2016 sentences:")
    context = multiprocessing.get_context("spawn")
    for engine, compute_type in itertools.product(("seqkit", "CTranslate2"), ("float32", "int8")):
        directory = model if engine == "seqkit" else export
        with context.Pool(1) as pool:
            seconds, hyps = pool.apply(_translate_timed, (engine, directory, compute_type, sources))
        bleu = translation_scores(hyps, refs)["bleu"]
        name = f"{engine} {compute_type}"
        print(f"  {name:<22} {len(sources) / seconds:6.1f} sent/s  sacreBLEU {bleu:.1f}")


def _translate_timed(
    engine: str, directory: Path, compute_type: str, sources: list[str]
) -> tuple[float, list[str]]:
    """Seconds to translate `sources` with beam 5 (loading not counted), and the translations."""
    from seqkit.export.ctranslate2 import CTranslate2Translator
    from seqkit.translator import Translator

    torch.set_num_threads(THREADS)
    if engine == "seqkit":
        translator = Translator.from_pretrained(directory, compute_type=compute_type)
    else:
        translator = CTranslate2Translator.from_directory(
            directory, compute_type=compute_type, intra_threads=THREADS
        )
    decoding = replace(translator.decoding, beam_size=5, n_best=1)
    start = time.perf_counter()
    hyps = translator.translate(sources, decoding)
    seconds = time.perf_counter() - start
    return seconds, [h.text if hasattr(h, "text") else h for h in hyps]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="a trained model directory (seqkit export)")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--length", type=int, default=40, help="forced output tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--no-hf", action="store_true", help="leave Hugging Face out")
    parser.add_argument(
        "--compute-types", nargs="+", default=["float32", "int8", "bfloat16"],
        choices=["float32", "int8", "bfloat16"],
        help="seqkit's compute types to run (float32 always runs: the ratios need it)",
    )  # fmt: skip
    parser.add_argument(
        "--natural-only", action="store_true", help="with --model: only the natural-length run"
    )
    parser.add_argument(
        "--onnx", action="store_true",
        help="also run seqkit's search on its ONNX export with ONNX Runtime (--engine "
        "onnxruntime), with seqkit's session options and with ONNX Runtime's spinning threads",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true",
        help="also run seqkit float32 over torch.compile(net.decode, dynamic=True); not counted "
        "as seqkit's fastest option (seqkit's commands decode eagerly)",
    )  # fmt: skip
    parser.add_argument(
        "--ct2-in-process", action="store_true",
        help="also run CTranslate2 float32 in the bench's own process, beside PyTorch, as seqkit "
        "imports it (with its own OpenMP runtime; see seqkit.export.ctranslate2._ctranslate2)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main() -> None:
    from seqkit.data.sources import read_lines
    from seqkit.export.ctranslate2 import export_ctranslate2
    from seqkit.translator import Translator

    args = parse_args()
    if not (DATA / "test_2016_flickr.en.gz").exists():
        sys.exit(f"Multi30k not found at {DATA}")
    torch.set_num_threads(THREADS)
    work = Path(tempfile.mkdtemp(prefix="decode-speed-"))
    model = args.model or build_model(work / "model")
    exports = {q: export_ctranslate2(model, work / f"ct2-{q}", quantization=q)
               for q in ("float32", "int8")}  # fmt: skip
    if args.onnx:
        from seqkit.export.onnx import export_onnx

        onnx_export = export_onnx(model, work / "onnx")
    tokenizers = Translator.from_pretrained(model).tokenizers
    vocab = [tokenizers.source.id_to_token(i) for i in range(tokenizers.src_vocab_size)]
    sources = read_lines(DATA / "test_2016_flickr.en.gz")[: args.sentences]
    data = batches(tokenizers.encode_source(sources), args.batch)
    results = {}
    for beam in [] if args.natural_only and args.model else args.beams:
        compute_types = ["float32", *(c for c in args.compute_types if c != "float32")]
        systems = {f"seqkit {c}": seqkit_system(model, c, beam, args.length) for c in compute_types}
        systems |= {
            "CTranslate2 float32": ct2_system(exports["float32"], vocab, beam, args.length),
            "CTranslate2 int8": ct2_system(exports["int8"], vocab, beam, args.length),
        }
        if args.compile:
            systems["seqkit float32 compiled"] = seqkit_system(
                model, "float32", beam, args.length, compiled=True
            )
        if args.onnx:
            systems["ONNX Runtime"] = onnx_system(onnx_export, beam, args.length)
            systems["ONNX Runtime, spinning"] = onnx_system(
                onnx_export, beam, args.length, spinning=True
            )
        if args.ct2_in_process:
            systems["CTranslate2 float32, in this process"] = ct2_system(
                exports["float32"], vocab, beam, args.length, own_process=False
            )
        if not args.no_hf:
            systems["HF generate"] = hf_system(tokenizers.tgt_vocab_size, beam, args.length)
        results[beam] = timed_rounds(systems, data, args.rounds)
        print(f"\nbeam {beam}: {args.sentences} sentences × {args.length} forced tokens, "
              f"batch {args.batch}, {THREADS} threads, median of {args.rounds} rounds")  # fmt: skip
        for name, rate in results[beam].items():
            print(f"  {name:<22} {rate:6.1f} sent/s")
    if args.model:
        natural_length(model, exports["float32"], args)
    print("\nratios (sentences/s over sentences/s):")
    for beam, r in results.items():
        best = max(rate for name, rate in r.items()
                   if name.startswith("seqkit") and not name.endswith("compiled"))  # fmt: skip
        line = (f"  beam {beam}: seqkit float32 / CTranslate2 float32 "
                f"{r['seqkit float32'] / r['CTranslate2 float32']:.2f}, fastest seqkit / "
                f"CTranslate2 float32 {best / r['CTranslate2 float32']:.2f}, / CTranslate2 int8 "
                f"{best / r['CTranslate2 int8']:.2f}")  # fmt: skip
        if "HF generate" in r:
            line += f", seqkit float32 / HF {r['seqkit float32'] / r['HF generate']:.2f}"
        if "seqkit float32 compiled" in r:
            line += f", compiled / eager {r['seqkit float32 compiled'] / r['seqkit float32']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
