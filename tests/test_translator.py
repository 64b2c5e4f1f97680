"""Translator: the inference layer outside Lightning. Loads every directory seqkit has written,
streams in order with bounded chunks, returns n-best lists with scores, decodes each sentence
independently of its batch-mates, and keeps output line N for input line N."""

import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from num2words import num2words
from test_checkpoints import Payload
from test_cli import seqkit
from torch import nn

from seqkit.cli import main
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig, DecodingError
from seqkit.models import TransformerConfig, build_model
from seqkit.tokens import EOS
from seqkit.translator import Translator, one_line

LEGACY = Path(__file__).parent / "fixtures" / "legacy"
PAIRS = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in range(0, 400, 3)]


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train([e for e, _ in PAIRS], [d for _, d in PAIRS], vocab_size=300)


def untrained(tokenizers: Tokenizers, **decoding) -> Translator:
    """A tiny untrained Transformer: its outputs are arbitrary but deterministic, and it
    rarely ends a sentence, so length limits decide how long outputs are."""
    torch.manual_seed(0)
    config = TransformerConfig(src_vocab_size=tokenizers.src_vocab_size,
                               tgt_vocab_size=tokenizers.tgt_vocab_size, d_model=32, n_heads=4,
                               n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0,
                               max_positions=64)  # fmt: skip
    return Translator(build_model(config).eval(), tokenizers, DecodingConfig(**decoding))


# -- model directories ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["transformer", "gru-bahdanau"])
def test_directories_written_before_model_type_load_with_identical_outputs(name):
    """tests/fixtures/legacy holds directories written by seqkit before config.json named a
    model_type and before ImageSource (commit a1615b1), with what they translated then."""
    expected = json.loads((LEGACY / "expected.json").read_text())[name]
    translator = Translator.from_pretrained(LEGACY / name)
    for decoding, key in ((DecodingConfig(beam_size=2), "beam_2"), (DecodingConfig(beam_size=1),
                          "greedy")):  # fmt: skip
        assert translator.translate(expected["texts"], decoding) == expected[key]


def test_an_image_to_text_directory_written_before_image_source_loads():
    expected = json.loads((LEGACY / "expected.json").read_text())["strip-reader"]
    translator = Translator.from_pretrained(LEGACY / "strip-reader")
    assert translator.image_source.patch_size == 4 and translator.image_source.height == 8
    pixels = np.load(LEGACY / "strip-reader" / "inputs.npy")
    strips = np.split(pixels, np.cumsum(expected["widths"])[:-1], axis=1)
    assert translator.read(strips, DecodingConfig(beam_size=2)) == expected["beam_2"]


def test_save_names_the_model_type_and_the_data_without_local_paths(tokenizers, tmp_path):
    translator = untrained(tokenizers)
    translator.provenance = {"data": {"class": "TranslationData", "path": str(tmp_path / "my.tsv"),
                                      "src_lang": "en", "tgt_lang": "de"}}  # fmt: skip
    directory = translator.save_pretrained(tmp_path / "model", metrics={"test/bleu": 1.5})
    meta = json.loads((directory / "config.json").read_text())
    assert meta["model_type"] == "transformer" and meta["decoding"]["n_best"] == 1
    card = (directory / "README.md").read_text()
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(meta)
    from huggingface_hub import ModelCard

    data = ModelCard.load(directory / "README.md").data
    assert (data.library_name, data.pipeline_tag) == ("seqkit", "translation")
    assert data.datasets == ["my.tsv"] and data.language == ["en", "de"]
    loaded = Translator.from_pretrained(directory)
    texts = ["seven", "three hundred and one"]
    assert loaded.translate(texts) == translator.translate(texts)


def test_a_config_naming_an_unknown_model_type_is_refused_by_file(tokenizers, tmp_path):
    directory = untrained(tokenizers).save_pretrained(tmp_path / "model")
    meta = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**meta, "model_type": "lstm2"}))
    with pytest.raises(ValueError, match=r"config\.json: model_type 'lstm2' is not one of"):
        Translator.from_pretrained(directory)


def test_translating_loads_no_lightning_datasets_or_scikit_learn():
    """Nor torch._dynamo (about 2 s of start-up), which meta-device ops can pull in."""
    code = (
        "import sys, seqkit\n"
        "assert 'lightning' not in sys.modules and 'torch' not in sys.modules\n"
        "from seqkit.translator import Translator\n"
        f"t = Translator.from_pretrained({str(LEGACY / 'transformer')!r})\n"
        "t.translate(['seven', ''])\n"
        "print(sorted(m for m in ('lightning', 'datasets', 'sklearn', 'pytorch_lightning',"
        " 'torch._dynamo') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- decoding -------------------------------------------------------------------------------
def test_a_sentences_output_does_not_depend_on_its_batch_mates(tokenizers):
    translator = untrained(tokenizers, beam_size=2)
    long = " ".join(["three hundred and seventy-seven"] * 5)
    alone = translator.translate(["one"])
    assert translator.translate(["one", long])[0] == alone[0]
    assert translator.translate(["one", long], max_tokens=8)[0] == alone[0]
    (first, second) = translator.translate_stream(["one", long])
    assert first.hit_limit and second.hit_limit  # an untrained model runs to its limits


def test_n_best_lists_are_sorted_and_start_with_the_translation(tokenizers):
    translator = untrained(tokenizers, beam_size=4, n_best=3, max_len=6)
    texts = ["seven", "", "forty-two"]
    results = list(translator.translate_stream(texts))
    assert [len(r.hypotheses) for r in results] == [3, 3, 3]
    for result, text in zip(results, translator.translate(texts), strict=True):
        scores = [h.score for h in result.hypotheses]
        assert scores == sorted(scores, reverse=True) and result.text == text
    assert results[1].hypotheses[0] == ("", 0.0)


def test_min_len_bans_eos_and_min_equals_max_forces_the_length(tokenizers, monkeypatch):
    translator = untrained(tokenizers)
    decode = translator.net.decode

    def eos_first(*args):  # EOS is the most likely next token everywhere
        logits, state = decode(*args)
        logits[..., EOS] += 100.0
        return logits, state

    monkeypatch.setattr(translator.net, "decode", eos_first)
    src = torch.tensor(tokenizers.encode_source(["seven"]))
    for beam in (1, 3):
        plain, _ = translator.search(src, None, DecodingConfig(beam_size=beam))
        assert plain[0][0].tokens == []
        forced, _ = translator.search(src, None, DecodingConfig(beam_size=beam, min_len=5,
                                                                 max_len=5))  # fmt: skip
        assert len(forced[0][0].tokens) == 5 and EOS not in forced[0][0].tokens
        longer, _ = translator.search(src, None, DecodingConfig(beam_size=beam, min_len=3))
        assert len(longer[0][0].tokens) == 3  # EOS right after the minimum
        # A minimum beyond the default limit (1.5 × 2 + 10) still leaves room for EOS.
        (past,) = translator.generate(src, None, DecodingConfig(beam_size=beam, min_len=30))
        assert not past.hit_limit and len(past.text) > 0


def test_streaming_keeps_order_reads_lazily_and_bounds_chunks(tokenizers):
    translator = untrained(tokenizers, beam_size=1, max_len=4)
    seen = []

    def lines():
        for n in range(10_000_000):  # far more than memory would hold as translations
            seen.append(n)
            yield num2words(n % 50) if n % 7 else ""

    stream = translator.translate_stream(lines(), chunk_size=16)
    first = [next(stream) for _ in range(20)]
    assert len(seen) == 32  # two chunks read, nothing more
    expected = translator.translate([num2words(n % 50) if n % 7 else "" for n in range(20)])
    assert [t.text for t in first] == expected
    assert first[0].text == "" and first[7].text == ""


def test_a_source_longer_than_max_positions_is_cut_and_flagged(tokenizers):
    translator = untrained(tokenizers, beam_size=1, max_len=3)
    long = " ".join(["seven hundred and seventy-seven"] * 20)
    assert len(tokenizers.encode_source([long])[0]) > 64
    short, cut = translator.translate_stream(["seven", long])
    assert not short.source_truncated and cut.source_truncated


@pytest.mark.parametrize(
    "changes, field",
    [({"beam_size": 0}, "beam_size"), ({"n_best": 6}, "n_best"), ({"alpha": -1.0}, "alpha"),
     ({"min_len": -1}, "min_len"), ({"max_len": 0}, "max_len"),
     ({"min_len": 9, "max_len": 3}, "min_len"), ({"alpha": float("inf")}, "alpha"),
     ({"alpha": float("nan")}, "alpha"), ({"alpha": 50.5}, "alpha")],
)  # fmt: skip
def test_decoding_config_names_the_field_it_refuses(changes, field):
    with pytest.raises(DecodingError, match=rf"decoding\.{field}:") as info:
        replace(DecodingConfig(), **changes)
    assert info.value.field == field


# -- one output line per input line -----------------------------------------------------------
class NewlineWriter(nn.Module):
    """A network that writes "a", a line break and "b", then ends: as a model trained on
    targets holding line breaks may."""

    def __init__(self, tokenizers: Tokenizers) -> None:
        super().__init__()
        self.config = TransformerConfig(src_vocab_size=1, tgt_vocab_size=1)
        self.vocab = tokenizers.tgt_vocab_size
        self.script = [*tokenizers.target.encode("a\nb").ids, EOS]
        self.weight = nn.Parameter(torch.zeros(1))

    def encode(self, src, src_mask):
        return src_mask[..., None].float()

    def init_state(self, memory, src_mask):
        return torch.zeros(len(memory), dtype=torch.long)

    def decode(self, tgt, memory, src_mask, state):
        logits = torch.zeros(len(state), 1, self.vocab)
        logits[torch.arange(len(state)), 0, torch.tensor(self.script)[state.clamp(max=3)]] = 9.0
        return logits, state + 1

    def reorder_state(self, state, index):
        return state.index_select(0, index)


def test_line_breaks_inside_a_hypothesis_never_break_line_alignment(
    tokenizers, tmp_path, capsys, monkeypatch
):
    translator = Translator(NewlineWriter(tokenizers), tokenizers, DecodingConfig(beam_size=1))
    assert translator.translate(["x"]) == ["a\nb"]  # the Python API returns the text as it is
    assert one_line("a\nb\r\u2028c") == "a b  c"
    src = tmp_path / "src.txt"
    src.write_text("one\n\nthree\n")
    load = classmethod(lambda cls, directory, device="cpu", compute_type="float32": translator)
    monkeypatch.setattr(Translator, "from_pretrained", load)
    main(["translate", "--model", "scripted", "--src", str(src), "--beam", "1"])
    captured = capsys.readouterr()
    assert captured.out.split("\n") == ["a b", "", "a b", ""]
    assert "2 translation(s) held line breaks, written as spaces: line(s) 1, 3" in captured.err


# -- the command line ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [(["--beam", "0"], "argument --beam: must be at least 1, got 0"),
     (["--beam", "-1"], "argument --beam: must be at least 1, got -1"),
     (["--beam", "2", "--nbest", "3"], "argument --nbest: must be between 1 and beam_size=2"),
     (["--max-tokens", "0"], "argument --max-tokens: must be at least 1, got 0"),
     (["--alpha", "-0.5"], "argument --alpha: must be between 0 and 50, got -0.5"),
     (["--alpha", "1000"], "argument --alpha: must be between 0 and 50, got 1000.0"),
     (["--min-len", "9", "--max-len", "3"], "argument --min-len: min_len=9 exceeds max_len=3")],
)  # fmt: skip
def test_bad_decoding_options_exit_2_with_one_line_naming_the_option(flags, message):
    result = seqkit("translate", "--model", str(LEGACY / "transformer"), *flags, stdin="seven\n")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"seqkit translate: error: {message}")
    assert len(result.stderr.strip().splitlines()) == 1


def test_n_best_and_jsonl_output_formats(tmp_path):
    model = str(LEGACY / "transformer")
    lines = ["seven", "", "forty-two"]
    translator = Translator.from_pretrained(model)
    decoding = DecodingConfig(beam_size=3, n_best=2, max_len=5)
    expected = list(translator.translate_stream(lines, decoding))
    flags = ["--beam", "3", "--nbest", "2", "--max-len", "5"]
    result = seqkit("translate", "--model", model, *flags, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ||| ") for line in result.stdout.splitlines()]
    assert [int(r[0]) for r in rows] == [0, 0, 1, 1, 2, 2]
    assert [r[1] for r in rows] == [h.text for t in expected for h in t.hypotheses]
    assert [float(r[2]) for r in rows] == pytest.approx(
        [h.score for t in expected for h in t.hypotheses], abs=1e-4
    )
    result = seqkit("translate", "--model", model, *flags, "--format", "jsonl",
                    stdin="\n".join(lines))  # fmt: skip
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [[h["text"] for h in r["hypotheses"]] for r in records] == [
        [h.text for h in t.hypotheses] for t in expected
    ]


def test_translate_writes_each_chunk_before_the_input_ends():
    process = subprocess.Popen(
        [sys.executable, "-m", "seqkit.cli", "translate", "--model", str(LEGACY / "transformer"),
         "--chunk-size", "1", "--beam", "1", "--max-len", "3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    timer = threading.Timer(60, process.kill)  # never hang the suite
    timer.start()
    try:
        process.stdin.write("seven\n")
        process.stdin.flush()
        first = process.stdout.readline()  # would block forever if output waited for EOF
        expected = Translator.from_pretrained(LEGACY / "transformer").translate(
            ["seven"], DecodingConfig(beam_size=1, max_len=3)
        )
        assert first == expected[0] + "\n"
        process.stdin.write("\nforty-two\n")
        process.stdin.close()
        assert process.stdout.read().split("\n")[0] == ""
        assert process.wait(timeout=60) == 0
    finally:
        timer.cancel()
        process.kill()


def broken_copy(tmp_path: Path, damage) -> Path:
    directory = tmp_path / "model"
    Translator.from_pretrained(LEGACY / "transformer").save_pretrained(directory)
    damage(directory)
    return directory


@pytest.mark.parametrize(
    "damage, message",
    [(lambda d: (d / "tokenizer.json").write_text("{garbage"), "tokenizer.json: not a tokenizer"),
     (lambda d: (d / "model.safetensors").write_bytes(b"\x10" * 100), "not a readable safetensors"),
     (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer found")],
)  # fmt: skip
def test_a_damaged_model_directory_is_one_line_naming_the_file(damage, message, tmp_path):
    directory = broken_copy(tmp_path, damage)
    result = seqkit("translate", "--model", str(directory), stdin="seven\n")
    assert result.returncode == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_outputs_are_checked_before_they_are_opened(tmp_path):
    model = str(LEGACY / "transformer")
    src = tmp_path / "src.txt"
    src.write_text("seven\n")
    result = seqkit("translate", "--model", model, "--src", str(src), "--out", str(src))
    assert result.returncode == 2 and "--out" in result.stderr
    assert src.read_text() == "seven\n"  # not overwritten
    result = seqkit("translate", "--model", model, "--src", str(tmp_path), "--out", str(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    out = tmp_path / "hyp.txt"
    result = seqkit("translate", "--model", model, "--src", str(tmp_path / "nowhere.txt"),
                    "--out", str(out))  # fmt: skip
    assert result.returncode == 1 and "nowhere.txt: no such file" in result.stderr
    assert not out.exists()
    result = seqkit("translate", "--model", model, "--device", "foo", stdin="seven\n")
    assert result.returncode == 1 and "device 'foo'" in result.stderr


@pytest.mark.parametrize("overwritten", ["--src", "--ref"])
def test_evaluate_refuses_an_out_that_is_one_of_its_inputs(overwritten, tmp_path):
    files = {"--src": tmp_path / "src.txt", "--ref": tmp_path / "ref.txt"}
    files["--src"].write_text("seven\n")
    files["--ref"].write_text("sieben\n")
    inputs = [str(x) for flag, file in files.items() for x in (flag, file)]
    result = seqkit("evaluate", "--model", str(LEGACY / "transformer"), *inputs,
                    "--out", str(files[overwritten]))  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"argument --out: {files[overwritten]} is the {overwritten} file" in result.stderr
    assert (files["--src"].read_text(), files["--ref"].read_text()) == ("seven\n", "sieben\n")


def test_each_loader_names_the_kind_of_model_a_directory_holds(tmp_path):
    from seqkit.labeler import Labeler

    with pytest.raises(ValueError, match=r"holds a vit model \(an image classifier\)"):
        Translator.from_pretrained(LEGACY / "vit")  # written before model_type
    Labeler.from_pretrained(LEGACY / "vit").save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"holds a vit model"):
        Translator.from_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"holds a transformer model \(seq2seq\)"):
        Labeler.from_pretrained(LEGACY / "transformer")
    result = seqkit("translate", "--model", str(tmp_path / "vit"), stdin="seven\n")
    assert result.returncode == 1 and "holds a vit model" in result.stderr
    result = seqkit("predict", "--model", str(tmp_path / "typo"), "a.png")
    assert result.returncode == 1 and "typo/config.json: not found" in result.stderr


def test_a_narrower_beam_lowers_the_models_n_best_and_a_string_is_refused(tmp_path):
    translator = Translator.from_pretrained(LEGACY / "transformer")
    translator.decoding = DecodingConfig(beam_size=4, n_best=3)
    translator.save_pretrained(tmp_path / "model")
    result = seqkit("translate", "--model", str(tmp_path / "model"), "--beam", "1",
                    "--max-len", "3", stdin="seven\n")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1  # n_best 1: plain text
    with pytest.raises(TypeError, match="not one string"):
        translator.translate("seven")


def test_an_image_wider_than_the_positions_is_cut_and_flagged():
    translator = Translator.from_pretrained(LEGACY / "strip-reader")
    per_column = translator.image_source.per_column  # patches per column of 4 pixels
    widest = translator.max_positions // per_column * 4
    wide = np.zeros((8, widest + 40), dtype=np.uint8)
    fits = np.zeros((8, widest), dtype=np.uint8)
    decoding = DecodingConfig(beam_size=1, max_len=4)
    (cut, whole) = translator.read_translations([wide, fits], decoding)
    assert cut.source_truncated and not whole.source_truncated
    assert cut.text == whole.text  # the same pixels were read


@pytest.mark.parametrize("flags", [[], ["--beam", "3", "--nbest", "2"], ["--format", "jsonl"]])
def test_resume_continues_a_stopped_translation_without_repeating_or_skipping(flags, tmp_path):
    model = str(LEGACY / "transformer")
    src = tmp_path / "src.txt"
    src.write_text("".join(f"{num2words(n)}\n" if n % 5 else "\n" for n in range(12)))
    common = ["translate", "--model", model, "--src", str(src), "--max-len", "4", *flags]
    whole = seqkit(*common, "--out", str(tmp_path / "whole.txt"))
    assert whole.returncode == 0, whole.stderr
    expected = (tmp_path / "whole.txt").read_text()
    per_input = 2 if "--nbest" in flags else 1
    lines = expected.splitlines(keepends=True)
    stopped = tmp_path / "stopped.txt"  # 3 inputs done, the 4th half written
    stopped.write_text("".join(lines[: 3 * per_input + per_input // 2]) + lines[-1][:3])
    resumed = seqkit(*common, "--out", str(stopped), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "after 3 lines of input" in resumed.stderr
    assert stopped.read_text() == expected


def test_resume_after_a_kill(tmp_path):
    import signal
    import time

    model = str(LEGACY / "transformer")
    src = tmp_path / "src.txt"
    src.write_text("".join(f"{num2words(n)}\n" for n in range(400)))
    common = ["translate", "--model", model, "--src", str(src), "--max-len", "3", "--beam", "1"]
    out = tmp_path / "out.txt"
    process = subprocess.Popen([sys.executable, "-m", "seqkit.cli", *common, "--out", str(out),
                                "--chunk-size", "1"], stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 200):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = out.read_text().count("\n")
    assert 0 < done < 400  # killed midway
    assert seqkit(*common, "--out", str(out), "--resume").returncode == 0
    expected = Translator.from_pretrained(model).translate(
        src.read_text().splitlines(), DecodingConfig(beam_size=1, max_len=3)
    )
    assert out.read_text().splitlines() == expected


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_a_pickle_planted_in_a_model_directory_never_runs(name, tmp_path):
    marker = tmp_path / "pwned.txt"
    directory = broken_copy(tmp_path, lambda d: torch.save({"w": Payload(marker)}, d / name))
    if name == "model.safetensors":
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            Translator.from_pretrained(directory)
    else:  # a file seqkit never reads: the model loads from its safetensors
        assert Translator.from_pretrained(directory).translate(["seven"])
    assert not marker.exists()
