"""Ancestral sampling over the decoding protocol of `seqkit.decoding`: every next token is
drawn from the model's distribution after temperature, then top-k (Fan et al., 2018), then
top-p (nucleus sampling; Holtzman et al., 2020), the order of Hugging Face's
`generate(do_sample=True)` and fairseq's `--sampling --sampling-topk/--sampling-topp`.

`SamplingConfig` is `DecodingConfig`'s sibling: `decoding.search` takes either, and the
config's type picks greedy/beam search or sampling.

Each sample draws its uniforms from a CPU `torch.Generator` of its own, seeded by
`SamplingConfig.seed`, its source's tokens and its number among that source's samples, and
picks its tokens by inverse CDF. So with a seed, a source's samples depend on nothing else in
the batch (batch-mates, their order, padding), nor on the device, but for the float rounding
of a distribution at the boundary between two tokens.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from seqkit.decoding import (
    Decodable,
    DecodingConfig,
    DecodingError,
    Hypothesis,
    _limits,
    _one_path,
    check_lengths,
)
from seqkit.tokens import BOS, EOS


@dataclass(frozen=True)
class SamplingConfig:
    """How a model samples: the settings of `sample`, for `Translator.translate`,
    `TextGenerator.generate` and `seqkit generate` (`DecodingConfig` searches instead).

    Raises:
        DecodingError (a ValueError) naming the field when a value is out of range.
    """

    temperature: float = 1.0
    """Divides the logits before filtering: below 1 sharpens the distribution, above 1
    flattens it; 0 always takes the most probable token (greedy search)."""
    top_k: int = 0
    """Draw from the k most probable tokens only (Fan et al., 2018); 0 keeps every token."""
    top_p: float = 1.0
    """Nucleus: draw from the smallest set of most probable tokens whose probability (after
    temperature and top_k) reaches top_p (Holtzman et al., 2020); 1 keeps every token."""
    num_samples: int = 1
    """Samples drawn per source, each independently of the others."""
    min_len: int = 0
    """Fewest output tokens: EOS is banned before them (as `DecodingConfig.min_len`)."""
    max_len: int | None = None
    """Most output tokens per sample (EOS included if it comes); None as
    `DecodingConfig.max_len`. A language model counts new tokens (`TextGenerator.generate`)."""
    seed: int | None = None
    """Seeds each sample's own generator, with its source's tokens and its number among that
    source's samples: the same seed draws the same samples in any batch. None: the uniforms
    come from torch's global generator (`torch.manual_seed`)."""

    @property
    def num_returned(self) -> int:
        """Hypotheses returned per source: `num_samples`."""
        return self.num_samples

    def __post_init__(self) -> None:
        if not 0 <= self.temperature < math.inf:  # also refuses NaN
            raise DecodingError("temperature", f"must be finite and >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise DecodingError("top_k", f"must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:  # also refuses NaN
            raise DecodingError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise DecodingError("num_samples", f"must be at least 1, got {self.num_samples}")
        check_lengths(self.min_len, self.max_len)


Decoding = DecodingConfig | SamplingConfig
"""Every decoding setting; the config's type picks search or sampling (`decoding.search`)."""


def filter_logprobs(
    logp: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> Tensor:
    """The distribution to draw from, as log-probabilities (N, V): the next-token
    log-probabilities `logp` (N, V) divided by `temperature`, cut to the `top_k` most probable
    tokens (ties with the k-th stay), then to the smallest set of most probable tokens whose
    mass reaches `top_p`, and renormalized. Cut tokens get -inf. Temperature 0 keeps the most
    probable token(s) only."""
    top = logp.max(-1, keepdim=True).values
    if temperature == 0:
        return torch.zeros_like(logp).masked_fill(logp < top, float("-inf")).log_softmax(-1)
    logp = ((logp - top) / temperature).log_softmax(-1)  # the best at 0: finite at any T > 0
    if 0 < top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf")).log_softmax(-1)
    if top_p < 1:
        ranked, order = logp.sort(-1, descending=True)
        p = ranked.exp()
        before = p.cumsum(-1) - p  # the mass of the more probable tokens
        cut = torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logp = logp.masked_fill(cut, float("-inf")).log_softmax(-1)
    return logp


def draw(logp: Tensor, uniforms: Tensor) -> Tensor:
    """One token (N,) from each row's distribution `logp` (N, V) by inverse CDF, given one
    uniform number in [0, 1) per row (N,). A token of probability 0 is never drawn."""
    cdf = logp.double().exp().cumsum(-1)  # (N, V)
    total = cdf[:, -1:]
    # Strictly below the total, so that the first cdf above it is a token with mass.
    u = torch.minimum(uniforms.to(cdf)[:, None] * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True).squeeze(1)


@torch.inference_mode()
def sample(
    net: Decodable,
    src: Tensor,
    src_mask: Tensor,
    *,
    max_len: int | Tensor | None = None,
    min_len: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
) -> list[list[Hypothesis]]:
    """`num_samples` samples of each source (B, S) or (B, S, P), in the order drawn, each
    ended by EOS or by its `max_len` (one int or one per source (B,); default
    `default_max_len`), scored with its log-probability under the model (temperature 1,
    unfiltered; EOS included when it ended). The options are `SamplingConfig`'s.

    Raises:
        DecodingError: naming the option out of range.
    """
    config = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                            num_samples=num_samples, min_len=min_len, seed=seed)  # fmt: skip
    return draw_samples(net, src, src_mask, _limits(max_len, src_mask), config)


@torch.inference_mode()
def draw_samples(
    net: Decodable, src: Tensor, src_mask: Tensor, limits: Tensor, config: SamplingConfig
) -> list[list[Hypothesis]]:
    """`sample` with its settings in `config` and each source's length limit in `limits`
    (B,); `config.max_len` is not read."""
    n = config.num_samples
    uniforms = _uniforms(src, src_mask, limits, config).to(src.device)  # (B*n, steps)
    rows = torch.arange(len(src), device=src.device).repeat_interleave(n)
    options = {"temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p}

    def pick(logp: Tensor, active: Tensor, t: int) -> Tensor:
        return draw(filter_logprobs(logp, **options), uniforms[active, t])

    tokens, scores = _one_path(net, src[rows], src_mask[rows], limits[rows], config.min_len,
                               0.0, BOS, EOS, pick)  # fmt: skip
    hyps = [Hypothesis(t, s) for t, s in zip(tokens, scores, strict=True)]
    return [hyps[i : i + n] for i in range(0, len(hyps), n)]


def _uniforms(src: Tensor, src_mask: Tensor, limits: Tensor, config: SamplingConfig) -> Tensor:
    """Uniform numbers (B × num_samples, longest limit) in [0, 1), float64, on the CPU: row
    b·n + s drives sample s of source b, its first `limits[b]` from a generator of its own."""
    n, steps = config.num_samples, int(limits.max())
    if config.seed is None:
        return torch.rand(len(src) * n, steps, dtype=torch.float64)
    out = torch.zeros(len(src) * n, steps, dtype=torch.float64)
    src, src_mask = src.cpu(), src_mask.cpu()
    for b, limit in enumerate(limits.tolist()):
        content = _content(src[b][src_mask[b]])
        for s in range(n):
            generator = torch.Generator().manual_seed(_row_seed(config.seed, s, content))
            out[b * n + s, :limit] = torch.rand(limit, generator=generator, dtype=torch.float64)
    return out


def _content(tokens: Tensor) -> bytes:
    """A source's unpadded tokens (or image patches) as bytes, the same on every device."""
    dtype = torch.float64 if tokens.is_floating_point() else torch.int64
    return tokens.to(dtype).contiguous().numpy().tobytes()


def _row_seed(seed: int, sample_index: int, content: bytes) -> int:
    """A 64-bit seed for sample `sample_index` of the source `content` (stable across runs
    and machines: hashlib, not Python's salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}:{sample_index}:".encode() + content, digest_size=8)
    return int.from_bytes(digest.digest(), "little")
