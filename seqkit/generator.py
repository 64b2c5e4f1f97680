"""TextGenerator: a trained language model and its tokenizer, outside Lightning: scores text
(perplexity) and reads and writes model directories."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seqkit.data.tokenizer import Tokenizers
from seqkit.models import LMConfig
from seqkit.pretrained import load_network, load_tokenizers, read_directory, save_directory
from seqkit.tokens import EOS, PAD


@dataclass
class TextGenerator:
    """A language model ready to use: `net` (`TransformerLM` or `RNNLM`), the `tokenizers`
    it reads and writes with (one tokenizer on both sides), and where its weights came from.

    Texts are read as the model was trained: EOS, then the text's tokens, then EOS.
    """

    net: nn.Module
    tokenizers: Tokenizers
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> LMConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids between EOS marks: EOS t1 ... tn EOS."""
        return [[EOS, *ids] for ids in self.tokenizers.encode_target(texts)]

    @torch.inference_mode()
    def log_likelihoods(self, texts: list[str], batch_size: int = 32) -> list[tuple[float, int]]:
        """Per text: the summed natural-log probability of its tokens and closing EOS, and
        their count. A text longer than a Transformer's `max_positions` raises ValueError."""
        self.net.eval()
        results = []
        ids = self.encode(texts)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batch = torch.full((len(chunk), max(map(len, chunk))), PAD, dtype=torch.long)
            for row, seq in enumerate(chunk):
                batch[row, : len(seq)] = torch.as_tensor(seq)
            batch = batch.to(self.device)
            logits = self.net(batch[:, :-1]).float()  # (B, T, V); causal: padding after is unseen
            target = batch[:, 1:]
            nll = F.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=PAD, reduction="none"
            )
            for row, seq in enumerate(chunk):
                results.append((-float(nll[row].sum()), len(seq) - 1))
        return results

    def perplexity(self, texts: list[str]) -> float:
        """exp of the mean negative log-likelihood per token over all `texts` (with EOS)."""
        scores = self.log_likelihoods(texts)
        total, count = sum(s for s, _ in scores), sum(n for _, n in scores)
        return math.exp(-total / count)

    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write config.json (model_type, config, provenance and `metrics`),
        model.safetensors, tokenizer.json and a README.md model card."""
        provenance = {**self.provenance, **({"metrics": metrics} if metrics else {})}
        return save_directory(directory, self.config, self.net, {}, provenance, self.tokenizers)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> TextGenerator:
        """Load a directory written by `save_pretrained`, `seqkit fit` or `seqkit export`.
        Nothing is unpickled; config.json and the tokenizer are checked before any weight is
        allocated.

        Raises:
            FileNotFoundError: for a missing directory, config, weights or tokenizer file.
            ValueError: naming the file, for a config, tokenizer or weights that do not fit
                (DataError, a ValueError, for the tokenizer).
        """
        meta, config, _ = read_directory(directory, LMConfig)
        tokenizers = load_tokenizers(config, None, directory)
        net = load_network(config, None, directory, device)
        return cls(net, tokenizers, meta.get("provenance", {}))
