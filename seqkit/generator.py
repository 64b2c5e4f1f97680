"""TextGenerator: a trained language model and its tokenizer, outside Lightning: continues
prompts (sampling, greedy or beam search), scores text (perplexity) and reads and writes model
directories."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import Hypothesis, search
from seqkit.models import LMConfig
from seqkit.pretrained import load_network, load_tokenizers, read_directory, save_directory
from seqkit.sampling import Decoding, SamplingConfig
from seqkit.tokens import BOS, EOS, PAD

NEW_TOKENS = 100
"""The most new tokens of a continuation whose decoding settings' `max_len` is None."""


class Continuation(NamedTuple):
    text: str
    """The text generated after the prompt."""
    score: float
    """Its log-probability given the prompt (EOS included when it ended): a sample's summed,
    a searched hypothesis' divided by the GNMT length penalty (as `Hypothesis.score`)."""
    ended: bool
    """It ended with EOS; False: it stopped at its length limit."""


class PromptedLM:
    """A language model seen through the seq2seq decoding protocol (`decoding.Decodable`), so
    that greedy search, beam search and sampling continue prompts: the "source" is a batch of
    prompts (B, T), all of one length, read ahead of the first step; each prompt's last token
    stands in for the decoder's BOS."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        return src  # the "memory": the prompts, whose last tokens start decoding

    def init_state(self, memory: Tensor, src_mask: Tensor):
        state = self.net.init_state(len(memory))
        if memory.shape[1] > 1:
            _, state = self.net.decode(memory[:, :-1], state)
        return state

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor, state):
        # BOS is only ever the first input (search never outputs it): the prompt's last token.
        tgt = torch.where(tgt == BOS, memory[:, -1:], tgt)
        return self.net.decode(tgt, state)

    def reorder_state(self, state, index: Tensor):
        return self.net.reorder_state(state, index)


@dataclass
class TextGenerator:
    """A language model ready to use: `net` (`TransformerLM` or `RNNLM`), the `tokenizers`
    it reads and writes with (one tokenizer on both sides), and where its weights came from.

    Texts are read as the model was trained: EOS, then the text's tokens, then EOS; a prompt
    is EOS and its tokens (the leading EOS stands for the start of a document).
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

    def generate(
        self, prompts: Sequence[str], decoding: Decoding | None = None, *, batch_size: int = 64
    ) -> list[list[Continuation]]:
        """The continuations of each prompt, in order: `decoding.num_returned` of them (the
        n-best of greedy or beam search, best first, or samples); default `SamplingConfig()`.

        Each continuation goes on until EOS or `decoding.max_len` new tokens (None:
        `NEW_TOKENS`); a Transformer without a `context` window also stops where its
        `max_positions` end (windowed and recurrent models have no such cap). Prompts are
        batched with others of their token count only, never padded, so a prompt's
        continuations depend on nothing else in the call (with `SamplingConfig.seed` set).

        Raises:
            TypeError: for one string rather than a list of prompts.
            ValueError: naming the prompt, for one longer than a Transformer's max_positions.
        """
        if isinstance(prompts, str | bytes):
            raise TypeError("give a list of prompts, not one string: generate([text])")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        decoding = decoding or SamplingConfig()
        ids = [[EOS, *x[:-1]] for x in self.tokenizers.encode_target(list(prompts))]
        limits = [self._room(i, len(x), decoding.max_len or NEW_TOKENS) for i, x in enumerate(ids)]
        by_length: dict[int, list[int]] = {}
        for i, x in enumerate(ids):
            by_length.setdefault(len(x), []).append(i)
        out: list[list[Continuation]] = [[] for _ in ids]
        was_training = self.net.training
        self.net.eval()
        try:
            for group in by_length.values():
                for start in range(0, len(group), batch_size):
                    batch = group[start : start + batch_size]
                    src = torch.tensor([ids[i] for i in batch], device=self.device)
                    room = torch.tensor([limits[i] for i in batch], device=self.device)
                    hyps = search(PromptedLM(self.net), src, src != PAD, decoding, max_len=room)
                    for i, nbest in zip(batch, hyps, strict=True):
                        out[i] = self._continuations(ids[i], nbest, limits[i])
        finally:
            self.net.train(was_training)
        return out

    def _room(self, index: int, length: int, wanted: int) -> int:
        """The most new tokens prompt `index` of `length` tokens may get: `wanted`, at most
        what a Transformer's positions leave (the last new token is never read back)."""
        positions = 0 if self.config.context else getattr(self.config, "max_positions", 0)
        if not positions:
            return wanted
        if length > positions:
            raise ValueError(f"prompt {index}: {length} tokens (with the leading EOS) exceed "
                             f"max_positions={positions}")  # fmt: skip
        return min(wanted, positions - length + 1)

    def _continuations(
        self, prompt: list[int], hyps: list[Hypothesis], limit: int
    ) -> list[Continuation]:
        # Decoded after the prompt, then cut: a token may finish a character the prompt began.
        decode, body = self.tokenizers.decode_target, prompt[1:]
        (head,) = decode([body])
        texts = decode([body + h.tokens for h in hyps])
        alone = decode([h.tokens for h in hyps])
        pairs = zip(texts, alone, strict=True)
        tails = [t[len(head) :] if t.startswith(head) else a for t, a in pairs]
        return [
            Continuation(t, h.score, ended=len(h.tokens) < limit)
            for t, h in zip(tails, hyps, strict=True)
        ]

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
