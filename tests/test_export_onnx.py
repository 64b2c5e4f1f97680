"""ONNX export: for every seq2seq family (RNN, GRU, LSTM with each attention; the Transformer
pre- and post-norm; image sources), ONNX Runtime decodes token for token as seqkit does, greedy
and beam search, with each decoder step's logits within 1e-4 of seqkit's, at batch sizes and
source lengths other than the traced ones; the export is checked and self-describing, and what
is missing or not an export is refused by name."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from num2words import num2words

from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.models import RNNConfig, TransformerConfig, build_model
from seqkit.models.patches import ImageSource
from seqkit.tokens import BOS, EOS
from seqkit.translator import Translator

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from seqkit.export.onnx import META_FILE, OnnxTranslator, export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in range(0, 400, 3)]
TEXTS = ["seven", "three hundred ninety-one", "", "twelve", "one hundred and four",
         "two hundred", "sixty-six", "nine hundred ninety-nine"]  # fmt: skip
SOURCE = ImageSource(patch_size=4, channels=1, height=8, mean=(0.3,), std=(0.4,))
SMALL = dict(embed_dim=16, hidden_size=16, dropout=0.0)
RNNS = {
    "rnn-none": dict(cell="rnn", attention="none", tie_embeddings=True),
    "rnn-bahdanau": dict(cell="rnn", attention="bahdanau", n_layers=2),
    "rnn-luong": dict(cell="rnn", attention="luong", luong_score="dot", bidirectional=False),
    "gru-none": dict(cell="gru", attention="none", n_layers=2, bidirectional=False),
    "gru-bahdanau": dict(cell="gru", attention="bahdanau"),
    "gru-luong": dict(cell="gru", attention="luong", input_feeding=True),
    "lstm-none": dict(cell="lstm", attention="none", n_layers=2),
    "lstm-bahdanau": dict(cell="lstm", attention="bahdanau", input_feeding=True, n_layers=2),
    "lstm-luong": dict(cell="lstm", attention="luong", forget_bias=1.0),
}
TRANSFORMERS = {
    "transformer-pre-norm": dict(norm_first=True, tie_embeddings=False),
    "transformer-post-norm": dict(norm_first=False, positions="learned", tie_embeddings=False),
}
IMAGES = {"image-transformer": "transformer", "image-gru-bahdanau": "gru-bahdanau"}
TEXT_MODELS = [*RNNS, *TRANSFORMERS]


def config(name: str, vocab: int, image: bool = False):
    src_vocab = 0 if image else vocab
    if name in RNNS:
        return RNNConfig(src_vocab_size=src_vocab, tgt_vocab_size=vocab, **SMALL, **RNNS[name])
    options = TRANSFORMERS.get(name, {})
    return TransformerConfig(src_vocab_size=src_vocab, tgt_vocab_size=vocab, d_model=16,
                             n_heads=2, n_encoder_layers=2, n_decoder_layers=2, d_ff=32,
                             dropout=0.0, max_positions=96, **options)  # fmt: skip


def varied(net: torch.nn.Module) -> torch.nn.Module:
    """An untrained net whose outputs depend on source and step (an untrained one repeats one
    token): biases N(0, 0.5), output rows of one norm, EOS's larger so that some sentences end
    early; an RNN's weights x3, to leave the fixed point its small initial weights hold it at
    (a Transformer's logits would grow past what 1e-4 can check)."""
    gain = 1.0 if isinstance(net.config, TransformerConfig) else 3.0
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.normal_(0, 0.5) if name.endswith("bias") else p.mul_(gain)
        if net.output.bias is not None:
            net.output.bias.zero_()
        w = net.output.weight
        w.div_(w.norm(dim=1, keepdim=True).clamp_min(1e-3)).mul_(4)
        w[EOS] *= 2.0
    return net.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (seqkit's Translator of a saved model directory, OnnxTranslator of its export,
    the export's directory), each model exported once, when a test first asks for it."""
    tokenizers = Tokenizers.train([s for s, _ in PAIRS], [t for _, t in PAIRS], vocab_size=260)
    root, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(name: str) -> tuple[Translator, OnnxTranslator, Path]:
        if name not in cache:
            torch.manual_seed(0)
            image = name in IMAGES
            net = build_model(config(IMAGES.get(name, name), tokenizers.tgt_vocab_size, image),
                              SOURCE if image else None)  # fmt: skip
            saved = Translator(varied(net), tokenizers, DecodingConfig(beam_size=1),
                               SOURCE if image else None)  # fmt: skip
            model_dir = saved.save_pretrained(root / name)
            out = export_onnx(model_dir, root / f"{name}-onnx")
            cache[name] = (Translator.from_pretrained(model_dir),
                           OnnxTranslator.from_directory(out, threads=1), out)  # fmt: skip
        return cache[name]

    return get


def best(hyps) -> list[tuple[list[int], float]]:
    return [(h.tokens, h.score) for nbest in hyps for h in nbest]


def assert_same(expected, got) -> None:
    """The same tokens in the same order; scores (sums of up to 50 log-probabilities, from
    logits within 1e-4) within 1e-3."""
    assert [t for t, _ in got] == [t for t, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-3)


@pytest.mark.parametrize("name", TEXT_MODELS)
def test_greedy_and_beam_search_give_seqkits_tokens_and_scores(name, models):
    seqkit, onnx, _ = models(name)
    src = pad(seqkit.tokenizers.encode_source([t for t in TEXTS if t]))  # 7 x 26, padded
    for decoding in (DecodingConfig(beam_size=1, min_len=3),
                     DecodingConfig(beam_size=3, n_best=2, min_len=3)):  # fmt: skip
        expected = best(seqkit.search(src, None, decoding)[0])
        assert_same(expected, best(onnx.search(src, None, decoding)[0]))
        assert min(len(t) for t, _ in expected) >= 3
        assert len({tuple(t) for t, _ in expected}) > 3  # outputs depend on the source
    decoding = DecodingConfig(beam_size=2, max_len=12)  # the CLI's call: lines, empty ones too
    assert onnx.translate(TEXTS, decoding) == seqkit.translate(TEXTS, decoding)
    assert onnx.translate(TEXTS[1:2], decoding) == seqkit.translate(TEXTS[1:2], decoding)


@pytest.mark.parametrize("name", TEXT_MODELS + list(IMAGES))
def test_each_decoder_step_gives_seqkits_logits(name, models):
    """Steps over a forced target, batches of 3 and 1, sources shorter and longer than the
    traced ones (2 x 5)."""
    seqkit, onnx, _ = models(name)
    torch.manual_seed(1)
    for batch, length in ((3, 9), (1, 2)):
        src_mask = torch.arange(length)[None] < torch.tensor([length, 1, length - 1])[:batch, None]
        if seqkit.image_source is None:
            src = torch.randint(4, seqkit.config.src_vocab_size, (batch, length)) * src_mask
        else:
            src = torch.randn(batch, length, SOURCE.patch_dim) * src_mask[..., None]
        tgt = torch.cat([torch.full((batch, 1), BOS), torch.randint(4, 200, (batch, 5))], 1)
        with torch.inference_mode():
            nets = (seqkit.net, onnx.net)
            memories = [net.encode(src, src_mask) for net in nets]
            torch.testing.assert_close(memories[1], memories[0], atol=1e-4, rtol=0)
            states = [net.init_state(m, src_mask) for net, m in zip(nets, memories, strict=True)]
            for t in range(tgt.shape[1]):
                logits = []
                for i, net in enumerate(nets):
                    out, states[i] = net.decode(tgt[:, t : t + 1], memories[i], src_mask, states[i])
                    logits.append(out[:, -1])
                torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_models_read_as_seqkit_does(name, models):
    seqkit, onnx, _ = models(name)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (8, w), dtype=np.uint8) for w in (12, 40, 4, 24)]
    decoding = DecodingConfig(beam_size=1, min_len=3, max_len=20)
    assert onnx.read(images, decoding) == seqkit.read(images, decoding)
    batch = torch.from_numpy(rng.integers(0, 256, (3, 1, 8, 28), dtype=np.uint8))
    src, src_mask = SOURCE.cut(batch, torch.tensor([28, 8, 16]))  # noise past the widths
    for decoding in (DecodingConfig(beam_size=1, min_len=3), DecodingConfig(beam_size=3)):
        expected = best(seqkit.search(src, src_mask, decoding)[0])
        assert_same(expected, best(onnx.search(src, src_mask, decoding)[0]))


def test_the_export_is_checked_and_describes_itself(models):
    import onnx

    _, _, out = models("transformer-pre-norm")
    assert sorted(p.name for p in out.iterdir()) == ["decoder.onnx", "encoder.onnx",
                                                     "seqkit.json", "tokenizer.json"]  # fmt: skip
    for graph in ("encoder.onnx", "decoder.onnx"):
        onnx.checker.check_model(onnx.load(str(out / graph)), full_check=True)
    meta = json.loads((out / META_FILE).read_text())
    assert (meta["format"], meta["model_type"], meta["opset"]) == ("onnx", "transformer", 17)
    encoder, decoder = meta["graphs"]["encoder.onnx"], meta["graphs"]["decoder.onnx"]
    assert encoder["inputs"] == [{"name": "src", "dtype": "int64", "shape": ["batch", "src_len"]},
                                 {"name": "src_mask", "dtype": "bool",
                                  "shape": ["batch", "src_len"]}]  # fmt: skip
    past = {"name": "past_k.1", "dtype": "float32", "shape": ["batch", 2, "past_len", 8]}
    assert past in decoder["inputs"] and "cross_v.1" in meta["state"]
    assert meta["carried"]["past_v.0"] == "new.past_v.0"
    assert [o["name"] for o in decoder["outputs"]][:2] == ["logits", "new.past_k.0"]
    assert decoder["outputs"][0]["shape"] == ["batch", meta["config"]["tgt_vocab_size"]]
    _, _, out = models("lstm-bahdanau")
    meta = json.loads((out / META_FILE).read_text())
    assert meta["state"] == ["keys", "h", "c", "feed"]  # attention keys, then what steps renew
    assert meta["carried"] == {"h": "new.h", "c": "new.c", "feed": "new.feed"}


def test_what_is_not_an_export_or_missing_is_refused_by_name(models, monkeypatch, tmp_path):
    seqkit, onnx, out = models("gru-bahdanau")
    model_dir = tmp_path / "model"
    seqkit.save_pretrained(model_dir)
    with pytest.raises(FileNotFoundError, match=r"seqkit\.json: not found"):
        OnnxTranslator.from_directory(model_dir)
    with pytest.raises(ValueError, match="would overwrite the model directory"):
        export_onnx(model_dir, model_dir)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / META_FILE).write_text(json.dumps({"format": "ctranslate2"}))
    with pytest.raises(ValueError, match="not a seqkit ONNX export"):
        OnnxTranslator.from_directory(tmp_path / "other")
    src = torch.tensor([[5, 6, EOS]])
    with pytest.raises(ValueError, match="memory of its last encode"):
        onnx.net.init_state(torch.zeros(1, 3, 32), src != 0)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'seqkit\[onnx\]'"):
        OnnxTranslator.from_directory(out)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'seqkit\[onnx\]'"):
        export_onnx(model_dir, tmp_path / "export")


def test_sessions_leave_the_cores_to_pytorch_between_runs(models):
    """ONNX Runtime's threads sleep between runs instead of spinning for the next: seqkit's
    search runs PyTorch operators between the decoder's runs, and spinning threads took their
    cores (`bench/decode_speed.py --onnx`: greedy search ran 1.8x slower)."""
    _, engine, _ = models("transformer-pre-norm")
    for session in (engine.net.encoder, engine.net.decoder):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
