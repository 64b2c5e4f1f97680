"""Language-model benchmarks on one corpus, every configuration trained on identical batches.

    python bench/lm_bench.py context [--batches 300] [--families rnn gru lstm transformer]
    python bench/lm_bench.py tbptt [--batches 300] [--families lstm gru]
    (--data ../shared/data/multi30k for Multi30k's English; default: CPython's pydoc topics)

`context`: test perplexity per token against the window τ ∈ {1, 2, 4, 8, 16, 32, full}
(`context`, each prediction sees the last τ tokens): how much past a model needs.
`tbptt`: full backpropagation through each window against truncated BPTT with k = 5, 20, 50
(`tbptt_steps`): test perplexity, training tokens/s and the activation memory autograd keeps
for one backward pass (bytes of the tensors saved for backward, summed at their peak).

Each configuration trains for the same `--batches` windows of the same data in the same order
(seeded), then is scored on the test split. The table is printed last.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import lightning as L
import torch

from seqkit import (
    LanguageModel,
    LanguageModelData,
    OptimizerConfig,
    RNNLMConfig,
    TransformerLMConfig,
)
from seqkit.lit.lm import tbptt_chunks

TAUS = [1, 2, 4, 8, 16, 32, 0]  # 0: the whole past (up to the window)


def config_of(family: str, width: int) -> RNNLMConfig | TransformerLMConfig:
    if family == "transformer":
        return TransformerLMConfig(d_model=width, n_heads=4, n_layers=2, d_ff=4 * width,
                                   dropout=0.1, max_positions=512)  # fmt: skip
    return RNNLMConfig(cell=family, embed_dim=width, hidden_size=width, n_layers=2, dropout=0.1)


def train(config, data: LanguageModelData, batches: int, tbptt: int = 0) -> dict:
    """Fit for `batches` windows (two passes over fewer if the split is smaller), test."""
    L.seed_everything(0, verbose=False)
    per_epoch = len(data.train_dataloader())
    epochs = -(-batches // per_epoch)
    model = LanguageModel(config, OptimizerConfig(lr=3e-3, warmup_steps=50), tbptt_steps=tbptt)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=epochs, limit_train_batches=min(batches, per_epoch),
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - start
    (scores,) = trainer.test(model, data, verbose=False)
    tokens = min(batches, per_epoch) * epochs * data.batch_size * data.seq_len
    return {"ppl": scores["test/ppl"], "bpc": scores["test/bpc"], "tok_s": tokens / seconds,
            "model": model}  # fmt: skip


def saved_bytes(model: LanguageModel, data: LanguageModelData, tbptt: int) -> int:
    """Peak bytes of the activations autograd holds for backward over one window's chunks
    (each chunk's are freed by its own backward); parameters and repeats counted once, not."""
    batch = next(iter(data.train_dataloader()))
    weights = {p.data_ptr() for p in model.net.parameters()}
    held: set[tuple[int, int]] = set()
    peak = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal peak
        if t.data_ptr() not in weights:
            held.add((t.data_ptr(), t.untyped_storage().nbytes()))
            peak = max(peak, sum(size for _, size in held))
        return t

    model.net.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for loss, _, _ in tbptt_chunks(model.net, batch["input"], batch["target"], tbptt):
            loss.backward()
            held.clear()
    return peak


def context_table(args: argparse.Namespace) -> None:
    data = LanguageModelData(args.data, vocab_size=args.vocab_size, seq_len=64, batch_size=32)
    data.setup()
    rows = {}
    for family in args.families:
        for tau in TAUS:
            config = replace(config_of(family, args.width), context=tau)
            result = train(config, data, args.batches)
            rows[family, tau] = result["ppl"]
            print(f"{family:12} τ={tau or 'full':>4}  test ppl {result['ppl']:8.2f}  "
                  f"{result['tok_s']:8.0f} tok/s", flush=True)  # fmt: skip
    header = "| family | " + " | ".join(f"τ={t}" if t else "full" for t in TAUS) + " |"
    print("\ntest perplexity per token against the window τ")
    print(header)
    print("|---" * (len(TAUS) + 1) + "|")
    for family in args.families:
        print(f"| {family} | " + " | ".join(f"{rows[family, t]:.1f}" for t in TAUS) + " |")


def tbptt_table(args: argparse.Namespace) -> None:
    data = LanguageModelData(args.data, vocab_size=args.vocab_size, seq_len=200, batch_size=16)
    data.setup()
    lines = []
    for family in args.families:
        for k in (0, 50, 20, 5):
            config = config_of(family, args.width)
            result = train(config, data, args.batches, tbptt=k)
            memory = saved_bytes(result["model"], data, k) / 2**20
            line = (f"| {family} | {k or 'full (200)'} | {result['ppl']:.1f} | "
                    f"{result['tok_s']:,.0f} | {memory:.1f} |")  # fmt: skip
            print(line, flush=True)
            lines.append(line)
    print("\nfull BPTT against truncated BPTT (windows of 200 tokens)")
    print("| family | k | test ppl | train tok/s | saved for backward (MB) |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["context", "tbptt"])
    parser.add_argument("--data", default=None, help="data.path (default: the embedded corpus)")
    parser.add_argument("--families", nargs="+", default=None)
    parser.add_argument("--batches", type=int, default=300, help="training windows per model")
    parser.add_argument("--width", type=int, default=128, help="d_model / hidden size")
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args()
    if args.what == "context":
        args.families = args.families or ["rnn", "gru", "lstm", "transformer"]
        context_table(args)
    else:
        args.families = args.families or ["lstm", "gru"]
        tbptt_table(args)


if __name__ == "__main__":
    main()
