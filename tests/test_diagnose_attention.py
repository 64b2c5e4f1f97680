"""`seqkit diagnose attention`: the weights it records have the documented shapes, every row sums
to 1, padding gets nothing, and they equal the weights of an independent pass written out with
explicit matmuls (Transformer) or teacher-forced (RNN); the command writes its files and
refuses bad input in one line."""

import csv
import json
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from num2words import num2words
from test_cli import seqkit

from seqkit.cli import main
from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.diagnose.attention import AttentionRecord, record_attention
from seqkit.diagnose.attention_files import write_record
from seqkit.models import RNNConfig, TransformerConfig, build_model
from seqkit.models.patches import ImageSource
from seqkit.tokens import BOS, EOS
from seqkit.translator import Translator

PAIRS = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in range(0, 400, 3)]
TEXTS = ["forty-two", "three hundred and seventy-seven"]  # padded: different lengths
SOURCE = ImageSource(patch_size=4, channels=1, height=8, mean=(0.3,), std=(0.4,))
TINY = {"dropout": 0.0}
CONFIGS = {
    "transformer": TransformerConfig(d_model=32, n_heads=4, n_encoder_layers=2,
                                     n_decoder_layers=2, d_ff=64, max_positions=64, **TINY),
    "gru-bahdanau": RNNConfig(cell="gru", attention="bahdanau", embed_dim=16, hidden_size=24,
                              **TINY),
    "lstm-luong": RNNConfig(cell="lstm", attention="luong", embed_dim=16, hidden_size=24, **TINY),
    "rnn-none": RNNConfig(cell="rnn", attention="none", embed_dim=16, hidden_size=24, **TINY),
}  # fmt: skip
CASES = {  # case -> model, reads images, decoding
    "transformer-greedy": ("transformer", False, DecodingConfig(beam_size=1, max_len=6)),
    "transformer-beam": ("transformer", False, DecodingConfig(beam_size=3, max_len=6)),
    "image-transformer-beam": ("transformer", True, DecodingConfig(beam_size=2, max_len=5)),
    "gru-bahdanau-beam": ("gru-bahdanau", False, DecodingConfig(beam_size=3, max_len=6)),
    "lstm-luong-greedy": ("lstm-luong", False, DecodingConfig(beam_size=1, max_len=6)),
}


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train([e for e, _ in PAIRS], [d for _, d in PAIRS], vocab_size=300)


def untrained(tokenizers: Tokenizers, name: str, images: bool = False) -> Translator:
    """A tiny randomly initialized model: arbitrary outputs, real attention."""
    torch.manual_seed(0)
    sizes = {"src_vocab_size": 0 if images else tokenizers.src_vocab_size,
             "tgt_vocab_size": tokenizers.tgt_vocab_size}  # fmt: skip
    config = replace(CONFIGS[name], **sizes)
    source = SOURCE if images else None
    return Translator(build_model(config, source).eval(), tokenizers, image_source=source)


class Case(NamedTuple):
    translator: Translator
    src: torch.Tensor  # (2, S) or (2, S, P), the first source padded
    src_mask: torch.Tensor
    decoding: DecodingConfig
    records: list[AttentionRecord]


def images() -> torch.Tensor:
    """Two images 8 pixels high, 8 and 16 wide, right-padded to 16: uint8 (2, 1, 8, 16)."""
    pixels = torch.randint(0, 256, (2, 1, 8, 16), generator=torch.Generator().manual_seed(0))
    pixels[0, :, :, 8:] = 0
    return pixels.to(torch.uint8)


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tokenizers) -> Case:
    name, reads_images, decoding = CASES[request.param]
    translator = untrained(tokenizers, name, reads_images)
    if reads_images:
        src, src_mask = SOURCE.cut(images(), torch.tensor([8, 16]))
    else:
        src = pad(tokenizers.encode_source(TEXTS))
        src_mask = src != 0
    assert not src_mask[0].all() and src_mask[1].all()
    return Case(translator, src, src_mask, decoding,
                record_attention(translator, src, src_mask, decoding))  # fmt: skip


def test_shapes_follow_the_layout(case):
    net, s = case.translator.net, case.src.shape[1]
    for record in case.records:
        t = len(record.inputs)
        assert len(record.outputs) == t and len(record.source) == s and record.inputs[0] == "<s>"
        if isinstance(net.config, TransformerConfig):
            c = net.config
            assert record.encoder_self.shape == (c.n_encoder_layers, c.n_heads, s, s)
            assert record.decoder_self.shape == (t, c.n_decoder_layers, c.n_heads, t)
            assert record.cross.shape == (t, c.n_decoder_layers, c.n_heads, s)
        else:  # an RNN's one attention: layer 1, head 1
            assert record.encoder_self is None and record.decoder_self is None
            assert record.cross.shape == (t, 1, 1, s)
    assert (case.records[0].image is not None) == (case.translator.image_source is not None)


def test_every_row_sums_to_one_and_padding_gets_nothing(case):
    for record, mask in zip(case.records, case.src_mask.numpy(), strict=True):
        for kind, weights in record.arrays().items():
            np.testing.assert_allclose(np.nansum(weights, -1), 1.0, atol=1e-5, err_msg=kind)
            if kind != "decoder_self":
                assert (weights[..., ~mask] == 0).all(), kind
                assert (weights[..., mask] > 0).all(), kind  # softmax: no real key gets 0
        assert [label == "<pad>" for label in record.source] == (~mask).tolist()


def test_recording_leaves_the_translation_as_it_was(case):
    translations = case.translator.generate(case.src, case.src_mask, case.decoding)
    assert [r.text for r in case.records] == [t.text for t in translations]


def test_the_first_step_attends_to_the_start_token_alone(case):
    for record in case.records:
        if record.decoder_self is not None:
            np.testing.assert_allclose(record.decoder_self[0, :, :, 0], 1.0)
            assert np.isnan(record.decoder_self[0, :, :, 1:]).all()
            t = len(record.inputs)  # a key after its step does not exist yet: NaN
            future = np.triu(np.ones((t, t), dtype=bool), k=1)
            assert (np.isnan(record.decoder_self) == future[:, None, None, :]).all()


def test_weights_equal_an_independent_pass(case):
    """Teacher-forced on each hypothesis: the Transformer written out with explicit matmuls
    (checked against its own logits), an RNN through its `cross_attention`."""
    hyps, _ = case.translator.search(case.src, case.src_mask, case.decoding)
    for i, record in enumerate(case.records):
        fed = torch.tensor([[BOS, *hyps[i][0].tokens][: len(record.inputs)]])
        src, src_mask = case.src[i : i + 1], case.src_mask[i : i + 1]
        assert_equal_to_explicit(case.translator.net, record, src, src_mask, fed)


def assert_equal_to_explicit(net, record: AttentionRecord, src, src_mask, fed) -> None:
    close = partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        if not isinstance(net.config, TransformerConfig):
            close(record.cross[:, 0, 0], net.cross_attention(src, src_mask, fed)[0].numpy())
            return
        weights, logits = explicit_pass(net, src, src_mask, fed)
        torch.testing.assert_close(logits, net(src, fed, src_mask), atol=1e-5, rtol=1e-4)
    close(record.encoder_self, weights["encoder_self"][:, 0].numpy())
    steps_first = {k: w[:, 0].permute(2, 0, 1, 3).numpy() for k, w in weights.items()}
    close(record.cross, steps_first["cross"])  # (T, L, H, S)
    close(np.nan_to_num(record.decoder_self), steps_first["decoder_self"])  # 0 after the step


def explicit_pass(net, src, src_mask, tgt) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every attention weight of a teacher-forced Transformer pass, each layer's attention
    written out as matmuls (no SDPA, no hooks, no cache): encoder_self (L, B, H, S, S),
    decoder_self (L, B, H, T, T), cross (L, B, H, T, S); and the logits (B, T, V)."""
    found = {"encoder_self": [], "decoder_self": [], "cross": []}
    source = src_mask[:, None, None, :]
    causal = torch.ones(tgt.shape[1], tgt.shape[1], dtype=torch.bool).tril()
    x = net.embed(src, net.src_embed)
    for layer in net.encoder:
        x = layer.attn_block(x, partial(explicit, attn=layer.attn, mask=source,
                                        found=found["encoder_self"]))  # fmt: skip
        x = layer.ff_block(x, layer.ff)
    memory = net.encoder_norm(x)
    y = net.embed(tgt, net.tgt_embed)
    for layer in net.decoder:
        y = layer.self_block(y, partial(explicit, attn=layer.self_attn, mask=causal,
                                        found=found["decoder_self"]))  # fmt: skip
        y = layer.cross_block(y, partial(explicit, attn=layer.cross_attn, mask=source,
                                         found=found["cross"], memory=memory))  # fmt: skip
        y = layer.ff_block(y, layer.ff)
    return {k: torch.stack(v) for k, v in found.items()}, net.output(net.decoder_norm(y))


def explicit(x, attn, mask, found: list, memory=None):
    """Multi-head attention of `x` (B, T, D) over `memory` (itself by default)."""
    memory = x if memory is None else memory
    b, t, d = x.shape
    h = attn.n_heads

    def heads(z):
        return z.reshape(b, -1, h, d // h).transpose(1, 2)  # (B, H, T, Dh)

    q = heads(x @ attn.q.weight.T + attn.q.bias)
    k, v = (heads(z) for z in (memory @ attn.kv.weight.T + attn.kv.bias).chunk(2, dim=-1))
    scores = (q @ k.transpose(-2, -1)) / (d // h) ** 0.5
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    found.append(weights)
    return (weights @ v).transpose(1, 2).reshape(b, t, d) @ attn.out.weight.T + attn.out.bias


def test_beam_search_shows_the_rows_that_wrote_a_hypothesis_ended_early(tokenizers, monkeypatch):
    """Beam row 1 ends with EOS at the third step and wins while the search goes on: the steps
    shown are that hypothesis' rows, followed back through the beams' reorders."""
    translator = untrained(tokenizers, "transformer")
    net, decode, calls = translator.net, translator.net.decode, []

    def eos_in_row_1_at_step_3(tgt, memory, src_mask, state):
        logits, state = decode(tgt, memory, src_mask, state)
        calls.append(len(tgt))
        if len(calls) == 3:
            logits[1, -1, EOS] = 50.0
        return logits, state

    monkeypatch.setattr(net, "decode", eos_in_row_1_at_step_3)
    src, decoding = pad(tokenizers.encode_source(TEXTS[:1])), DecodingConfig(beam_size=3, max_len=8)
    (hyp,), _ = translator.search(src, None, decoding)
    calls.clear()
    (record,) = record_attention(translator, src, None, decoding)
    monkeypatch.undo()
    assert len(record.inputs) == 3 and record.outputs[-1] == "</s>" and len(calls) > 3
    fed = torch.tensor([[BOS, *hyp[0].tokens]])
    assert_equal_to_explicit(net, record, src, src != 0, fed)


# -- the command ----------------------------------------------------------------------------
def test_the_command_writes_arrays_a_tidy_csv_and_heat_maps(tokenizers, tmp_path, capsys):
    model = untrained(tokenizers, "transformer").save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    main(["diagnose", "attention", "--model", str(model), "--text", TEXTS[0], "--out", str(out),
          "--max-len", "4", "--beam-size", "2"])  # fmt: skip
    printed = [Path(line) for line in capsys.readouterr().out.splitlines()]
    assert all(p.is_absolute() and p.is_file() for p in printed)
    names = {p.name for p in printed}
    assert {"encoder_self.npy", "decoder_self.npy", "cross.npy", "attention.csv",
            "tokens.json", "encoder_self.png", "decoder_self.png", "cross.png",
            "cross_step1.png"} == names  # fmt: skip
    src = pad(tokenizers.encode_source(TEXTS[:1]))
    (record,) = record_attention(Translator.from_pretrained(model), src, None,
                                 DecodingConfig(beam_size=2, max_len=4))  # fmt: skip
    cross = np.load(out / "cross.npy")
    np.testing.assert_array_equal(cross, record.cross)
    tokens = json.loads((out / "tokens.json").read_text())
    assert tokens["source"] == record.source and tokens["inputs"] == record.inputs
    with (out / "attention.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = [r for r in rows if r["kind"] == "cross" and r["step"] == "1" and r["head"] == "3"]
    first = [r for r in first if r["layer"] == "2"]
    assert [r["key_token"] for r in first] == record.source and first[0]["query_token"] == "<s>"
    np.testing.assert_allclose([float(r["weight"]) for r in first], cross[0, 1, 2], rtol=1e-5)
    own = [r for r in rows if r["kind"] == "decoder_self" and r["step"] == "2"]
    assert len(own) == 2 * 4 * 2  # layers x heads x the keys step 2 has: no NaN rows
    assert len(rows) == sum(int(np.isfinite(a).sum()) for a in record.arrays().values())


def test_an_image_model_reads_the_image_file(tokenizers, tmp_path, capsys):
    from PIL import Image

    model = untrained(tokenizers, "transformer", images=True).save_pretrained(tmp_path / "model")
    Image.fromarray(images()[1, 0].numpy()).save(tmp_path / "strip.png")
    main(["diagnose", "attention", "--model", str(model), "--image", str(tmp_path / "strip.png"),
          "--out", str(tmp_path / "out"), "--max-len", "3"])  # fmt: skip
    assert (tmp_path / "out/cross_step1.png").is_file()
    tokens = json.loads((tmp_path / "out/tokens.json").read_text())
    assert tokens["source"][:3] == ["c0r0", "c0r1", "c1r0"]  # column by column
    assert np.load(tmp_path / "out/encoder_self.npy").shape[-1] == 8  # 4 columns of 2 patches


def test_without_matplotlib_the_numbers_are_still_written(
    tokenizers, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    translator = untrained(tokenizers, "lstm-luong")
    src = pad(tokenizers.encode_source(TEXTS[:1]))
    (record,) = record_attention(translator, src, None, DecodingConfig(beam_size=1, max_len=3))
    paths = write_record(record, tmp_path)
    assert [p.name for p in paths] == ["cross.npy", "attention.csv", "tokens.json"]
    assert capsys.readouterr().err.strip().startswith("PNG heat maps need matplotlib")


@pytest.mark.parametrize(
    "model, flags, message",
    [
        (None, ["--text", "seven"], "/nowhere/config.json: not found"),
        ("image", ["--text", "seven"], "this model reads images, not text: give --image PATH"),
        ("transformer", ["--image", "x.png"], "this model reads text, not images: give --text"),
        ("transformer", ["--text", "  "], "--text is empty"),
        ("rnn-none", ["--text", "seven"], "attention='none': it has no attention weights"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_it(model, flags, message, tokenizers, tmp_path):
    directory = "/nowhere"
    if model is not None:
        name, reads_images = ("transformer", True) if model == "image" else (model, False)
        directory = untrained(tokenizers, name, reads_images).save_pretrained(tmp_path / "m")
    with pytest.raises(SystemExit) as info:
        main(["diagnose", "attention", "--model", str(directory), *flags, "--out",
              str(tmp_path / "o")])  # fmt: skip
    said = str(info.value)
    assert said.startswith("seqkit diagnose: ") and message in said and "\n" not in said
    assert not (tmp_path / "o").exists()


def test_a_refused_command_exits_without_a_traceback(tokenizers, tmp_path):
    directory = untrained(tokenizers, "rnn-none").save_pretrained(tmp_path / "m")
    result = seqkit("diagnose", "attention", "--model", str(directory), "--text", "seven",
                    "--out", str(tmp_path / "o"))  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "seqkit diagnose: this RNN has attention='none': it has no attention weights to show "
        "(its decoder reads one summary of the source)"
    ]


def test_usage_errors_and_help(capsys, tmp_path):
    main(["diagnose", "--help"])
    assert "WHAT: attention" in capsys.readouterr().out
    (tmp_path / "file").touch()
    command = ["diagnose", "attention", "--model", "m", "--text", "x", "--out"]
    for argv, code in (
        (["diagnose", "attention", "--help"], 0),
        (["diagnose", "saliency"], 2),
        ([*command, "o", "--beam-size", "0"], 2),
        ([*command, str(tmp_path / "file")], 2),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == code
    err = capsys.readouterr().err
    assert "no instrument 'saliency'; choose one of: attention" in err
    assert "argument --beam-size: must be at least 1, got 0" in err
    assert f"argument --out: {tmp_path / 'file'} is not a directory" in err
