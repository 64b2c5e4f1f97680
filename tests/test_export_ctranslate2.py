"""CTranslate2 export: the exported float32 model decodes token for token as seqkit does (greedy,
and beam search where the two searches agree), for every Transformer option the spec maps;
int8 exports load and translate; `seqkit export --format ctranslate2` and `seqkit translate
--engine ctranslate2` work end to end, and what CTranslate2 cannot run is refused by name."""

import gzip
import importlib.util
import itertools
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from seqkit.cli import main
from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.models import RNNConfig, build_model
from seqkit.translator import Translator

if importlib.util.find_spec("ctranslate2") is None:  # not importorskip: seqkit imports it
    pytest.skip("ctranslate2 is not installed", allow_module_level=True)
from tiny_models import GREEDY, PAIRS, trained

from seqkit.export.ctranslate2 import CTranslate2Translator, export_ctranslate2


def seqkit_ids(translator: Translator, sources: list[list[int]], decoding) -> list[list[int]]:
    hyps, _ = translator.search(pad(sources), None, decoding)
    return [nbest[0].tokens for nbest in hyps]


def exported(translator: Translator, tmp_path, quantization=None) -> CTranslate2Translator:
    model_dir = translator.save_pretrained(tmp_path / "model")
    out = export_ctranslate2(model_dir, tmp_path / "ct2", quantization=quantization)
    return CTranslate2Translator.from_directory(out)


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train([s for s, _ in PAIRS], [t for _, t in PAIRS], vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizers, tmp_path_factory):
    """(a trained pre-norm Transformer, its model directory, its CTranslate2 export)."""
    translator = trained(tokenizers, PAIRS[::2], steps=25)
    model_dir = translator.save_pretrained(tmp_path_factory.mktemp("model") / "model")
    out = export_ctranslate2(model_dir, model_dir.parent / "ct2")
    return translator, model_dir, CTranslate2Translator.from_directory(out)


OPTIONS = {  # every value of every option the spec maps, each at least once
    "post-gelu-learned-untied": dict(
        norm_first=False, activation="gelu", positions="learned", tie_embeddings=False
    ),
    "pre-gelu-sinusoidal-shared": dict(activation="gelu", share_embeddings=True),
    "post-relu-learned-shared": dict(norm_first=False, positions="learned", share_embeddings=True),
}
DECODINGS = (GREEDY, replace(GREEDY, min_len=6), replace(GREEDY, max_len=3))


def assert_greedy_parity(translator: Translator, engine: CTranslate2Translator) -> None:
    sources = translator.tokenizers.encode_source([s for s, _ in PAIRS[::3]])
    for decoding in DECODINGS:
        expected = seqkit_ids(translator, sources, decoding)
        assert engine.translate_ids(sources, decoding) == expected, decoding
    outputs = seqkit_ids(translator, sources, GREEDY)
    assert len({tuple(ids) for ids in outputs}) > 3, "outputs that do not depend on the source"
    assert min(map(len, outputs)) < 10, "no output ended with EOS"


def test_greedy_outputs_equal_seqkits_token_for_token(model):
    """Pre-norm, ReLU, sinusoidal positions, tied target embedding and output."""
    assert_greedy_parity(model[0], model[2])


@pytest.mark.parametrize("name", OPTIONS)
def test_greedy_parity_holds_for_every_option(name, tmp_path):
    options = OPTIONS[name]
    joint = options.get("share_embeddings", False)
    tokenizers = Tokenizers.train([s for s, _ in PAIRS], [t for _, t in PAIRS], 300, joint)
    translator = trained(tokenizers, PAIRS[::2], steps=25, **options)
    assert_greedy_parity(translator, exported(translator, tmp_path))


def test_lines_keep_their_order_and_empty_lines_stay_empty(model):
    translator, _, engine = model
    lines = ["", "forty-two", "  ", "three hundred and six", "nine", ""]
    outputs = engine.translate(lines, GREEDY)
    assert outputs == translator.translate(lines, GREEDY)
    assert [outputs[i] for i in (0, 2, 5)] == ["", "", ""] and all(outputs[1::2][:2])
    assert engine.translate(lines, GREEDY, max_tokens=8) == outputs  # many small batches


def test_fifty_multi30k_sentences_decode_as_in_seqkit(multi30k, tmp_path):
    def read(name: str, n: int) -> list[str]:
        with gzip.open(multi30k / name, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in itertools.islice(f, n)]

    pairs = list(zip(read("train.en.gz", 600), read("train.de.gz", 600), strict=True))
    tokenizers = Tokenizers.train([s for s, _ in pairs], [t for _, t in pairs], 400)
    short = [(s, t) for s, t in pairs if len(s.split()) <= 10 and len(t.split()) <= 10]
    translator = trained(tokenizers, short[:64], steps=25, max_positions=128)
    engine = exported(translator, tmp_path)
    sources = tokenizers.encode_source(read("test_2016_flickr.en.gz", 50))
    greedy = seqkit_ids(translator, sources, GREEDY)
    assert engine.translate_ids(sources, GREEDY) == greedy
    assert len({tuple(ids) for ids in greedy}) > 5
    # Beam search: CTranslate2 divides by length ** alpha, seqkit by GNMT's ((5 + length) / 6)
    # ** alpha, and their stopping rules differ; with alpha = 0 both rank raw log-probability
    # and agree but for rare near-ties at the length limit.
    beam = DecodingConfig(beam_size=4, alpha=0.0)
    ours = seqkit_ids(translator, sources, beam)
    same = sum(a == b for a, b in zip(engine.translate_ids(sources, beam), ours, strict=True))
    assert same >= 45, f"beam 4: {same}/50 equal"


def test_an_int8_export_loads_and_translates(model, tmp_path):
    out = export_ctranslate2(model[1], tmp_path / "int8", quantization="int8")
    engine = CTranslate2Translator.from_directory(out)
    lines = [s for s, _ in PAIRS[:7]]
    outputs = engine.translate(lines, DecodingConfig(beam_size=2, min_len=2))
    assert len(outputs) == len(lines) and all(outputs)


# -- the command line -----------------------------------------------------------------------
def test_export_and_translate_on_the_command_line(model, tmp_path):
    model_dir = model[1]
    main(["export", "--format", "ctranslate2", str(model_dir), str(tmp_path / "ct2")])
    lines = ["forty-two", "", "one hundred and eight"]
    (tmp_path / "src.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--src", str(tmp_path / "src.txt"), "--beam", "1", "--chunk-size", "2"]
    main(["translate", "--engine", "ctranslate2", "--model", str(tmp_path / "ct2"), *common,
          "--out", str(tmp_path / "ct2.txt")])  # fmt: skip
    main(["translate", "--model", str(model_dir), *common, "--out", str(tmp_path / "pt.txt")])
    ct2_lines = (tmp_path / "ct2.txt").read_text(encoding="utf-8").splitlines()
    assert ct2_lines == (tmp_path / "pt.txt").read_text(encoding="utf-8").splitlines()
    assert len(ct2_lines) == 3 and ct2_lines[1] == "" and ct2_lines[0]


def test_every_engine_reports_cut_sources_and_translations_that_hit_their_limit(
    model, tmp_path, capsys
):
    """The lines whose source was cut to max_positions (64 here) and whose translation ran
    into --max-len are reported alike by every engine (the engines said nothing before)."""
    pytest.importorskip("onnx")
    from seqkit.export.onnx import export_onnx

    model_dir = model[1]
    dirs = {"seqkit": model_dir, "ctranslate2": export_ctranslate2(model_dir, tmp_path / "ct2"),
            "onnxruntime": export_onnx(model_dir, tmp_path / "onnx")}  # fmt: skip
    lines = ["forty-two", " ".join(["one hundred and eight"] * 30), "", "seven"]
    (tmp_path / "src.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs, warnings = {}, {}
    for engine, directory in dirs.items():
        out = tmp_path / f"{engine}.txt"
        main(["translate", "--engine", engine, "--model", str(directory), "--beam", "1",
              "--max-len", "3", "--src", str(tmp_path / "src.txt"), "--out", str(out)])  # fmt: skip
        outputs[engine] = out.read_text(encoding="utf-8").splitlines()
        warnings[engine] = [w for w in capsys.readouterr().err.splitlines() if "warning" in w]
    assert outputs["ctranslate2"] == outputs["onnxruntime"] == outputs["seqkit"]
    assert warnings["seqkit"] == [
        "warning: 1 source(s) longer than max_positions=64 tokens, cut: line(s) 2",
        "warning: 3 translation(s) stopped at their length limit without ending: line(s) 1, 2, 4",
    ]
    assert warnings["ctranslate2"] == warnings["onnxruntime"] == warnings["seqkit"]


def test_a_device_or_compute_type_ctranslate2_cannot_take_is_named(model, capsys):
    """Named as the flag, not blamed on the export (before: "CT2_DIR: Invalid compute type")."""
    export = str(model[1].parent / "ct2")  # the fixture's export
    with pytest.raises(SystemExit) as exit_info:
        main(["translate", "--engine", "ctranslate2", "--model", export, "--compute-type", "x8"])
    assert exit_info.value.code == 2
    assert "argument --compute-type: choose one of CTranslate2's" in capsys.readouterr().err
    for device, words in [("tpu", "runs on cpu, cuda or cuda:N"), ("cpu:1", "runs on cpu"),
                          ("cuda:99", "CUDA device(s) here")]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["translate", "--engine", "ctranslate2", "--model", export, "--device", device])
        assert str(exit_info.value.code).startswith(f"seqkit translate: device {device!r}: ")
        assert words in str(exit_info.value.code)


def test_export_refuses_what_ctranslate2_cannot_run_in_one_line(tokenizers, tmp_path):
    config = RNNConfig(src_vocab_size=300, tgt_vocab_size=300, embed_dim=16, hidden_size=16)
    rnn = Translator(build_model(config).eval(), tokenizers).save_pretrained(tmp_path / "rnn")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--format", "ctranslate2", str(rnn), str(tmp_path / "out")])
    assert "holds a rnn model" in str(exit_info.value.code)
    assert "--format onnx" in str(exit_info.value.code)
    with pytest.raises(SystemExit) as exit_info:  # --quantize is CTranslate2's
        main(["export", "--quantize", "int8", str(rnn), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:  # a seqkit directory is not an export
        main(["translate", "--engine", "ctranslate2", "--model", str(rnn)])
    assert "not a CTranslate2 export" in str(exit_info.value.code)


def test_an_export_never_deletes_a_directory_it_did_not_write(model, tmp_path):
    model_dir = model[1].parent  # its own temporary directory: model/ and ct2/
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    for out in (model[1], model_dir, tmp_path / "busy"):
        with pytest.raises(ValueError, match=r"overwrite|not an earlier"):
            export_ctranslate2(model[1], out)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    assert (model[1] / "model.safetensors").is_file()
    export_ctranslate2(model[1], tmp_path / "ct2")
    export_ctranslate2(model[1], tmp_path / "ct2", quantization="int8")  # over an export: fine


def test_no_writer_mixes_its_output_with_another_kind_of_directory(model, tmp_path):
    """A model directory, a CTranslate2 export and an ONNX export each replace only an earlier
    one of their own kind: each other's directories and a folder of the user's files are
    refused by name and left as they were (before, an ONNX export wrote into any of them, and
    a CTranslate2 export deleted an ONNX one)."""
    pytest.importorskip("onnx")
    from seqkit.export.onnx import OnnxTranslator, export_onnx

    translator, model_dir, _ = model
    outs = {
        "seqkit model directory": lambda out: translator.save_pretrained(out),
        "CTranslate2 export": lambda out: export_ctranslate2(model_dir, out),
        "ONNX export": lambda out: export_onnx(model_dir, out),
    }
    made = {kind: write(tmp_path / kind.split()[0]) for kind, write in outs.items()}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "README.md").write_text("keep me")
    for kind, write in outs.items():
        for other in [*(made[k] for k in outs if k != kind), tmp_path / "mine"]:
            before = {f.name: f.read_bytes() for f in sorted(other.iterdir()) if f.is_file()}
            with pytest.raises(ValueError, match=rf"{other}: holds .*, not an earlier {kind}"):
                write(other)
            assert {f.name: f.read_bytes() for f in other.iterdir() if f.is_file()} == before
        assert write(made[kind]) == made[kind]  # its own earlier output: replaced
    expected = translator.translate(["one", "seven"])
    assert Translator.from_pretrained(made["seqkit model directory"]).translate(
        ["one", "seven"]) == expected  # fmt: skip
    assert CTranslate2Translator.from_directory(made["CTranslate2 export"]).translate(
        ["one", "seven"]) == expected  # fmt: skip
    assert OnnxTranslator.from_directory(made["ONNX export"]).translate(
        ["one", "seven"]) == expected  # fmt: skip


def test_a_missing_ctranslate2_names_the_extra(model, tmp_path, monkeypatch):
    model_dir = model[1]
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # `import ctranslate2` fails
    export = ["export", "--format", "ctranslate2", str(model_dir), str(tmp_path / "o")]
    for argv in (export, ["translate", "--engine", "ctranslate2", "--model", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert "pip install 'seqkit[ctranslate2]'" in str(exit_info.value.code)


BOTH_ENGINES = """
import os, sys, torch
from seqkit.export.ctranslate2 import CTranslate2Translator

def voluntary_switches():
    total = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/status") as status:
            total += sum(int(line.split()[1]) for line in status
                         if line.startswith("voluntary_ctxt_switches:"))
    return total

torch.set_num_threads(2)
x = torch.randn(1_000_000)
x.exp()  # PyTorch's OpenMP threads start
engine = CTranslate2Translator.from_directory(sys.argv[1], intra_threads=2)
engine.translate(["a few words"] * 8)  # and CTranslate2's
before = voluntary_switches()
for _ in range(300):
    x.exp()  # parallel regions of PyTorch's runtime
print(voluntary_switches() - before)
"""


@pytest.mark.skipif(
    not hasattr(os, "RTLD_DEEPBIND")
    or (os.cpu_count() or 1) < 2
    or bool(os.environ.get("LD_PRELOAD")),
    reason="needs RTLD_DEEPBIND (Linux), 2 cores and no LD_PRELOAD",
)
def test_ctranslate2_keeps_its_own_openmp_runtime_beside_pytorch(model, tmp_path):
    """After both engines ran multi-threaded in one process, PyTorch's threads still spin
    between parallel operators: bound to PyTorch's OpenMP runtime, CTranslate2 made it hold
    more threads than cores, and 300 operators cost about as many sleeps and wake-ups."""
    script = tmp_path / "both_engines.py"
    script.write_text(BOTH_ENGINES)
    run = subprocess.run([sys.executable, str(script), str(model[1].parent / "ct2")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) < 30, f"{run.stdout.strip()} voluntary context switches"
