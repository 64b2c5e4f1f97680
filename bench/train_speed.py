"""Training speed: seqkit's Transformer step against Hugging Face's MarianMTModel and a lean
PyTorch encoder–decoder of the same size, on identical Multi30k en→de batches.

    python bench/train_speed.py [--steps 20] [--rounds 5] [--precision 32|bf16] [--compile]
        [--fit N] [--data ../shared/data/multi30k] [--max-tokens 1800] [--threads 2]

All three are 3+3 layers, d_model 256, 4 heads, FFN 1024, one shared 8,000-token vocabulary
(seqkit's BPE, trained on the train split and cached like `seqkit fit` does), dropout 0.1,
AdamW, label-smoothed (0.1) cross-entropy and gradient clipping at 1.0. The batches are
seqkit's length-bucketed ones (`--max-tokens` padded tokens, about 1,700 target tokens). After
`--warmup` steps each, the contenders take turns (A B C A B C ...) for `--rounds` rounds of
`--steps` steps each, so that a load on the machine hits all three alike. `--precision bf16`
runs the forward pass and the loss under `torch.autocast("cpu", torch.bfloat16)`;
`--compile` adds seqkit's model wrapped in `torch.compile(dynamic=True)` (the same initial
weights) as a fourth contender beside its eager self, and reports its first step (the
compilation) apart. `--fit N` then runs `seqkit fit` on the Transformer recipe for N steps
and reports its tokens/s (`seqkit.callbacks.TokensPerSecond`: source + target tokens) as a
fraction of the bare seqkit step's. The last line gives the ratios seqkit/HF and seqkit/lean.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from seqkit.tokens import BOS, EOS, PAD  # noqa: E402

D_MODEL, HEADS, LAYERS, D_FF, VOCAB, DROPOUT, SMOOTHING = 256, 4, 3, 1024, 8000, 0.1, 0.1
Batch = dict[str, Tensor]


def load_batches(args: argparse.Namespace) -> list[Batch]:
    """The first `--warmup + --steps` training batches of seqkit's data module (seed 0), as
    `seqkit fit` cuts them; exits with a message when the data is absent."""
    from seqkit.data.translation import TranslationData

    if not (args.data / f"train.{args.src}.gz").exists():
        sys.exit(f"skipped: no Multi30k at {args.data} (give --data DIR)")
    data = TranslationData(str(args.data), args.src, args.tgt, vocab_size=VOCAB,
                           joint_vocab=True, max_tokens=args.max_tokens)  # fmt: skip
    data.setup()
    loader = data.train_dataloader()
    batches = []
    for batch in loader:
        batches.append({k: batch[k] for k in ("src", "tgt_in", "tgt_out")})
        if len(batches) == max(args.warmup, 1) + args.steps:
            return batches
    return batches


def tokens(batch: Batch) -> tuple[int, int]:
    """Real (non-padding) target tokens and source + target tokens of a batch."""
    tgt = int((batch["tgt_out"] != PAD).sum())
    return tgt, tgt + int((batch["src"] != PAD).sum())


def smoothed_ce(logits: Tensor, target: Tensor) -> Tensor:
    """PyTorch's own label-smoothed cross-entropy over non-padding tokens (HF and lean)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=PAD,
                           label_smoothing=SMOOTHING)  # fmt: skip


def seqkit_contender() -> tuple[nn.Module, Callable[[nn.Module, Batch], Tensor]]:
    from seqkit.lit.loss import label_smoothed_nll
    from seqkit.models.transformer import Transformer, TransformerConfig

    config = TransformerConfig(
        src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=D_MODEL, n_heads=HEADS,
        n_encoder_layers=LAYERS, n_decoder_layers=LAYERS, d_ff=D_FF, dropout=DROPOUT,
        share_embeddings=True,
    )  # fmt: skip

    def loss(net: nn.Module, b: Batch) -> Tensor:
        return label_smoothed_nll(net(b["src"], b["tgt_in"]), b["tgt_out"], SMOOTHING)[0]

    return Transformer(config), loss


def hf_contender() -> tuple[nn.Module, Callable[[nn.Module, Batch], Tensor]]:
    """MarianMTModel (post-norm, sinusoidal positions, shared and tied embeddings), random
    initialization from a config: nothing is downloaded."""
    try:
        from transformers import MarianConfig, MarianMTModel
    except ImportError as err:
        raise SystemExit("the HF contender needs transformers: pip install transformers") from err
    config = MarianConfig(
        vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS,
        decoder_layers=LAYERS, encoder_attention_heads=HEADS, decoder_attention_heads=HEADS,
        encoder_ffn_dim=D_FF, decoder_ffn_dim=D_FF, activation_function="relu", dropout=DROPOUT,
        attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True, use_cache=False,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=BOS, forced_eos_token_id=EOS,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
    )  # fmt: skip
    model = MarianMTModel(config)

    def loss(net: nn.Module, b: Batch) -> Tensor:
        out = net(input_ids=b["src"], attention_mask=b["src"] != PAD, decoder_input_ids=b["tgt_in"])
        return smoothed_ce(out.logits, b["tgt_out"])

    return model, loss


class LeanBlock(nn.Module):
    """Pre-norm self-attention, optional cross-attention and ReLU feed-forward."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        self.norm1, self.qkv = nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, 3 * D_MODEL)
        self.out1 = nn.Linear(D_MODEL, D_MODEL)
        if cross:
            self.norm2, self.q = nn.LayerNorm(D_MODEL), nn.Linear(D_MODEL, D_MODEL)
            self.kv, self.out2 = nn.Linear(D_MODEL, 2 * D_MODEL), nn.Linear(D_MODEL, D_MODEL)
        self.norm3 = nn.LayerNorm(D_MODEL)
        self.ff = nn.Sequential(nn.Linear(D_MODEL, D_FF), nn.ReLU(), nn.Linear(D_FF, D_MODEL))
        self.drop = nn.Dropout(DROPOUT)

    @staticmethod
    def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
        b, t, _ = q.shape
        q, k, v = (x.unflatten(-1, (HEADS, -1)).transpose(1, 2) for x in (q, k, v))  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return y.transpose(1, 2).reshape(b, t, D_MODEL)

    def forward(self, x: Tensor, mask: Tensor | None, memory: Tensor | None = None) -> Tensor:
        """`mask` (B, 1, 1, S) is the source padding; with `memory` this is a decoder block."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, -1)
        decoder = memory is not None
        x = x + self.drop(self.out1(self.attend(q, k, v, None if decoder else mask, decoder)))
        if decoder:
            k, v = self.kv(memory).chunk(2, -1)
            x = x + self.drop(self.out2(self.attend(self.q(self.norm2(x)), k, v, mask, False)))
        return x + self.drop(self.ff(self.norm3(x)))


class Lean(nn.Module):
    """A minimal pre-norm encoder–decoder on `F.scaled_dot_product_attention`: shared and tied
    embeddings, learned positions."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, D_MODEL), nn.Embedding(512, D_MODEL)
        nn.init.normal_(self.embed.weight, std=D_MODEL**-0.5)
        self.encoder = nn.ModuleList(LeanBlock(False) for _ in range(LAYERS))
        self.decoder = nn.ModuleList(LeanBlock(True) for _ in range(LAYERS))
        self.enc_norm, self.dec_norm = nn.LayerNorm(D_MODEL), nn.LayerNorm(D_MODEL)
        self.drop = nn.Dropout(DROPOUT)

    def emb(self, ids: Tensor) -> Tensor:
        return self.drop(self.embed(ids) * D_MODEL**0.5 + self.pos.weight[: ids.shape[1]])

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Logits (B, T, V) for source (B, S) and shifted target (B, T)."""
        mask = (src != PAD)[:, None, None, :]  # (B, 1, 1, S)
        x = self.emb(src)
        for block in self.encoder:
            x = block(x, mask)
        memory, y = self.enc_norm(x), self.emb(tgt)
        for block in self.decoder:
            y = block(y, mask, memory)
        return self.dec_norm(y) @ self.embed.weight.T


def lean_contender() -> tuple[nn.Module, Callable[[nn.Module, Batch], Tensor]]:
    return Lean(), lambda net, b: smoothed_ce(net(b["src"], b["tgt_in"]), b["tgt_out"])


@dataclass
class Contender:
    """A model, its loss and optimizer, and what its timed steps did."""

    name: str
    model: nn.Module
    loss: Callable[[nn.Module, Batch], Tensor]
    optimizer: torch.optim.Optimizer
    first_step_s: float = 0.0
    rates: list[float] = field(default_factory=list)  # target tokens/s of each round
    seconds: float = 0.0
    tgt_tokens: int = 0
    all_tokens: int = 0

    def step(self, batch: Batch, precision: str) -> None:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else None
        with autocast or contextlib.nullcontext():
            loss = self.loss(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def contenders(compile_: bool) -> list[Contender]:
    """seqkit, HF Marian and the lean model; with `compile_`, also seqkit compiled (the same
    initial weights), racing beside its eager self."""
    makers = [("seqkit", seqkit_contender, False), ("HF Marian", hf_contender, False),
              ("lean", lean_contender, False)]  # fmt: skip
    if compile_:
        makers.append(("seqkit compiled", seqkit_contender, True))
    out = []
    for name, make, compiled in makers:
        torch.manual_seed(0)
        model, loss = make()
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9)
        runnable = torch.compile(model, dynamic=True) if compiled else model
        out.append(Contender(name, runnable, loss, optimizer))
    return out


def measure(racers: list[Contender], batches: list[Batch], args: argparse.Namespace) -> None:
    """Warm-up steps each, then interleaved rounds of `args.steps` timed steps."""
    warm, timed = batches[: max(args.warmup, 1)], batches[max(args.warmup, 1) :]
    for racer in racers:
        start = time.perf_counter()
        racer.step(warm[0], args.precision)
        racer.first_step_s = time.perf_counter() - start
        for batch in warm[1:]:
            racer.step(batch, args.precision)
    counts = [tokens(b) for b in timed]
    tgt, both = sum(c[0] for c in counts), sum(c[1] for c in counts)
    for r in range(args.rounds):
        for racer in racers:
            start = time.perf_counter()
            for batch in timed:
                racer.step(batch, args.precision)
            seconds = time.perf_counter() - start
            racer.rates.append(tgt / seconds)
            racer.seconds += seconds
            racer.tgt_tokens, racer.all_tokens = racer.tgt_tokens + tgt, racer.all_tokens + both
            print(f"round {r + 1} {racer.name}: {tgt / seconds:,.0f} target tok/s", flush=True)


def fit(args: argparse.Namespace) -> float:
    """`seqkit fit` on the Transformer recipe for `args.fit` steps (no validation, no test);
    its TokensPerSecond figure (source + target tokens/s)."""
    with tempfile.TemporaryDirectory(prefix="train_speed_fit_") as run_dir:
        command = [
            sys.executable, "-m", "seqkit.cli", "fit",
            "--config", str(ROOT / "recipes/transformer-multi30k.yaml"),
            f"--data.path={args.data.resolve()}", f"--data.src_lang={args.src}",
            f"--data.tgt_lang={args.tgt}", f"--data.max_tokens={args.max_tokens}",
            "--data.splits={train: train, val: val}", f"--trainer.max_steps={args.fit}",
            "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run_dir}",
            f"--trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    rate = re.search(r"of steps: ([\d,]+) tokens/s", result.stdout)
    if result.returncode or not rate:
        sys.exit(f"seqkit fit failed:\n{result.stdout[-1500:]}\n{result.stderr[-2500:]}")
    return float(rate.group(1).replace(",", ""))


def fit_fraction(seqkit: Contender, timed: list[Batch], args: argparse.Namespace) -> None:
    """Print `seqkit fit`'s tokens/s against the bare seqkit step's, timed before the fit
    (the rounds) and once more after it, so that a load that comes or goes shows."""
    before = seqkit.all_tokens / seqkit.seconds
    fitted = fit(args)
    start = time.perf_counter()
    for batch in timed:
        seqkit.step(batch, args.precision)
    after = sum(tokens(b)[1] for b in timed) / (time.perf_counter() - start)
    bare = (before + after) / 2
    print(f"seqkit fit ({args.fit} steps): {fitted:,.0f} source+target tok/s = "
          f"{fitted / bare:.2f} × the bare step's {bare:,.0f} "
          f"({before:,.0f} before the fit, {after:,.0f} after)")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, each")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32")
    parser.add_argument("--compile", action="store_true", help="also race seqkit compiled")
    parser.add_argument("--fit", type=int, default=0, metavar="N",
                        help="also run `seqkit fit` for N steps")  # fmt: skip
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--max-tokens", type=int, default=1800, help="padded tokens per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    batches = load_batches(args)
    racers = contenders(args.compile)
    timed = batches[max(args.warmup, 1) :]
    mean_tgt = statistics.mean(tokens(b)[0] for b in timed)
    print(f"{len(timed)} batches of {mean_tgt:,.0f} target tokens on average; precision "
          f"{args.precision}, {args.threads} threads")  # fmt: skip
    for racer in racers:
        n = sum(p.numel() for p in racer.model.parameters() if p.requires_grad)
        print(f"{racer.name}: {n / 1e6:.2f} M parameters")
    measure(racers, batches, args)
    for racer in racers:
        spread = (
            f" (rounds {min(racer.rates):,.0f}–{max(racer.rates):,.0f})" if args.rounds > 1 else ""
        )
        print(f"{racer.name}: {racer.tgt_tokens / racer.seconds:,.0f} target tok/s{spread}, "
              f"first step {racer.first_step_s:.1f} s")  # fmt: skip
    seqkit, hf, lean, *compiled = (r.tgt_tokens / r.seconds for r in racers)
    if args.fit:
        fit_fraction(racers[0], batches[max(args.warmup, 1) :], args)
    line = (f"target tok/s seqkit {seqkit:,.0f}, HF {hf:,.0f}, lean {lean:,.0f}; "
            f"seqkit/HF {seqkit / hf:.2f}, seqkit/lean {seqkit / lean:.2f}")  # fmt: skip
    if compiled:
        line += f"; seqkit compiled/eager {compiled[0] / seqkit:.2f}"
    print(line)


if __name__ == "__main__":
    main()
