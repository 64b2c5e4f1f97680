"""ImageGenerator: a trained text-to-image model outside Lightning (the image-writing
counterpart of `TextGenerator`): checks and tokenizes prompts, draws images by sampling (or
greedy/beam search) through `ImageTokens`, lays them out as a grid PNG, and reads and writes
model directories (config.json, model.safetensors, tokenizer.json, codebook.safetensors +
codebook.json). Importing it never loads Lightning or scikit-learn."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seqkit.codebook import PatchCodebook
from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import search
from seqkit.errors import DataError
from seqkit.models import ModelConfig
from seqkit.models.text2image import OFFSET, ImageTokens, TextToImageConfig
from seqkit.pretrained import (
    CONFIG_FILE,
    check_output_model_directory,
    load_network,
    read_directory,
    save_directory,
)
from seqkit.sampling import Decoding, SamplingConfig
from seqkit.tokens import PAD

WORD_BREAKS = re.compile(r"[\s,\-]+")
GAP = 128
"""Gray level of the lines between a grid's cells."""


def prompt_words(text: str) -> list[str]:
    """A prompt's words: lower case, split at spaces, hyphens and commas ("Forty-two" ->
    ["forty", "two"])."""
    return [word for word in WORD_BREAKS.split(text.lower()) if word]


@dataclass
class ImageGenerator:
    """A text-to-image model ready to use: `net` (a `Transformer` of `TextToImageConfig`), the
    prompt `tokenizers`, the `codebook` its tokens index, the `words` prompts may use, the most
    digit cells an image has (`max_cells`), the default `sampling`, and where the weights came
    from (`provenance`)."""

    net: nn.Module
    tokenizers: Tokenizers
    codebook: PatchCodebook
    words: tuple[str, ...]
    max_cells: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> TextToImageConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def max_length(self) -> int:
        """The longest output, in tokens, EOS included."""
        return self.max_cells * self.codebook.length + 1

    def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """Token ids (then EOS) of each prompt, its words normalized as in training.

        Raises:
            TypeError: for one string rather than a list of prompts.
            DataError: naming the prompt, for one without words or with a word the model
                never saw.
        """
        if isinstance(prompts, str | bytes):
            raise TypeError("give a list of prompts, not one string: generate([text])")
        known, texts = set(self.words), []
        for i, prompt in enumerate(prompts):
            words = prompt_words(prompt)
            if not words:
                raise DataError(f"prompt {i}: empty; name a number in words, e.g. 'seven'")
            unknown = [w for w in words if w not in known]
            if unknown:
                some = ", ".join(sorted(known)[:10])
                raise DataError(f"prompt {i} {prompt!r}: unknown word(s) "
                                f"{', '.join(map(repr, unknown))}; the model knows "
                                f"{len(known)} words ({some}, ...)")  # fmt: skip
            texts.append(" ".join(words))
        return self.tokenizers.encode_source(texts)

    @torch.inference_mode()
    def generate(
        self, prompts: Sequence[str], decoding: Decoding | None = None, *, batch_size: int = 64
    ) -> list[list[Tensor]]:
        """`decoding.num_returned` images per prompt (default: `sampling`), each (C, H, k·W)
        float in [0, 1]: k digit cells side by side, as many as the model writes before EOS
        (at most `max_cells`). A sample depends on its prompt, its number and the seed only
        (`SamplingConfig.seed`), not on the other prompts. `decoding.max_len` is not read:
        the codebook fixes the length.

        Raises:
            DataError: for an empty prompt or an unknown word (`encode_prompts`).
            ValueError: when the images are longer than the network's positions.
        """
        decoding = decoding or self.sampling
        ids = self.encode_prompts(prompts)
        if self.max_length > self.config.max_positions:
            raise ValueError(f"{self.max_cells} cells of {self.codebook.length} tokens exceed "
                             f"max_positions={self.config.max_positions}")  # fmt: skip
        decoder = ImageTokens(self.net, self.codebook.length, self.max_length - 1)
        was_training = self.net.training
        self.net.eval()
        out: list[list[Tensor]] = []
        try:
            for start in range(0, len(ids), batch_size):
                src = pad(ids[start : start + batch_size]).to(self.device)
                hyps = search(decoder, src, src != PAD, decoding, max_len=self.max_length)
                out += [[self.image(h.tokens) for h in nbest] for nbest in hyps]
        finally:
            self.net.train(was_training)
        return out

    def image(self, tokens: Sequence[int]) -> Tensor:
        """The image (C, H, k·W) in [0, 1] of k cells of target ids (codebook token + OFFSET)."""
        codes = torch.as_tensor(list(tokens), dtype=torch.long) - OFFSET
        cells = self.codebook.decode(codes.view(-1, self.codebook.length))  # (k, C, H, W)
        return torch.cat(list(cells), dim=-1)

    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write the codebook, then (`save_directory`) the weights, tokenizer.json, a model
        card and last config.json (with the prompt words, `max_cells` and `sampling`)."""
        directory = Path(directory)
        check_output_model_directory(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).unlink(missing_ok=True)  # refused until config.json is back
        self.codebook.save(directory)
        provenance = {**self.provenance, **({"metrics": metrics} if metrics else {})}
        fields = {"prompt_words": list(self.words), "max_cells": self.max_cells,
                  "sampling": asdict(self.sampling)}  # fmt: skip
        return save_directory(directory, self.config, self.net, fields, provenance,
                              self.tokenizers, checked=True)  # fmt: skip

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> ImageGenerator:
        """Load a directory written by `save_pretrained` or `seqkit fit`; never unpickles.
        config.json, the tokenizer and the codebook are checked against each other before
        any weight is allocated.

        Raises:
            FileNotFoundError: for a missing directory, config, weights, tokenizer or codebook.
            ValueError: naming the file, for a model that is not text to image, or files
                that do not fit (DataError, a ValueError, for the tokenizer and codebook).
        """
        directory = Path(directory)
        meta, config, _ = read_directory(directory, ModelConfig | TextToImageConfig)
        where = directory / CONFIG_FILE
        if not isinstance(config, TextToImageConfig):
            raise ValueError(f"{where}: holds a {meta.get('model_type')} model, not a "
                             "text-to-image one (model_type transformer-text2image)")  # fmt: skip
        codebook = PatchCodebook.load(directory)
        if config.tgt_vocab_size != codebook.num_codes + OFFSET:
            raise DataError(
                f"{where}: tgt_vocab_size={config.tgt_vocab_size}, but the codebook has "
                f"{codebook.num_codes} tokens (+{OFFSET} special)"
            )
        tokenizers = Tokenizers.load(directory)
        if tokenizers.src_vocab_size != config.src_vocab_size:
            raise DataError(f"{where}: src_vocab_size={config.src_vocab_size}, but the "
                            f"tokenizer has {tokenizers.src_vocab_size} tokens")  # fmt: skip
        words, max_cells, sampling = _inference_fields(meta, where)
        net = load_network(config, None, directory, device)
        return cls(net, tokenizers, codebook, words, max_cells, sampling,
                   meta.get("provenance", {}))  # fmt: skip


def _inference_fields(meta: dict, where: Path) -> tuple[tuple[str, ...], int, SamplingConfig]:
    """The prompt words, `max_cells` and sampling settings of config.json, checked."""
    words, max_cells = meta.get("prompt_words"), meta.get("max_cells")
    if not (isinstance(words, list) and words and all(isinstance(w, str) for w in words)):
        raise ValueError(f"{where}: prompt_words={words!r:.40} is not a list of words")
    if type(max_cells) is not int or max_cells < 1:
        raise ValueError(f"{where}: max_cells={max_cells!r:.40} is not a positive int")
    try:
        sampling = SamplingConfig(**meta.get("sampling", {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: sampling: {err}") from None
    return tuple(words), max_cells, sampling


def image_grid(images: Sequence[Tensor], columns: int, *, gap: int = 1) -> np.ndarray:
    """Images (C, H, W_i) in [0, 1], all of one height, laid out left to right and top to
    bottom in `columns` columns of the widest one's width (narrower ones left-aligned on
    black), `gap` pixels of gray between them and around: uint8 (rows·(H+gap)+gap,
    columns·(W+gap)+gap), with a last axis of 3 for RGB images."""
    if not images or columns < 1:
        raise ValueError(f"a grid needs images and columns >= 1, got {len(images)} and {columns}")
    c, h = images[0].shape[:2]
    w = max(image.shape[2] for image in images)
    rows = math.ceil(len(images) / columns)
    grid = torch.full((c, rows * (h + gap) + gap, columns * (w + gap) + gap), GAP / 255)
    for i, image in enumerate(images):
        top, left = gap + (i // columns) * (h + gap), gap + (i % columns) * (w + gap)
        grid[:, top : top + h, left : left + w] = 0.0
        grid[:, top : top + h, left : left + image.shape[2]] = image.float().cpu()
    pixels = grid.clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels[0].numpy() if c == 1 else pixels.permute(1, 2, 0).numpy()


def save_png(picture: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Write a uint8 picture (H, W) or (H, W, 3) as PNG, each pixel a `scale`² square.

    Raises:
        ImportError: without Pillow.
    """
    try:
        from PIL import Image
    except ImportError as err:
        raise ImportError("writing PNG files needs Pillow: pip install pillow") from err
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    image = Image.fromarray(picture)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
