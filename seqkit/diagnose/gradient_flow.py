"""`seqkit diagnose gradient-flow`: how far back the loss at the last step reaches in a
language model, ‖∂L_T/∂h_t‖ against the distance T − t, for every family; and for the LSTM
the forget gates along the way.

L_T is the cross-entropy of the prediction made after the last of T input tokens. Norms are
taken per sequence (each row's own loss and state), then averaged over the batch; the
network runs in eval mode (no dropout). What h_t is:

- RNN, GRU, LSTM: the top layer's hidden state after step t (the LSTM's `h`, not its cell
  state `c`). The future depends on the past only through the state after step t (every
  layer's h, and c), so the derivative with respect to the top layer's h, the rest held, is
  well defined: it is what backpropagation through time carries into that layer at step t.
  The network runs step by step through its own `decode` (one fused call a step), so that
  each step's state is a tensor in the graph.
- Transformer: the first block's input at position t (token embedding × √D plus position),
  where the residual stream starts. The last block's output would not do: no later position
  reads it, so its gradient is 0 for every t < T. Later positions read position t through
  attention in every block; the input is where all those paths start, the counterpart of
  the state a recurrent net hands on, except that each path is one attention hop per block
  long whatever the distance.

The LSTM's forget gates are recomputed from its own weights (PyTorch's gate order i, f, g,
o), step by step from zero states as `nn.LSTM` runs, for the top layer: f_t is the factor by
which c_{t−1} survives into c_t, so along the cell-to-cell path ∂c_T/∂c_t = ∏ f_s, unit by
unit. `main` is the command; `seqkit.diagnose.gradient_flow_files` writes its files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqkit.models.lm import RNNLM, TransformerLM
from seqkit.tokens import PAD

if TYPE_CHECKING:
    from seqkit.data.lm import LanguageModelData
    from seqkit.lit.lm import LanguageModel


def gradient_flow(net: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """‖∂L_T/∂h_t‖ (T,) float64 by distance T − 1 − t (index 0: the last step's state), for a
    language model reading `inputs` (B, T) whose loss L_T is on predicting `target` (B,)
    after them; h_t as the module docstring says.

    Raises:
        ValueError: for a windowed model (`context`) or PAD in the tokens.
    """
    if getattr(net.config, "context", 0):
        raise ValueError(f"context={net.config.context}: a windowed model reads every window "
                         "afresh; measure one with context=0")  # fmt: skip
    if bool((inputs == PAD).any()) or bool((target == PAD).any()):
        raise ValueError("the tokens hold PAD: measure on full windows")
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            if isinstance(net, TransformerLM):
                logits, states = _transformer_inputs(net, inputs)
            else:
                logits, states = _recurrent_states(net, inputs)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(logits, target, reduction="sum")  # each row its own
            grads = torch.autograd.grad(loss, states)
    finally:
        net.train(was_training)
    if isinstance(net, TransformerLM):
        norms = grads[0].double().norm(dim=-1).mean(0)  # (B, T, D) -> (T,)
    else:  # per step (B, L, H): the top layer's
        norms = torch.stack([g[:, -1].double().norm(dim=-1).mean(0) for g in grads])
    return norms.flip(0).detach().cpu()


def _recurrent_states(net: RNNLM, inputs: Tensor) -> tuple[Tensor, tuple[Tensor]]:
    """The last step's logits (B, V) and the hidden state (B, L, H) after every step."""
    state, states = net.init_state(len(inputs)), []
    for t in range(inputs.shape[1]):
        state = net.decode(inputs[:, t : t + 1], state)[1]
        states.append(state["h"])
    # From the last state, as `decode` makes them in eval mode (its logits come from the
    # fused call's outputs, another tensor than the state it returns).
    return net.output(state["h"][:, -1]), tuple(states)


def _transformer_inputs(net: TransformerLM, inputs: Tensor) -> tuple[Tensor, tuple[Tensor]]:
    """The last position's logits (B, V) and the first block's input (B, T, D)."""
    seen = []
    # The embedding's dropout (identity in eval mode) is the one module that outputs it.
    hook = net.embed_dropout.register_forward_hook(lambda m, args, out: seen.append(out))
    try:
        logits = net(inputs)[:, -1]
    finally:
        hook.remove()
    return logits, (seen[0],)


@dataclass(frozen=True)
class ForgetGates:
    """An LSTM's top-layer forget gates over one batch."""

    mean: Tensor
    """(T,) f_t by step, the mean over units and batch."""
    product: Tensor
    """(T,) by distance d = T − 1 − t: the mean over units and batch of ∏ f_s over the last
    d steps (s = T − d .. T − 1, 0-based), each unit's own product; 1 at d = 0. It is how much
    of c_t reaches c_{T−1} along the cell-to-cell path (float64: products get small)."""


def forget_gates(net: RNNLM, inputs: Tensor) -> ForgetGates:
    """The top layer's forget gates while an LSTM language model reads `inputs` (B, T) from a
    zero state, in eval mode.

    Raises:
        ValueError: for a model that is not an LSTM.
    """
    if getattr(net.config, "cell", None) != "lstm":
        raise ValueError(f"{type(net).__name__} has no forget gate: it is not an LSTM")
    with torch.no_grad():
        _, f = lstm_gates(net.rnn, net.embed(inputs))  # dropout is off in eval mode
    f = f.double()
    survive = f.flip(1).cumprod(1).mean((0, 2))  # (T,): ∏ over the last 1, 2, ... steps
    product = torch.cat([survive.new_ones(1), survive[:-1]])
    return ForgetGates(f.mean((0, 2)).float().cpu(), product.cpu())


def lstm_gates(lstm: nn.LSTM, x: Tensor) -> tuple[Tensor, Tensor]:
    """`lstm` (batch-first, one direction, no projection, eval mode) unrolled by hand over
    `x` (B, T, E) from zero states, with its own weights: the top layer's outputs (B, T, H),
    the same as `lstm(x)[0]`, and its forget gates f_t (B, T, H)."""
    if lstm.bidirectional or lstm.proj_size or not lstm.batch_first:
        raise ValueError("lstm_gates unrolls batch-first, one-directional LSTMs without a "
                         "projection")  # fmt: skip
    b, t = x.shape[:2]
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        pre = x @ w_ih.T  # (B, T, 4H): the inputs' share of every gate, all steps at once
        if lstm.bias:
            pre = pre + getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        h = c = x.new_zeros(b, lstm.hidden_size)
        outputs, forget = [], []
        for step in range(t):
            i, f, g, o = (pre[:, step] + h @ w_hh.T).chunk(4, dim=-1)  # PyTorch's order
            f = f.sigmoid()
            c = f * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            outputs.append(h)
            forget.append(f)
        x = torch.stack(outputs, dim=1)  # (B, T, H): the next layer's input
    return x, torch.stack(forget, dim=1)


@dataclass(frozen=True)
class Measurement:
    """One model at one stage, measured on one held-out batch."""

    model: str
    """The model's name: its family (and forget bias), or its directory's name."""
    stage: str
    """"init" (before training) or "trained"."""
    norms: Tensor
    """(T,) ‖∂L_T/∂h_t‖ by distance, as `gradient_flow` returns it."""
    loss: float
    """Mean cross-entropy over every position of the batch (nats per token)."""
    params: int
    """The network's parameter count."""
    gates: ForgetGates | None = None
    """An LSTM's forget gates over the batch; None for the other families."""
    seconds: float = 0.0
    """Training time before this measurement (0 at init)."""


def measure(name: str, stage: str, net: nn.Module, inputs: Tensor, targets: Tensor,
            seconds: float = 0.0) -> Measurement:  # fmt: skip
    """Measure `net` on `inputs` → `targets` (B, T): L_T is on the last target."""
    device = next(net.parameters()).device
    inputs, targets = inputs.to(device), targets.to(device)
    norms = gradient_flow(net, inputs, targets[:, -1])
    lstm = getattr(net.config, "cell", None) == "lstm"
    was_training = net.training
    net.eval()
    with torch.no_grad():
        loss = float(F.cross_entropy(net(inputs).float().transpose(1, 2), targets))
    net.train(was_training)
    return Measurement(name, stage, norms, loss, sum(p.numel() for p in net.parameters()),
                       forget_gates(net, inputs) if lstm else None, seconds)  # fmt: skip


def family_configs(width: int, layers: int, length: int, dropout: float) -> dict[str, object]:
    """Name -> config of the four families at one width and depth (vocabulary from the
    data); the LSTM twice, its forget bias initialized at 0 and at 1."""
    from seqkit.models import RNNLMConfig, TransformerLMConfig

    def rnn(cell: str, forget_bias: float | None = None) -> RNNLMConfig:
        return RNNLMConfig(cell=cell, embed_dim=width, hidden_size=width, n_layers=layers,
                           dropout=dropout, forget_bias=forget_bias)  # fmt: skip

    return {
        "rnn": rnn("rnn"),
        "gru": rnn("gru"),
        "lstm-fb0": rnn("lstm", 0.0),
        "lstm-fb1": rnn("lstm", 1.0),
        "transformer": TransformerLMConfig(
            d_model=width, n_heads=max(1, width // 32), n_layers=layers, d_ff=4 * width,
            dropout=dropout, max_positions=length,
        ),
    }  # fmt: skip


def held_out_batch(data: LanguageModelData, size: int) -> tuple[Tensor, Tensor]:
    """The first `size` full windows (no PAD) of `data`'s val split: inputs and targets (B, T).

    Raises:
        DataError: when the val split holds no full window.
    """
    from seqkit.errors import DataError

    data.setup()
    windows = data.windows["val"]
    items = [windows[i] for i in range(len(windows))]
    items = [w for w in items if not bool((w["target"] == PAD).any())][:size]
    if not items:
        raise DataError(f"data: the val split holds no full window of {data.seq_len} tokens; "
                        "lower --length")  # fmt: skip
    return torch.stack([w["input"] for w in items]), torch.stack([w["target"] for w in items])


# -- the command ----------------------------------------------------------------------------
def main(argv: list[str]) -> None:
    """`seqkit diagnose gradient-flow`: measure, write the files under --out, print their paths."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag in ("length", "batch_size", "width", "layers"):
        if getattr(args, flag) < 1:
            parser.error(f"argument --{flag.replace('_', '-')}: must be at least 1")
    if args.train_steps < 0:
        parser.error("argument --train-steps: must be 0 or more")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"argument --out: {out} is not a directory")
    results = _directories(args) if args.model else _families(args)
    from seqkit.diagnose.gradient_flow_files import write_measurements

    for path in write_measurements(results, out):
        print(path.resolve())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkit diagnose gradient-flow",
        description="How far back the loss at the last step reaches: ‖∂L_T/∂h_t‖ against the "
        "distance T − t on one held-out batch (h_t: a recurrent model's top-layer hidden "
        "state, a Transformer's first-block input), and an LSTM's forget gates (the mean per "
        "step, the product along the way). Without --model: RNN, GRU, LSTM (forget bias 0 and "
        "1) and Transformer language models of one size, measured at initialization and "
        "after --train-steps steps on the corpus. Writes CSVs and (with matplotlib) PNG plots "
        "under --out and prints their paths.",
    )
    parser.add_argument(
        "--model", action="append", metavar="DIR", help="a language model directory (repeatable)"
    )
    parser.add_argument("--out", required=True, help="directory to write into (made if missing)")
    parser.add_argument("--data", help="corpus (as LanguageModelData's path); default: the "
                        "embedded English of pydoc_data.topics")  # fmt: skip
    parser.add_argument("--length", type=int, default=64, help="T, the tokens read (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="held-out windows measured; windows a step (%(default)s)")  # fmt: skip
    parser.add_argument("--train-steps", type=int, default=DEFAULT_STEPS,
                        help="steps per model (%(default)s; 0: init only)")  # fmt: skip
    parser.add_argument("--width", type=int, default=128, help="hidden size, d_model (%(default)s)")
    parser.add_argument("--layers", type=int, default=2, help="layers of every model (%(default)s)")
    parser.add_argument(
        "--vocab-size", type=int, default=2000, help="BPE vocabulary size (%(default)s)"
    )
    parser.add_argument(
        "--lr", type=float, default=2e-3, help="peak learning rate, AdamW (%(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="initialization, batch order, split (%(default)s)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    return parser


DEFAULT_STEPS = 200


def _families(args: argparse.Namespace) -> list[Measurement]:
    """Every family built, measured, trained for --train-steps and measured again."""
    import lightning as L

    from seqkit.data.lm import LanguageModelData
    from seqkit.lit.lm import LanguageModel
    from seqkit.lit.optim import OptimizerConfig

    data = LanguageModelData(args.data, vocab_size=args.vocab_size, seq_len=args.length,
                             batch_size=args.batch_size, seed=args.seed)  # fmt: skip
    inputs, targets = held_out_batch(data, args.batch_size)
    optimizer = OptimizerConfig(lr=args.lr, warmup_steps=max(1, args.train_steps // 10),
                                schedule="cosine", min_lr_ratio=0.1)  # fmt: skip
    results = []
    for name, config in family_configs(args.width, args.layers, args.length, 0.1).items():
        L.seed_everything(args.seed, verbose=False)  # one initialization and batch order
        module = LanguageModel(config, optimizer)
        module.use_inputs(data.model_inputs())
        module.configure_model()
        results.append(measure(name, "init", module.net.to(args.device), inputs, targets))
        if args.train_steps:
            seconds = _train(module, data, args.train_steps, torch.device(args.device))
            results.append(measure(name, "trained", module.net, inputs, targets, seconds))
        _report(results[-1], results[-2] if args.train_steps else None)
    return results


def _train(
    module: LanguageModel, data: LanguageModelData, steps: int, device: torch.device
) -> float:
    """Fit `module` for `steps` optimizer steps on `device`; the seconds it took."""
    import lightning as L

    gpu = device.type == "cuda"
    chatter = logging.getLogger("lightning.pytorch")
    level, start = chatter.level, time.perf_counter()
    chatter.setLevel(logging.WARNING)  # five fits: no five banners of devices and tips
    try:
        trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator="gpu" if gpu else "cpu",
                            devices=[device.index or 0] if gpu else 1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0)  # fmt: skip
        trainer.fit(module, data)
    finally:
        chatter.setLevel(level)
    return time.perf_counter() - start


def _directories(args: argparse.Namespace) -> list[Measurement]:
    """Every --model directory, measured as it is on held-out text in its own tokenizer."""
    from seqkit.data.lm import LanguageModelData
    from seqkit.generator import TextGenerator

    results = []
    # Each by its directory's name; when those repeat (RUN/model), by its family and place.
    names = [Path(directory).resolve().name for directory in args.model]
    for i, directory in enumerate(args.model):
        generator = TextGenerator.from_pretrained(directory, device=args.device)
        data = LanguageModelData(args.data, tokenizer=directory, seq_len=args.length,
                                 batch_size=args.batch_size, seed=args.seed)  # fmt: skip
        inputs, targets = held_out_batch(data, args.batch_size)
        name = names[i]
        if names.count(name) > 1:
            name = f"{getattr(generator.config, 'cell', 'transformer')} ({i + 1})"
        results.append(measure(name, "trained", generator.net, inputs, targets))
        _report(results[-1])
    return results


def _report(result: Measurement, before: Measurement | None = None) -> None:
    """One line on stderr: the loss, and the relative norm at a few distances."""
    relative = result.norms / result.norms[0]
    far = ", ".join(f"d={d}: {float(relative[d]):.2g}" for d in (10, 30, 60) if d < len(relative))
    loss = f"loss {before.loss:.2f} -> {result.loss:.2f}" if before else f"loss {result.loss:.2f}"
    took = f", {result.seconds:.0f} s training" if result.seconds else ""
    print(f"{result.model} ({result.params:,} parameters, {result.stage}): {loss}{took}; "
          f"relative ‖∂L_T/∂h_t‖ {far}", file=sys.stderr)  # fmt: skip
