"""Translator: a trained seq2seq model ready to use, outside Lightning (as Hugging Face's
`pipeline`, JoeyNMT's `TranslatorHubInterface` or litgpt's `LLM`).

It holds the network, the tokenizers, one validated `DecodingConfig` and, for a model that
reads images, its `ImageSource`. `seqkit translate`, `seqkit serve`, `seqkit predict`, the
LightningModule's validation and test, and the logging callbacks all decode through it. Every
decoding method also takes a `SamplingConfig`, to draw translations from the decoder
(`seqkit generate`) instead of searching for the best.
Importing it loads torch, tokenizers and safetensors, never Lightning, `datasets` or
scikit-learn.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from seqkit import lora as adapters
from seqkit.data.batching import TokenBatchSampler, pad
from seqkit.data.tags import source_tag_id, tag_sources, target_languages
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig, Hypothesis, length_limits, search
from seqkit.models import ModelConfig
from seqkit.models.patches import ImageSource
from seqkit.models.source import source_mask
from seqkit.precision import floating_dtype, set_compute_type
from seqkit.pretrained import load_network, load_tokenizers, read_directory, save_directory
from seqkit.sampling import Decoding
from seqkit.tokens import EOS

LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits on


def one_line(text: str) -> str:
    """`text` with every line-break character (those `str.splitlines` splits on) replaced by
    a space, so that one hypothesis is always one line of a file."""
    return text.translate({ord(c): " " for c in LINE_BREAKS})


class Scored(NamedTuple):
    text: str
    """A detokenized hypothesis."""
    score: float
    """Its log-probability (EOS included) divided by the GNMT length penalty (a sample's:
    not divided); 0 for an empty source."""


@dataclass(frozen=True)
class Translation:
    """What one source became: `n_best` hypotheses, best first, or `num_samples` samples."""

    hypotheses: tuple[Scored, ...]
    """The n-best list, best first; or the samples, in the order drawn."""
    hit_limit: bool = False
    """The best hypothesis (the first sample) ran into its length limit (`max_len`) without
    ending."""
    source_truncated: bool = False
    """The source was longer than the model's `max_positions` and was cut to fit."""

    @property
    def text(self) -> str:
        """The best hypothesis (the first sample)."""
        return self.hypotheses[0].text

    @property
    def score(self) -> float:
        """The best hypothesis' score."""
        return self.hypotheses[0].score


@dataclass
class Translator:
    """A seq2seq network with its tokenizers, decoding settings and optional image source.

    Args:
        net: a seqkit seq2seq network (`build_model`), on any device.
        tokenizers: the source and target tokenizers it was trained with.
        decoding: the default decoding settings; each call may pass another.
        image_source: how the network reads images, for an image-to-text model.
        provenance: where the weights came from (data, recipe, steps, metrics), for the card.
        compute_type: the precision `net` was converted to for inference
            (`seqkit.precision.set_compute_type`); only a "float32" translator saves.
    """

    net: nn.Module
    tokenizers: Tokenizers
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    image_source: ImageSource | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    compute_type: str = "float32"

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the network can read or write (Transformer positions)."""
        return getattr(self.config, "max_positions", None)

    def to(self, device: str | torch.device) -> Translator:
        self.net.to(device)
        return self

    # -- decoding batches ---------------------------------------------------------------
    @torch.inference_mode()
    def search(
        self, src: Tensor, src_mask: Tensor | None = None, decoding: Decoding | None = None
    ) -> tuple[list[list[Hypothesis]], Tensor]:
        """Token-level n-best lists of a padded batch of source ids (B, S), or of image
        patches (B, S, P) with their `src_mask` (B, S), and each sentence's length limit (B,).
        A limit depends on its own source only (`length_limits`), never on batch-mates."""
        decoding = decoding or self.decoding
        src_mask = source_mask(src) if src_mask is None else src_mask
        if src.is_floating_point():  # image patches, in the network's precision
            src = src.to(floating_dtype(self.net))
        limits = length_limits(src_mask, decoding, self.max_positions)
        was_training = self.net.training
        self.net.eval()
        try:
            return search(self.net, src, src_mask, decoding, max_len=limits), limits
        finally:
            self.net.train(was_training)

    def generate(
        self, src: Tensor, src_mask: Tensor | None = None, decoding: Decoding | None = None
    ) -> list[Translation]:
        """Detokenized n-best lists of a padded batch, as `search` finds them."""
        hyps, limits = self.search(src, src_mask, decoding)
        return [self._detokenize(nbest, int(n)) for nbest, n in zip(hyps, limits, strict=True)]

    def _detokenize(self, nbest: list[Hypothesis], limit: int) -> Translation:
        texts = self.tokenizers.decode_target([h.tokens for h in nbest])
        scored = tuple(Scored(t, h.score) for t, h in zip(texts, nbest, strict=True))
        return Translation(scored, hit_limit=len(nbest[0].tokens) >= limit)

    # -- text -----------------------------------------------------------------------------
    @property
    def target_languages(self) -> tuple[str, ...]:
        """The languages a multilingual model writes, by their tags in its source tokenizer
        (`seqkit.data.tags`); empty for a single-direction model."""
        return tuple(target_languages(self.tokenizers))

    def tag_id(self, tgt_lang: str | None) -> int | None:
        """The id of `tgt_lang`'s tag, put in front of every source; None for a
        single-direction model asked for no language.

        Raises:
            ValueError: listing the languages, for a multilingual model without `tgt_lang`
                or with another; for `tgt_lang` on a single-direction model.
        """
        return source_tag_id(self.tokenizers, tgt_lang)

    def translate(
        self,
        texts: Sequence[str],
        decoding: Decoding | None = None,
        *,
        max_tokens: int = 4096,
        tgt_lang: str | None = None,
    ) -> list[str]:
        """The best translation of each text, in order; empty lines stay empty. A
        multilingual model needs `tgt_lang`, one of `target_languages`."""
        stream = self.translate_stream(texts, decoding, max_tokens=max_tokens, tgt_lang=tgt_lang)
        return [t.text for t in stream]

    def check_text_source(self, lines: object = ()) -> None:
        """Raise unless this model reads text and `lines` is an iterable of strings, not one
        string (which would be translated character by character).

        Raises:
            ValueError: for a model that reads images.
            TypeError: for a single string.
        """
        if self.image_source is not None:
            raise ValueError("this model reads images, not text: use seqkit predict "
                             "(or Translator.read)")  # fmt: skip
        if isinstance(lines, str | bytes):
            raise TypeError("give a list of lines, not one string: translate([text])")

    def translate_stream(
        self,
        lines: Iterable[str],
        decoding: Decoding | None = None,
        *,
        max_tokens: int = 4096,
        chunk_size: int = 2000,
        tgt_lang: str | None = None,
    ) -> Iterator[Translation]:
        """Translate `lines` as they come: `chunk_size` at a time, sorted by length within
        the chunk, batched by `max_tokens` (source tokens, padding included), and yielded
        in input order as soon as the chunk is done. Memory is bounded by the chunk, not
        the input. A line that is empty or only whitespace gives an empty hypothesis.
        A multilingual model writes `tgt_lang`: its tag goes in front of every source.

        Raises:
            ValueError: for a model that reads images, `max_tokens`/`chunk_size` < 1, or a
                `tgt_lang` the model does not have (`tag_id`).
        """
        self.check_text_source(lines)
        for name, value in (("max_tokens", max_tokens), ("chunk_size", chunk_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        tag = self.tag_id(tgt_lang)
        decoding = decoding or self.decoding
        iterator = iter(lines)
        while chunk := list(itertools.islice(iterator, chunk_size)):
            yield from self._translate_chunk(chunk, decoding, max_tokens, tag)

    def _translate_chunk(
        self, texts: list[str], decoding: Decoding, max_tokens: int, tag: int | None = None
    ) -> list[Translation]:
        out = [Translation((Scored("", 0.0),) * decoding.num_returned)] * len(texts)  # immutable
        todo = [i for i, t in enumerate(texts) if t.strip()]
        ids = self.tokenizers.encode_source([texts[i] for i in todo])
        if tag is not None:
            ids = tag_sources(ids, [tag] * len(ids))
        limit = self.max_positions
        cut = [bool(limit) and len(x) > limit for x in ids]
        ids = [[*x[: limit - 1], EOS] if c else x for x, c in zip(ids, cut, strict=True)]
        batches = TokenBatchSampler([len(x) for x in ids], max_tokens, shuffle=False)
        for batch in batches:
            src = pad([ids[j] for j in batch]).to(self.device)
            for j, translation in zip(batch, self.generate(src, None, decoding), strict=True):
                out[todo[j]] = replace(translation, source_truncated=cut[j])
        return out

    # -- images ---------------------------------------------------------------------------
    def read(
        self, images: Any, decoding: Decoding | None = None, *, batch_size: int = 64
    ) -> list[str]:
        """The text of each image, for a model whose source is images: file paths, arrays
        or tensors as `load_images` takes them, of any width; each is scaled to the training
        height (its width rounded to whole patches) and standardized as in training.

        Raises:
            ValueError: for a model that reads text.
            DataError: for an image that cannot be read.
        """
        return [t.text for t in self.read_translations(images, decoding, batch_size=batch_size)]

    def read_translations(
        self, images: Any, decoding: Decoding | None = None, *, batch_size: int = 64
    ) -> list[Translation]:
        """`read`, with n-best lists and scores."""
        from seqkit.data.images import image_items, load_images, resize

        source = self.image_source
        if source is None:
            raise ValueError("this model reads text, not images: use seqkit translate "
                             "(or Translator.translate)")  # fmt: skip
        p, h = source.patch_size, source.height
        # The widest image the positions cover; a wider one is cut there, as a long text is.
        widest = (self.max_positions // source.per_column) * p if self.max_positions else None
        items, out = image_items(images), []
        for start in range(0, len(items), batch_size):
            scaled, cut = [], []
            for item in items[start : start + batch_size]:
                x = load_images(item, channels=source.channels)  # (1, C, H', W')
                w = max(p, round(x.shape[3] * h / x.shape[2] / p) * p)
                x = resize(x, (h, w))[0]
                cut.append(widest is not None and w > widest)
                scaled.append(x[:, :, :widest] if cut[-1] else x)
            widths = torch.tensor([x.shape[2] for x in scaled])
            batch = torch.zeros(len(scaled), source.channels, source.height, int(widths.max()),
                                dtype=scaled[0].dtype)  # fmt: skip
            for i, x in enumerate(scaled):  # right-padded (B, C, H, W)
                batch[i, :, :, : x.shape[2]] = x
            src, src_mask = source.cut(batch.to(self.device), widths.to(self.device))
            translations = self.generate(src, src_mask, decoding)
            out += [replace(t, source_truncated=c) for t, c in zip(translations, cut, strict=True)]
        return out

    # -- model directories ----------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write config.json (model_type, config, decoding, image source, provenance and
        `metrics`), model.safetensors, the tokenizer file(s) and a README.md model card.
        A network with LoRA adapters (`seqkit.lora`) is written merged, and its adapter
        alone in `adapter/` (peft's adapter_config.json and adapter_model.safetensors)."""
        if self.compute_type != "float32":
            raise ValueError(
                f"a translator converted to {self.compute_type} does not save: save the "
                "float32 model and choose the compute type when loading it"
            )
        provenance = {**self.provenance, **({"metrics": metrics} if metrics else {})}
        fields: dict[str, Any] = {"decoding": asdict(self.decoding)}
        if self.image_source is not None:
            fields["image_source"] = self.image_source.to_dict()
        net = self.net
        if adapters.is_adapted(net):
            lora = adapters.describe(adapters.config_of(net))
            provenance["lora"] = {**lora, "adapter": adapters.ADAPTER_DIR}
            net = adapters.merged(net)
        elif "adapter" in provenance.get("lora", {}):  # re-saved: no adapter/ beside it now
            provenance["lora"] = {k: v for k, v in provenance["lora"].items() if k != "adapter"}
        out = save_directory(directory, self.config, net, fields, provenance, self.tokenizers)
        if net is not self.net:  # after the merged model: a killed export leaves a whole one
            adapters.save_adapter(self.net, out / adapters.ADAPTER_DIR)
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: str = "cpu",
        compute_type: str = "float32",
        adapter: str | Path | None = None,
    ) -> Translator:
        """Load a directory written by `save_pretrained`, `seqkit fit` or `seqkit export`
        (directories written before config.json named its `model_type` load too), for
        inference in `compute_type` ("float32", "bfloat16" or, on the CPU, "int8"; see
        `seqkit.precision`), with the LoRA `adapter` directory (its adapter_config.json and
        adapter_model.safetensors, as peft saves them) merged into its weights first, as
        `PeftModel.from_pretrained(net, adapter).merge_and_unload()` does. Nothing is
        unpickled.

        Raises:
            FileNotFoundError: for a missing directory, config, weights or tokenizer file.
            ValueError: naming the file, for a config or weights that do not fit (DataError
                for a tokenizer file that is unreadable or does not fit config.json), or
                an adapter that does not fit this model.
            ImportError: for an adapter without peft installed.
        """
        meta, config, legacy = read_directory(directory, ModelConfig)
        path = Path(directory) / "config.json"
        source = None
        if meta.get("image_source"):  # before ImageSource: height/mean/std, sizes in config
            source = ImageSource.from_dict({**legacy, **meta["image_source"]}, f"{path}")
        try:
            decoding = DecodingConfig(**meta.get("decoding", {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None
        tokenizers = load_tokenizers(config, source, directory)  # checked against config first
        net = load_network(config, source, directory, device)
        provenance = meta.get("provenance", {})
        if adapter is not None:
            net = adapters.load_adapter(net, adapter)
            lora = adapters.describe(adapters.read_adapter_config(adapter))
            provenance = {**provenance, "lora": {**lora, "merged_from": str(adapter)}}
        net = set_compute_type(net, compute_type)
        return cls(net, tokenizers, decoding, source, provenance, compute_type)
