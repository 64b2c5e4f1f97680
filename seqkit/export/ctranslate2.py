"""CTranslate2 export of a seqkit Transformer, and translation with the export.

`export_ctranslate2` fills a `ctranslate2.specs.TransformerSpec` from the network and lets
CTranslate2's own `Converter` validate, quantize and write it (model.bin, config.json and the
vocabularies); seqkit's tokenizer file(s) and `seqkit.json` (decoding settings, positions) go
next to them, so the directory is self-contained. `CTranslate2Translator` reads it back and
decodes as seqkit does: source ids end with EOS, the target starts at BOS, PAD and BOS are
never produced, EOS is banned before `min_len`, and each sentence gets seqkit's length limit.

Mapping (seqkit -> CTranslate2 spec), for each side's embeddings and layers:
  src_embed / tgt_embed -> encoder.embeddings[0] / decoder.embeddings (scale_embeddings: x sqrt(D))
  positions(net) -> encoder/decoder.position_encodings.encodings (seqkit's own table, exact)
  attn.q + attn.kv (self) -> self_attention.linear[0] (fused q, k, v); attn.out -> linear[1]
  cross_attn.q / .kv / .out -> attention.linear[0] / [1] (fused k, v) / [2]
  *_block.norm -> the sublayer's layer_norm; ff[0] / ff[3] -> ffn.linear_0 / linear_1
  encoder_norm / decoder_norm (pre-norm) -> encoder/decoder.layer_norm; output -> projection

Importing this module does not import ctranslate2; every function that needs it raises an
ImportError naming the `seqkit[ctranslate2]` extra when it is missing.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqkit.data.tags import source_tag_id, tag_sources, target_languages
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.export import CTRANSLATE2_COMPUTE_TYPES
from seqkit.pretrained import EXPORT_META_FILE as META_FILE  # CTranslate2 writes config.json
from seqkit.tokens import BOS, EOS, PAD, SPECIAL_TOKENS, UNK
from seqkit.translator import Scored, Translation

FORMAT = "ctranslate2"
INSTALL = "pip install 'seqkit[ctranslate2]'"


def _ctranslate2():
    """The ctranslate2 module, or an ImportError that says which extra to install.

    Imported with `RTLD_DEEPBIND` where the platform has it (Linux), so that CTranslate2's
    library binds to the OpenMP runtime it ships. Otherwise it binds to PyTorch's, loaded
    first with global symbols, and once both engines have run in one process that runtime
    holds more threads than there are cores: it stops spinning between parallel regions and
    both engines wait for sleeping threads at every operator (on 2 cores, CTranslate2's greedy
    search ran at half its speed and seqkit's at two thirds). A ctranslate2 that other code
    imported before keeps its binding. Under `LD_PRELOAD` (an allocator such as jemalloc, a
    sanitizer) the import is plain: a deep-bound library would call libc's malloc and free
    rather than the preloaded ones.
    """
    flags = sys.getdlopenflags()
    deepbind = 0 if os.environ.get("LD_PRELOAD") else getattr(os, "RTLD_DEEPBIND", 0)
    sys.setdlopenflags(flags | deepbind)
    try:
        import ctranslate2
    except ImportError as err:
        raise ImportError(f"CTranslate2 is not installed: {INSTALL} ({err})") from None
    finally:
        sys.setdlopenflags(flags)
    return ctranslate2


# -- export -------------------------------------------------------------------------------
def export_ctranslate2(
    model_dir: str | Path, out_dir: str | Path, quantization: str | None = None
) -> Path:
    """Convert the seqkit model directory `model_dir` (a token-to-token Transformer) into a
    CTranslate2 model directory `out_dir`, weights quantized to `quantization` (int8,
    int8_float16, int16, float16, bfloat16, ...; None keeps float32).

    Raises:
        ImportError: naming the extra, without ctranslate2.
        ValueError: naming the model type, for a model that is not a Transformer or that
            reads images; for an `out_dir` that holds `model_dir` or other files.
        FileNotFoundError: for a missing model directory.
    """
    from seqkit.translator import Translator

    ct2 = _ctranslate2()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_exportable(model_dir)
    _check_output(model_dir, out_dir)
    translator = Translator.from_pretrained(model_dir)
    spec = transformer_spec(translator.net, translator.tokenizers)

    class SpecConverter(ct2.converters.Converter):
        def _load(self):
            return spec

    SpecConverter().convert(str(out_dir), quantization=quantization, force=True)
    translator.tokenizers.save(out_dir)
    meta = {
        "format": FORMAT,
        "model_type": "transformer",
        "quantization": quantization,
        "max_positions": translator.config.max_positions,
        "decoding": asdict(translator.decoding),
        "provenance": translator.provenance,
        "ctranslate2_version": ct2.__version__,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out_dir


def _check_exportable(model_dir: Path) -> None:
    """Refuse, naming the model type, what CTranslate2 cannot run as seqkit does."""
    from seqkit.models import ImageModelConfig, LMConfig, ModelConfig, model_type, read_model_config
    from seqkit.models.text2image import TextToImageConfig
    from seqkit.models.transformer import TransformerConfig

    every = ModelConfig | ImageModelConfig | LMConfig | TextToImageConfig
    meta, config = read_model_config(model_dir, every)
    if type(config) is not TransformerConfig:  # not a subclass either (a text-to-image model)
        raise ValueError(
            f"{model_dir}: holds a {model_type(config)} model; CTranslate2 runs only seqkit's "
            "Transformer seq2seq models (use --format onnx for the others)"
        )
    if meta.get("image_source") or meta["config"].get("src_patch_size"):
        raise ValueError(
            f"{model_dir}: a transformer model that reads images; CTranslate2 takes token "
            "sources only (use --format onnx)"
        )


def _check_output(model_dir: Path, out_dir: Path) -> None:
    """The converter deletes `out_dir` first: only an empty place or an earlier CTranslate2
    export (one killed before its seqkit.json holds CTranslate2's model.bin)."""
    from seqkit.pretrained import check_output_directory, is_export

    earlier = partial(is_export, format_=FORMAT, marker="model.bin")
    check_output_directory(out_dir, "CTranslate2 export", earlier, source=model_dir)


def transformer_spec(net: nn.Module, tokenizers: Tokenizers):
    """A `ctranslate2.specs.TransformerSpec` holding `net`'s weights (a seqkit `Transformer`
    with token embeddings) and `tokenizers`' vocabularies, in id order."""
    from seqkit.models.transformer import positions

    specs = _ctranslate2().specs
    c = net.config
    activation = {"relu": specs.Activation.RELU, "gelu": specs.Activation.GELU}[c.activation]
    spec = specs.TransformerSpec.from_config(
        (c.n_encoder_layers, c.n_decoder_layers),
        c.n_heads,
        pre_norm=c.norm_first,
        activation=activation,
    )
    table = _array(positions(net))  # (max_positions, D), sinusoidal or learned
    for side, embed in ((spec.encoder, net.src_embed), (spec.decoder, net.tgt_embed)):
        embeddings = side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings
        embeddings.weight = _array(embed.weight)
        side.scale_embeddings = True  # x sqrt(d_model), as Transformer.embed
        side.position_encodings.encodings = table
    for layer_spec, layer in zip(spec.encoder.layer, net.encoder, strict=True):
        _set_attention(layer_spec.self_attention, layer.attn, layer.attn_block.norm, fused=True)
        _set_ffn(layer_spec.ffn, layer.ff, layer.ff_block.norm)
    for layer_spec, layer in zip(spec.decoder.layer, net.decoder, strict=True):
        _set_attention(layer_spec.self_attention, layer.self_attn, layer.self_block.norm, True)
        _set_attention(layer_spec.attention, layer.cross_attn, layer.cross_block.norm, False)
        _set_ffn(layer_spec.ffn, layer.ff, layer.ff_block.norm)
    if c.norm_first:  # the final norms of the pre-norm residual stream
        _set_norm(spec.encoder.layer_norm, net.encoder_norm)
        _set_norm(spec.decoder.layer_norm, net.decoder_norm)
    spec.decoder.projection.weight = _array(net.output.weight)  # no bias
    spec.register_source_vocabulary(_vocabulary(tokenizers.source))
    spec.register_target_vocabulary(_vocabulary(tokenizers.target))
    config = spec.config
    config.unk_token, config.eos_token = SPECIAL_TOKENS[UNK], SPECIAL_TOKENS[EOS]
    config.bos_token = config.decoder_start_token = SPECIAL_TOKENS[BOS]
    config.layer_norm_epsilon = 1e-5  # nn.LayerNorm's, which every seqkit norm keeps
    return spec


def _array(tensor: torch.Tensor):
    return tensor.detach().to("cpu", torch.float32).contiguous().numpy().copy()


def _set_linear(spec, linear: nn.Linear) -> None:
    spec.weight = _array(linear.weight)
    if linear.bias is not None:
        spec.bias = _array(linear.bias)


def _set_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def _set_attention(spec, attn: nn.Module, norm: nn.LayerNorm, fused: bool) -> None:
    """Self-attention (`fused`): linear[0] = [q; k; v], linear[1] = out. Cross-attention:
    linear[0] = q, linear[1] = [k; v] (seqkit's `kv` is already k then v), linear[2] = out."""
    if fused:
        spec.linear[0].weight = _array(torch.cat([attn.q.weight, attn.kv.weight]))  # (3D, D)
        spec.linear[0].bias = _array(torch.cat([attn.q.bias, attn.kv.bias]))
    else:
        _set_linear(spec.linear[0], attn.q)
        _set_linear(spec.linear[1], attn.kv)  # (2D, D)
    _set_linear(spec.linear[-1], attn.out)
    _set_norm(spec.layer_norm, norm)


def _set_ffn(spec, ff: nn.Sequential, norm: nn.LayerNorm) -> None:
    _set_linear(spec.linear_0, ff[0])  # ff: Linear, activation, Dropout, Linear
    _set_linear(spec.linear_1, ff[3])
    _set_norm(spec.layer_norm, norm)


def _vocabulary(tokenizer) -> list[str]:
    """The token strings of `tokenizer`, in id order (CTranslate2 maps them back to ids)."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    tokens = [tokenizer.id_to_token(i) for i in range(size)]
    if None in tokens or len(set(tokens)) != size:
        raise ValueError("the tokenizer's ids are not one distinct token string each")
    return tokens


# -- translation --------------------------------------------------------------------------
class CTranslate2Translator:
    """A CTranslate2 export with its seqkit tokenizers and decoding settings.

    seqkit imports ctranslate2 so that it keeps its own OpenMP runtime (Linux; see
    `_ctranslate2`). Where ctranslate2 was imported before seqkit did, it shares PyTorch's and
    both engines slow down once both have run: run them in separate processes there.

    Args:
        model: a `ctranslate2.Translator` of the export.
        tokenizers: the tokenizers the export holds.
        decoding: the model's decoding settings (each call may pass others).
        max_positions: the longest sequence the model's positions cover.
    """

    def __init__(
        self, model: Any, tokenizers: Tokenizers, decoding: DecodingConfig, max_positions: int
    ) -> None:
        self.model = model
        self.tokenizers = tokenizers
        self.decoding = decoding
        self.max_positions = max_positions
        self.source_vocab = _vocabulary(tokenizers.source)
        self.target_ids = {t: i for i, t in enumerate(_vocabulary(tokenizers.target))}

    @classmethod
    def from_directory(
        cls,
        path: str | Path,
        device: str = "cpu",
        compute_type: str = "default",
        inter_threads: int = 1,
        intra_threads: int = 0,
    ) -> CTranslate2Translator:
        """Load an export of `export_ctranslate2` on `device` (cpu, cuda, cuda:1).

        Raises:
            ImportError: naming the extra, without ctranslate2.
            FileNotFoundError: for a missing directory.
            ValueError: naming the device or compute type that CTranslate2 cannot take, or
                the directory, when it is not a seqkit CTranslate2 export.
        """
        ct2, path = _ctranslate2(), Path(path)
        meta = read_export(path)
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
            raise ValueError(f"device {device!r}: CTranslate2 runs on cpu, cuda or cuda:N")
        if kind == "cuda" and int(index or 0) >= (n := ct2.get_cuda_device_count()):
            raise ValueError(f"device {device!r}: CTranslate2 sees {n} CUDA device(s) here")
        if compute_type not in CTRANSLATE2_COMPUTE_TYPES:
            raise ValueError(f"compute type {compute_type!r}: CTranslate2 takes one of "
                             f"{', '.join(CTRANSLATE2_COMPUTE_TYPES)}")  # fmt: skip
        try:
            model = ct2.Translator(str(path), device=kind, device_index=int(index or 0),
                                   compute_type=compute_type, inter_threads=inter_threads,
                                   intra_threads=intra_threads)  # fmt: skip
            decoding = DecodingConfig(**meta.get("decoding", {}))
        except (RuntimeError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from None
        return cls(model, Tokenizers.load(path), decoding, int(meta["max_positions"]))

    @property
    def target_languages(self) -> tuple[str, ...]:
        """The languages a multilingual export writes (its tokenizer's tags); empty for a
        single-direction one."""
        return tuple(target_languages(self.tokenizers))

    def tag_id(self, tgt_lang: str | None) -> int | None:
        """`tgt_lang`'s tag id, put in front of every source (`seqkit.data.tags.source_tag_id`:
        a ValueError for a language the export does not write, or none named for a
        multilingual one)."""
        return source_tag_id(self.tokenizers, tgt_lang)

    def translate(self, lines: Sequence[str], decoding: DecodingConfig | None = None,
                  *, max_tokens: int = 4096, tgt_lang: str | None = None) -> list[str]:  # fmt: skip
        """The best translation of each line, in order; empty lines stay empty. A
        multilingual export needs `tgt_lang`, one of `target_languages`."""
        nbest = self.translate_nbest(lines, decoding, max_tokens=max_tokens, tgt_lang=tgt_lang)
        return [hyps[0][0] for hyps in nbest]

    def translate_nbest(
        self,
        lines: Sequence[str],
        decoding: DecodingConfig | None = None,
        *,
        max_tokens: int = 4096,
        tgt_lang: str | None = None,
    ) -> list[list[tuple[str, float]]]:
        """The `n_best` (text, score) hypotheses of each line, best first (scores are
        CTranslate2's: log-probability / length ** alpha). A multilingual export writes
        `tgt_lang`: its tag goes in front of every source, as seqkit's own `Translator` does.

        Raises:
            TypeError: for one string instead of a list of lines.
            ValueError: for a `tgt_lang` the export does not write (`tag_id`).
        """
        if isinstance(lines, str | bytes):
            raise TypeError("give a list of lines, not one string: translate([text])")
        chunk = self._translate_chunk(list(lines), decoding or self.decoding, max_tokens, tgt_lang)
        return [list(translation.hypotheses) for translation in chunk]

    def translate_stream(
        self,
        lines: Iterable[str],
        decoding: DecodingConfig | None = None,
        *,
        max_tokens: int = 4096,
        chunk_size: int = 2000,
        tgt_lang: str | None = None,
    ) -> Iterator[Translation]:
        """`translate_nbest` as `Translator.translate_stream` does it: `chunk_size` lines at a
        time, yielded in input order as soon as the chunk is done, each a `Translation` that
        also says whether its source was cut to `max_positions` and whether its best
        hypothesis ran into its length limit without ending.

        Raises:
            TypeError: for one string instead of lines.
            ValueError: for `chunk_size` < 1, or a `tgt_lang` the export does not write.
        """
        if isinstance(lines, str | bytes):
            raise TypeError("give lines, not one string: translate_stream([text])")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        decoding, iterator = decoding or self.decoding, iter(lines)
        while chunk := list(itertools.islice(iterator, chunk_size)):
            yield from self._translate_chunk(chunk, decoding, max_tokens, tgt_lang)

    def _translate_chunk(
        self, lines: list[str], decoding: DecodingConfig, max_tokens: int, tgt_lang: str | None
    ) -> list[Translation]:
        tag = self.tag_id(tgt_lang)
        todo = [i for i, line in enumerate(lines) if line.strip()]
        out = [Translation((Scored("", 0.0),) * decoding.n_best)] * len(lines)  # immutable
        ids = self.tokenizers.encode_source([lines[i] for i in todo])
        if tag is not None:
            ids = tag_sources(ids, [tag] * len(ids))
        results = self._search(ids, decoding, max_tokens)
        for i, source, hyps in zip(todo, ids, results, strict=True):
            texts = self.tokenizers.decode_target([h for h, _ in hyps])
            # Without EOS, a hypothesis as long as its limit never ended (EOS counts in it).
            limit = self.length_limit(min(len(source), self.max_positions), decoding)
            out[i] = Translation(
                tuple(Scored(t, s) for t, (_, s) in zip(texts, hyps, strict=True)),
                hit_limit=len(hyps[0][0]) >= limit,
                source_truncated=len(source) > self.max_positions,
            )
        return out

    def translate_ids(
        self, sources: Sequence[Sequence[int]], decoding: DecodingConfig | None = None,
        *, max_tokens: int = 4096,
    ) -> list[list[int]]:  # fmt: skip
        """The best output ids (no BOS, no EOS) of each source id list (EOS at its end, as
        `Tokenizers.encode_source` gives it), in order."""
        return [hyps[0][0] for hyps in self._search(sources, decoding or self.decoding, max_tokens)]

    def _search(self, sources: Sequence[Sequence[int]], decoding: DecodingConfig,
                max_tokens: int) -> list[list[tuple[list[int], float]]]:  # fmt: skip
        """n-best (ids, score) lists; sentences are decoded in groups of one length limit,
        as CTranslate2 takes one `max_decoding_length` per call."""
        limit = self.max_positions
        sources = [[*s[: limit - 1], EOS] if len(s) > limit else list(s) for s in sources]
        limits = [self.length_limit(len(s), decoding) for s in sources]
        out: list[list[tuple[list[int], float]]] = [[] for _ in sources]
        order = sorted(range(len(sources)), key=lambda i: limits[i])
        for n, group in itertools.groupby(order, key=lambda i: limits[i]):
            group = list(group)
            tokens = [[self.source_vocab[t] for t in sources[i]] for i in group]
            results = self.model.translate_batch(
                tokens,
                max_batch_size=max_tokens,
                batch_type="tokens",
                beam_size=decoding.beam_size,
                num_hypotheses=decoding.n_best,
                length_penalty=decoding.alpha,
                min_decoding_length=decoding.min_len,
                max_decoding_length=n,
                max_input_length=0,  # cut above, as seqkit cuts
                suppress_sequences=[[SPECIAL_TOKENS[PAD]], [SPECIAL_TOKENS[BOS]]],
                return_scores=True,
            )
            for i, result in zip(group, results, strict=True):
                hyps = zip(result.hypotheses, result.scores, strict=True)
                out[i] = [([self.target_ids[t] for t in h], s) for h, s in hyps]
        return out

    def length_limit(self, source_length: int, decoding: DecodingConfig) -> int:
        """The most output tokens for a source of `source_length` ids (EOS included), as
        `seqkit.decoding.length_limits` gives them."""
        if decoding.max_len is not None:
            n = decoding.max_len
        else:
            n = max(int(source_length * 1.5) + 10, decoding.min_len + 1)
        return min(n, self.max_positions)


def read_export(path: Path) -> dict:
    """`seqkit.json` of a CTranslate2 export, checked.

    Raises:
        FileNotFoundError: for a missing directory.
        ValueError: naming the directory, when it is not a seqkit CTranslate2 export.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    meta_path = path / META_FILE
    if not (path / "model.bin").is_file() or not meta_path.is_file():
        raise ValueError(
            f"{path}: not a CTranslate2 export of seqkit (no model.bin or {META_FILE}); "
            "write one with seqkit export --format ctranslate2"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "max_positions" not in meta:
        raise ValueError(f"{meta_path}: not a seqkit CTranslate2 export's metadata")
    return meta
