"""ONNX export of seqkit's seq2seq networks, and decoding of the export with ONNX Runtime.

`export_onnx` writes two graphs for every seq2seq network (RNN, GRU or LSTM encoder–decoders
with any attention, the Transformer; token or image sources), next to the tokenizer file(s)
and `seqkit.json` (model type and config, decoding settings, image source, the graphs' inputs
and outputs, which state tensors each step renews):
  encoder.onnx  (src, src_mask) -> memory and every tensor of the initial decoding state
  decoder.onnx  (tokens (B, 1), memory, src_mask, state...) -> logits (B, V), renewed state
Inputs a graph does not use are left out of it (the Transformer's decoder reads no memory).
The Transformer's state is its cross-attention keys/values (computed once) and its
self-attention keys/values, which grow by one position a step ("past_k.0" in, "new.past_k.0"
out, as Hugging Face optimum's decoder_with_past); an RNN's is its hidden (cell, input-feeding)
state plus the attention keys or the source summary. Every state tensor has the batch first.

The graphs come from wrappers around the network's own modules, traced by torch.onnx's
TorchScript exporter (`dynamo=False`): torch.export (`dynamo=True`) cannot trace the packed
sequences of the RNN encoder (data-dependent lengths), which the tracer maps onto the
`sequence_lens` of ONNX's RNN/GRU/LSTM, so one exporter serves every family, with dynamic
batch and lengths.

`OnnxTranslator` is a `Translator` whose network is an `OnnxNetwork`, the decoding protocol
over two ONNX Runtime sessions: `seqkit.decoding.search` runs greedy and beam search
unchanged, and text, batching, length limits and images go the Translator's way. Importing
this module imports neither onnx nor onnxruntime; what needs them raises an ImportError
naming the `seqkit[onnx]` extra.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seqkit.decoding import DecodingConfig, Hypothesis, length_limits, search
from seqkit.models.transformer import Transformer
from seqkit.pretrained import EXPORT_META_FILE as META_FILE
from seqkit.sampling import Decoding
from seqkit.tokens import BOS, EOS, PAD
from seqkit.translator import Translator

ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"
FORMAT, FORMAT_VERSION, OPSET = "onnx", 1, 17
INSTALL = "pip install 'seqkit[onnx]'"
NEW = "new."
"""Prefix of a renewed state tensor among the decoder's outputs: `past_k.0` -> `new.past_k.0`."""
Axes = dict[str, dict[int, str]]


def _require(module: str):
    """Import `module` (onnx, onnxruntime), or raise an ImportError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed: {INSTALL} ({err})") from None


# -- export wrappers ------------------------------------------------------------------------
# An encoder wrapper names the state: `static` (computed once) and `carried` (renewed each
# step), in the order it returns them after the memory; `axes` gives their dynamic axes.
class TransformerEncoder(nn.Module):
    """(src, src_mask) -> memory (B, S, D), every decoder layer's cross-attention keys and
    values (B, H, S, Dh), and empty self-attention keys and values (B, H, 0, Dh)."""

    def __init__(self, net: Transformer) -> None:
        super().__init__()
        self.net, n = net, len(net.decoder)
        self.static = [f"{kv}.{i}" for i in range(n) for kv in ("cross_k", "cross_v")]
        self.carried = [f"{kv}.{i}" for i in range(n) for kv in ("past_k", "past_v")]
        self.axes = {**{k: {0: "batch", 2: "src_len"} for k in self.static},
                     **{k: {0: "batch", 2: "past_len"} for k in self.carried},
                     **{NEW + k: {0: "batch", 2: "new_len"} for k in self.carried}}  # fmt: skip

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, ...]:
        memory = self.net.encode(src, src_mask)
        cross = [t for layer in self.net.decoder for t in layer.cross_attn.project_kv(memory)]
        b, _, d = memory.shape
        h = self.net.config.n_heads
        empty = memory.new_zeros(b, h, 0, d // h)
        return (memory, *cross, *[empty] * len(self.carried))


class TransformerStep(nn.Module):
    """One decoder step: (tokens (B, 1), memory (unused: the cross keys/values hold it),
    src_mask, cross then past keys/values) -> logits (B, V) and the past keys/values one
    position longer. The blocks are the layers' own, run as `DecoderLayer` runs them."""

    def __init__(self, net: Transformer) -> None:
        super().__init__()
        self.net = net

    def forward(self, tokens: Tensor, memory: Tensor, src_mask: Tensor, *state: Tensor):
        n = len(self.net.decoder)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        x = self.net.embed(tokens, self.net.tgt_embed, state[2 * n].shape[2])  # (B, 1, D)
        new = []
        for i, layer in enumerate(self.net.decoder):
            cross, past = state[2 * i : 2 * i + 2], state[2 * (n + i) : 2 * (n + i) + 2]
            x, kv = self.layer_step(layer, x, cross, past, mask)
            new += kv
        return (self.net.output(self.net.decoder_norm(x))[:, -1], *new)

    @staticmethod
    def layer_step(layer: nn.Module, x: Tensor, cross: Sequence[Tensor], past: Sequence[Tensor],
                   mask: Tensor) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
        """A `DecoderLayer` on one new position `x` (B, 1, D): it attends to the past
        keys/values (B, H, T, Dh) and its own; returns its output and those T + 1."""
        kv: list[Tensor] = []

        def self_attention(h: Tensor) -> Tensor:
            k, v = layer.self_attn.project_kv(h)
            kv.extend((torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)))
            return layer.self_attn.attend(h, (kv[0], kv[1]))

        x = layer.self_block(x, self_attention)
        x = layer.cross_block(x, lambda h: layer.cross_attn.attend(h, (cross[0], cross[1]), mask))
        return layer.ff_block(x, layer.ff), kv


class RNNEncoder(nn.Module):
    """(src, src_mask) -> memory (B, S, M) and the state of `RNNSeq2Seq.init_state`."""

    CARRIED = ("h", "c", "feed")  # what `RNNSeq2Seq.reorder_state` reorders

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        width = net.encoder.hidden_size * (2 if net.encoder.bidirectional else 1)
        names = list(net.init_state(torch.zeros(1, 1, width), torch.ones(1, 1, dtype=torch.bool)))
        self.static = [k for k in names if k not in self.CARRIED]  # keys or summary
        self.carried = [k for k in names if k in self.CARRIED]
        self.axes = {k: {0: "batch"} for k in [*names, *(NEW + k for k in self.carried)]}
        self.axes.update({k: {0: "batch", 1: "src_len"} for k in self.static if k == "keys"})

    def forward(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, ...]:
        memory = self.net.encode(src, src_mask)
        state = self.net.init_state(memory, src_mask)
        return (memory, *[state[k] for k in [*self.static, *self.carried]])


class RNNStep(nn.Module):
    """One step of `RNNSeq2Seq.decode`: (tokens (B, 1), memory, src_mask, state) -> logits
    (B, V) and the renewed recurrent state."""

    def __init__(self, net: nn.Module, encoder: RNNEncoder) -> None:
        super().__init__()
        self.net, self.names = net, [*encoder.static, *encoder.carried]
        self.carried = encoder.carried

    def forward(self, tokens: Tensor, memory: Tensor, src_mask: Tensor, *state: Tensor):
        state_ = dict(zip(self.names, state, strict=True))
        logits, new = self.net.decode(tokens, memory, src_mask, state_)
        return (logits[:, -1], *[new[k] for k in self.carried])


def wrappers(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder-step modules `export_onnx` traces, for a seqkit seq2seq net."""
    if isinstance(net, Transformer):
        return TransformerEncoder(net), TransformerStep(net)
    encoder = RNNEncoder(net)
    return encoder, RNNStep(net, encoder)


# -- export ---------------------------------------------------------------------------------
def export_onnx(model_dir: str | Path, out: str | Path) -> Path:
    """Write the seqkit model directory `model_dir` as an ONNX export in `out`: encoder.onnx,
    decoder.onnx (opset 17, dynamic batch and lengths, each checked by `onnx.checker`), the
    tokenizer file(s) and seqkit.json. Returns `out`.

    Raises:
        ImportError: naming the extra, without onnx.
        FileNotFoundError: for a missing model directory, config or weights.
        ValueError: for a model directory seqkit refuses, or an `out` that is the model
            directory, a file, or a folder holding anything but an earlier ONNX export.
    """
    from seqkit.pretrained import check_output_directory, is_export

    onnx = _require("onnx")
    model_dir, out = Path(model_dir), Path(out)
    earlier = partial(is_export, format_=FORMAT, marker=ENCODER_FILE)
    check_output_directory(out, "ONNX export", earlier, source=model_dir)
    translator = Translator.from_pretrained(model_dir)
    (out / META_FILE).unlink(missing_ok=True)  # written last: a killed export is refused
    encoder, step = wrappers(translator.net.eval())
    names = [*encoder.static, *encoder.carried]
    src, src_mask = _example_source(translator)
    with torch.no_grad():  # the decoder is traced with a past of two positions, not 0 or 1
        memory, *state = encoder(src, src_mask)
        tokens = torch.full((src.shape[0], 1), BOS)
        for _ in range(2):
            _, *carried = step(tokens, memory, src_mask, *state)
            state[len(encoder.static) :] = carried
    out.mkdir(parents=True, exist_ok=True)
    axes = {"src": {0: "batch", 1: "src_len"}, "src_mask": {0: "batch", 1: "src_len"},
            "memory": {0: "batch", 1: "src_len"}, "tokens": {0: "batch"}, "logits": {0: "batch"},
            **encoder.axes}  # fmt: skip
    _trace(encoder, (src, src_mask), out / ENCODER_FILE, ["src", "src_mask"], ["memory", *names],
           axes)  # fmt: skip
    new = [NEW + k for k in encoder.carried]
    _trace(step, (tokens, memory, src_mask, *state), out / DECODER_FILE,
           ["tokens", "memory", "src_mask", *names], ["logits", *new], axes)  # fmt: skip
    graphs = {}
    for name in (ENCODER_FILE, DECODER_FILE):
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model, full_check=True)
        graphs[name] = {"inputs": _signature(model.graph.input),
                        "outputs": _signature(model.graph.output)}  # fmt: skip
    translator.tokenizers.save(out)
    _write_meta(out, translator, graphs, encoder)
    return out


def _example_source(translator: Translator) -> tuple[Tensor, Tensor]:
    """A padded batch of two sources of 5 and 3 positions (ids or patches) to trace with."""
    lengths = torch.tensor([5, 3])
    src_mask = torch.arange(5)[None] < lengths[:, None]  # (2, 5)
    if translator.image_source is not None:
        src = torch.randn(2, 5, translator.image_source.patch_dim) * src_mask[..., None]
        return src, src_mask
    src = torch.randint(4, translator.config.src_vocab_size, (2, 5))
    src[torch.arange(2), lengths - 1] = EOS
    return src.masked_fill(~src_mask, PAD), src_mask


# What the TorchScript exporter says that does not apply here: it is the legacy exporter (see
# the module's docstring); the tracer takes Python checks (max_positions) as constants; the
# encoder's RNN starts from zeros of any batch size (the decoder's takes its state as inputs);
# the indices of the last real positions are never negative.
QUIET = [(torch.jit.TracerWarning, ""), (DeprecationWarning, "You are using the legacy"),
         (DeprecationWarning, "The feature will be removed"),
         (UserWarning, "Exporting a model to ONNX with a batch_size other than 1"),
         (UserWarning, "Exporting aten::index operator of advanced indexing")]  # fmt: skip


def _trace(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           axes: Axes) -> None:  # fmt: skip
    """torch.onnx's TorchScript exporter, dynamic on the `axes` of `inputs` and `outputs`."""
    with warnings.catch_warnings():
        for category, message in QUIET:
            warnings.filterwarnings("ignore", message, category)
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=inputs, output_names=outputs,
                          dynamic_axes={k: axes[k] for k in inputs + outputs})  # fmt: skip


def _signature(values) -> list[dict[str, Any]]:
    """Name, element type and shape (ints, or names of dynamic axes) of graph inputs/outputs."""
    from onnx import helper

    out = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        out.append({"name": value.name, "dtype": dtype, "shape": shape})
    return out


def _write_meta(out: Path, translator: Translator, graphs: dict, encoder: nn.Module) -> None:
    from seqkit import __version__
    from seqkit.models import config_to_dict, model_type

    source = translator.image_source
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "model_type": model_type(translator.config),
            "config": config_to_dict(translator.config), "decoding": asdict(translator.decoding),
            "image_source": source.to_dict() if source is not None else None,
            "exporter": "torch.onnx (TorchScript, dynamo=False)", "opset": OPSET,
            "state": [*encoder.static, *encoder.carried],
            "carried": {k: NEW + k for k in encoder.carried},
            "special_tokens": {"pad": PAD, "bos": BOS, "eos": EOS}, "graphs": graphs,
            "provenance": translator.provenance, "seqkit_version": __version__,
            "torch_version": torch.__version__}  # fmt: skip
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


# -- decoding with ONNX Runtime -------------------------------------------------------------
class OnnxNetwork:
    """seqkit's decoding protocol (encode, init_state, decode, reorder_state) over an
    export's two ONNX Runtime sessions; tensors cross as numpy arrays on the CPU.

    The encoder graph computes the initial state together with the memory, in one run:
    `encode` keeps it for the `init_state` of that memory, which follows it in every search.

    Args:
        encoder, decoder: `onnxruntime.InferenceSession`s of encoder.onnx and decoder.onnx.
        meta: the export's seqkit.json.
        config: the model config it names (sizes, `max_positions`).
    """

    def __init__(self, encoder: Any, decoder: Any, meta: dict, config: Any) -> None:
        self.encoder, self.decoder, self.config = encoder, decoder, config
        self.carried: dict[str, str] = dict(meta["carried"])
        self.encoder_outputs = [o.name for o in encoder.get_outputs()]
        self.decoder_inputs = [i.name for i in decoder.get_inputs()]
        self.decoder_outputs = ["logits", *self.carried.values()]
        self._encoded: tuple[Tensor, dict[str, Tensor]] | None = None

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        """Memory (B, S, M) of sources (B, S) ids or (B, S, P) patches and their mask."""
        feed = {"src": src.contiguous().numpy(), "src_mask": src_mask.contiguous().numpy()}
        outputs = map(torch.from_numpy, self.encoder.run(None, feed))
        tensors = dict(zip(self.encoder_outputs, outputs, strict=True))
        memory = tensors.pop("memory")
        self._encoded = (memory, tensors)
        return memory

    def init_state(self, memory: Tensor, src_mask: Tensor) -> dict[str, Tensor]:
        """The initial state the encoder graph computed with `memory`.

        Raises:
            ValueError: for a memory that is not the last `encode`'s.
        """
        if self._encoded is None or self._encoded[0] is not memory:
            raise ValueError("OnnxNetwork.init_state takes the memory of its last encode()")
        state, self._encoded = self._encoded[1], None
        return state

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor,
               state: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
        """Logits (B, T, V) of target tokens (B, T), fed one step at a time, and the state.

        Raises:
            ValueError: without a state (teacher forcing is the PyTorch network's job).
        """
        if state is None:
            raise ValueError("OnnxNetwork.decode needs the state of init_state()")
        logits = []
        for t in range(tgt.shape[1]):
            given = {"tokens": tgt[:, t : t + 1], "memory": memory, "src_mask": src_mask, **state}
            feed = {k: given[k].contiguous().numpy() for k in self.decoder_inputs}
            out = self.decoder.run(self.decoder_outputs, feed)
            logits.append(torch.from_numpy(out[0])[:, None])  # (B, 1, V)
            state = {
                **state,
                **dict(zip(self.carried, map(torch.from_numpy, out[1:]), strict=True)),
            }
        return torch.cat(logits, dim=1), state

    def reorder_state(self, state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """Pick rows of the renewed state (beam search); `index` keeps each row within its
        sentence, so the rest (cross-attention, attention keys, summary) stays as it is."""
        return {k: v.index_select(0, index) if k in self.carried else v for k, v in state.items()}


class OnnxTranslator(Translator):
    """A `Translator` over an ONNX export (`export_onnx`): `translate` for text, `read` for
    images, `search` for a padded batch of ids or patches, as the PyTorch model decodes."""

    @classmethod
    def from_directory(
        cls, path: str | Path, providers: list | None = None, *, threads: int = 0
    ) -> OnnxTranslator:
        """Load an export of `export_onnx` into ONNX Runtime sessions on `providers` (names or
        (name, options) pairs as onnxruntime takes them; default CPUExecutionProvider), each
        with `threads` intra-op threads (0: ONNX Runtime's choice) that sleep between runs
        rather than spin, leaving the cores to the PyTorch operators of the search.

        Raises:
            ImportError: naming the extra, without onnxruntime.
            FileNotFoundError: for a missing directory, graph or tokenizer file.
            ValueError: naming the file, when it is not a seqkit ONNX export.
        """
        from seqkit.models import ModelConfig, config_from_dict
        from seqkit.models.patches import ImageSource
        from seqkit.pretrained import load_tokenizers

        ort, path = _require("onnxruntime"), Path(path)
        meta = read_export(path)
        where = str(path / META_FILE)
        config = config_from_dict(meta["config"], where, ModelConfig, meta["model_type"])
        source = meta.get("image_source")
        source = ImageSource.from_dict(source, where) if source else None
        try:
            decoding = DecodingConfig(**meta.get("decoding", {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # seqkit's search runs PyTorch operators between the decoder's runs, and ONNX Runtime's
        # threads, spinning after each run for the next one, would take their cores from
        # PyTorch's: without spinning, greedy search ran 1.8x and beam 5 1.2x faster
        # (bench/decode_speed.py --onnx).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = providers or ["CPUExecutionProvider"]
        sessions = []
        for file in (path / ENCODER_FILE, path / DECODER_FILE):
            if not file.is_file():
                raise FileNotFoundError(f"{file}: not found; is {path} an ONNX export?")
            sessions.append(ort.InferenceSession(str(file), options, providers=providers))
        net = OnnxNetwork(*sessions, meta, config)
        tokenizers = load_tokenizers(config, source, path)
        return cls(net, tokenizers, decoding, source, meta.get("provenance", {}))

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where the sessions take and give their arrays

    @torch.inference_mode()
    def search(
        self, src: Tensor, src_mask: Tensor | None = None, decoding: Decoding | None = None
    ) -> tuple[list[list[Hypothesis]], Tensor]:
        """Token-level n-best lists of a padded batch of ids (B, S), or of patches (B, S, P)
        with their mask (B, S), and each sentence's length limit (B,); as `Translator.search`."""
        from seqkit.models.source import source_mask

        decoding = decoding or self.decoding
        src_mask = source_mask(src) if src_mask is None else src_mask
        limits = length_limits(src_mask, decoding, self.max_positions)
        return search(self.net, src.cpu(), src_mask.cpu(), decoding, max_len=limits.cpu()), limits

    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        raise TypeError("an OnnxTranslator holds no PyTorch weights: export_onnx writes exports")


def read_export(path: Path) -> dict:
    """`seqkit.json` of an ONNX export, checked.

    Raises:
        FileNotFoundError: for a missing directory or seqkit.json.
        ValueError: naming the file, when it is not a seqkit ONNX export of this version.
    """
    file = path / META_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found; is {path} an ONNX export (seqkit export "
                                "--format onnx)?")  # fmt: skip
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: not JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{file}: format {found!r}, not a seqkit ONNX export")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {meta.get('format_version')!r}; this seqkit "
                         f"reads version {FORMAT_VERSION}")  # fmt: skip
    for key in ("model_type", "config", "carried"):
        if key not in meta:
            raise ValueError(f"{file}: no {key!r}; not a seqkit ONNX export")
    return meta
