"""RNN speed: seqkit's GRU+Bahdanau and LSTM+Luong against plain PyTorch models of the same
size written here, in training and greedy-decoding tokens/s, on identical Multi30k batches.

    python bench/rnn_speed.py [--steps 10] [--rounds 3] [--decode-batches 2] [--max-len 30]
        [--data ../shared/data/multi30k] [--max-tokens 4096] [--threads 2]

The seqkit models are `seqkit.models.rnn.RNNSeq2Seq` with the sizes of recipes/gru-multi30k.yaml
and recipes/lstm-multi30k.yaml (de→en, one shared 8,000-token BPE vocabulary, batches of
`--max-tokens` padded tokens as the recipes cut them). The references are what one writes by
hand: a packed bidirectional nn.GRU/nn.LSTM encoder, a bridge from its final states, and
for Bahdanau a loop of nn.GRUCell steps with the same additive attention, for Luong one
nn.LSTM call over the whole target and the same general attention afterwards. Training steps
use AdamW, label-smoothed cross-entropy and clipping as in `bench/train_speed.py`. Greedy
decoding runs exactly `--max-len` steps per sentence on both sides (EOS banned, so both do
the same work) over the first `--decode-batches` test batches. The four contenders take
turns (A B C D A B C D ...) after a warm-up. The last line gives the ratios seqkit/plain.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed  # puts the repository on sys.path too
from train_speed import PAD, ROOT, VOCAB, Batch, Contender, smoothed_ce, tokens

from seqkit.decoding import greedy
from seqkit.lit.loss import label_smoothed_nll
from seqkit.models.rnn import RNNConfig, RNNSeq2Seq
from seqkit.tokens import BOS, EOS

RECIPES = {"GRU+Bahdanau": "gru-multi30k.yaml", "LSTM+Luong": "lstm-multi30k.yaml"}


def recipe_config(name: str) -> RNNConfig:
    """The model config of recipes/NAME with an 8,000-token vocabulary."""
    recipe = yaml.safe_load((ROOT / "recipes" / name).read_text())
    sizes = recipe["model"]["init_args"]["config"]
    return RNNConfig(**sizes, src_vocab_size=VOCAB, tgt_vocab_size=VOCAB)


class PlainRNN(nn.Module):
    """A bidirectional one-layer GRU encoder with a Bahdanau GRUCell decoder, or an LSTM
    encoder with a Luong (general) LSTM decoder, in plain PyTorch."""

    def __init__(self, c: RNNConfig) -> None:
        super().__init__()
        if c.n_layers != 1 or not c.bidirectional or c.input_feeding:
            raise ValueError("the plain reference has one bidirectional layer, no input feeding")
        e, h = c.embed_dim, c.hidden_size
        self.lstm, self.bahdanau = c.cell == "lstm", c.attention == "bahdanau"
        self.src_embed = nn.Embedding(VOCAB, e, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(VOCAB, e, padding_idx=PAD)
        cell = nn.LSTM if self.lstm else nn.GRU
        self.encoder = cell(e, h, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * h, 2 * h if self.lstm else h)  # first h (and c)
        self.key = nn.Linear(2 * h, h, bias=False)
        if self.bahdanau:
            self.query, self.v = nn.Linear(h, h), nn.Linear(h, 1, bias=False)
            self.cell = nn.GRUCell(e + 2 * h, h)
        else:
            self.decoder = nn.LSTM(e, h, batch_first=True)
        self.combine, self.output = nn.Linear(3 * h, h), nn.Linear(h, VOCAB)
        self.drop = nn.Dropout(c.dropout)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, ...]]:
        """Memory (B, S, 2H), mask (B, S), attention keys (B, S, H), first decoder state."""
        mask = src != PAD
        x = self.drop(self.src_embed(src))
        packed = pack_padded_sequence(x, mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.encoder(packed)
        memory = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])[0]
        final = final[0] if self.lstm else final  # (2, B, H): forward and backward
        state = torch.tanh(self.bridge(torch.cat([final[0], final[1]], -1)))
        return memory, mask, self.key(memory), state.chunk(2 if self.lstm else 1, -1)

    @staticmethod
    def context(scores: Tensor, mask: Tensor, memory: Tensor) -> Tensor:
        """Attention-weighted memory (B, T, 2H) for scores (B, T, S)."""
        return scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1) @ memory

    def bahdanau_step(self, emb: Tensor, h: Tensor, memory, mask, keys) -> tuple[Tensor, Tensor]:
        """Attentional state and new state (B, H) for one embedded token (B, E)."""
        scores = self.v(torch.tanh(self.query(h)[:, None] + keys)).transpose(1, 2)  # (B, 1, S)
        context = self.context(scores, mask, memory).squeeze(1)
        h = self.cell(torch.cat([emb, context], -1), h)
        return torch.tanh(self.combine(torch.cat([h, context], -1))), h

    def luong(self, emb: Tensor, state, memory, mask, keys) -> tuple[Tensor, tuple]:
        """Attentional states (B, T, H) for embedded tokens (B, T, E), in one LSTM call."""
        out, state = self.decoder(emb, state)
        context = self.context(out @ keys.transpose(1, 2), mask, memory)
        return torch.tanh(self.combine(torch.cat([out, context], -1))), state

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V)."""
        memory, mask, keys, state = self.encode(src)
        emb = self.drop(self.tgt_embed(tgt))
        if self.bahdanau:
            h, outs = state[0], []
            for t in range(tgt.shape[1]):
                out, h = self.bahdanau_step(emb[:, t], h, memory, mask, keys)
                outs.append(out)
            att = torch.stack(outs, 1)
        else:
            att, _ = self.luong(emb, tuple(s[None] for s in state), memory, mask, keys)
        return self.output(self.drop(att))

    @torch.inference_mode()
    def greedy(self, src: Tensor, steps: int) -> Tensor:
        """Exactly `steps` most likely tokens (B, steps), EOS banned."""
        memory, mask, keys, state = self.encode(src)
        state = state[0] if self.bahdanau else tuple(s[None] for s in state)
        token, out = torch.full((src.shape[0],), BOS), []
        for _ in range(steps):
            emb = self.tgt_embed(token)
            if self.bahdanau:
                att, state = self.bahdanau_step(emb, state, memory, mask, keys)
            else:
                att, state = self.luong(emb[:, None], state, memory, mask, keys)
            logits = self.output(att.reshape(len(token), -1))
            logits[:, [PAD, BOS, EOS]] = float("-inf")
            token = logits.argmax(-1)
            out.append(token)
        return torch.stack(out, 1)


def racers() -> list[Contender]:
    out = []
    for name, recipe in RECIPES.items():
        config = recipe_config(recipe)
        for kind in ("seqkit", "plain"):
            torch.manual_seed(0)
            if kind == "seqkit":
                model, loss = RNNSeq2Seq(config), seqkit_loss
            else:
                model, loss = PlainRNN(config), plain_loss
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98))
            out.append(Contender(f"{kind} {name}", model, loss, optimizer))
    return out


def seqkit_loss(net: nn.Module, b: Batch) -> Tensor:
    return label_smoothed_nll(net(b["src"], b["tgt_in"]), b["tgt_out"], 0.1)[0]


def plain_loss(net: nn.Module, b: Batch) -> Tensor:
    return smoothed_ce(net(b["src"], b["tgt_in"]), b["tgt_out"])


def decode(racer: Contender, sources: list[Tensor], steps: int) -> float:
    """Seconds to decode `sources` greedily, `steps` tokens per sentence."""
    racer.model.eval()
    start = time.perf_counter()
    for src in sources:
        if isinstance(racer.model, PlainRNN):
            racer.model.greedy(src, steps)
        else:
            greedy(racer.model, src, src != PAD, max_len=steps, min_len=steps)
    seconds = time.perf_counter() - start
    racer.model.train()
    return seconds


def test_sources(args: argparse.Namespace) -> list[Tensor]:
    """The first `--decode-batches` length-sorted test batches' sources."""
    from seqkit.data.translation import TranslationData

    data = TranslationData(str(args.data), args.src, args.tgt, vocab_size=VOCAB,
                           joint_vocab=True, max_tokens=args.max_tokens)  # fmt: skip
    data.setup()
    loader = iter(data.test_dataloader())
    return [next(loader)["src"] for _ in range(args.decode_batches)]


def run(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Name -> (training target tok/s, decoding tok/s) over all rounds."""
    batches = train_speed.load_batches(args)
    sources = test_sources(args)
    contenders = racers()
    warm, timed = batches[: max(args.warmup, 1)], batches[max(args.warmup, 1) :]
    for racer in contenders:
        for batch in warm:
            racer.step(batch, "32")
        decode(racer, sources[:1], 2)
    n_tgt = sum(tokens(b)[0] for b in timed)
    n_out = sum(len(src) for src in sources) * args.max_len
    totals = {r.name: [0.0, 0.0] for r in contenders}
    for r in range(args.rounds):
        for racer in contenders:
            start = time.perf_counter()
            for batch in timed:
                racer.step(batch, "32")
            train_s = time.perf_counter() - start
            decode_s = decode(racer, sources, args.max_len)
            totals[racer.name][0] += train_s
            totals[racer.name][1] += decode_s
            print(f"round {r + 1} {racer.name}: training {n_tgt / train_s:,.0f} target tok/s, "
                  f"greedy {n_out / decode_s:,.0f} tok/s", flush=True)  # fmt: skip
    return {name: (n_tgt * args.rounds / t, n_out * args.rounds / d)
            for name, (t, d) in totals.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first, each")
    parser.add_argument("--decode-batches", type=int, default=2, help="test batches decoded")
    parser.add_argument("--max-len", type=int, default=30, help="tokens decoded per sentence")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/multi30k")
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = run(args)
    for name, (train, dec) in rates.items():
        print(f"{name}: training {train:,.0f} target tok/s, greedy decoding {dec:,.0f} tok/s")
    ratios = []
    for name in RECIPES:
        (st, sd), (pt, pd) = rates[f"seqkit {name}"], rates[f"plain {name}"]
        ratios.append(f"{name} training {st / pt:.2f}, decoding {sd / pd:.2f}")
    print(f"seqkit/plain: {'; '.join(ratios)}")


if __name__ == "__main__":
    main()
