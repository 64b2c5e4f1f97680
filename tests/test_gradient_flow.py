"""`seqkit diagnose gradient-flow`: the norms are the gradient (finite differences in float64,
through the fused networks restarted from a perturbed state, agree), the hand-unrolled LSTM is
nn.LSTM and its forget gates are the sigmoid of its forget rows, and the command writes its
files for built and for saved models."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seqkit import LanguageModelData, RNNLMConfig, TextGenerator, TransformerLMConfig
from seqkit.cli import main
from seqkit.diagnose.gradient_flow import forget_gates, gradient_flow, lstm_gates
from seqkit.models import TransformerLM, build_model
from seqkit.models.rnn import set_forget_bias
from seqkit.tokens import PAD

V, W = 30, 6
CONFIGS = {
    "rnn": RNNLMConfig(vocab_size=V, cell="rnn", embed_dim=W, hidden_size=W, dropout=0.0),
    "gru": RNNLMConfig(vocab_size=V, cell="gru", embed_dim=W, hidden_size=W, dropout=0.0),
    "lstm": RNNLMConfig(vocab_size=V, cell="lstm", embed_dim=W, hidden_size=W, dropout=0.0,
                        forget_bias=1.0),
    "transformer": TransformerLMConfig(vocab_size=V, d_model=W, n_heads=2, n_layers=2, d_ff=12,
                                       dropout=0.0, max_positions=16),
}  # fmt: skip


def net_of(family: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(CONFIGS[family]).double().eval()


def batch(b: int = 3, t: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(4, V, (b, t + 1), generator=torch.Generator().manual_seed(1))
    return tokens[:, :-1], tokens[:, -1]


def row_losses(net: nn.Module, inputs, target, t: int, delta: torch.Tensor) -> torch.Tensor:
    """Each row's L_T with `delta` (B, W) added to h_t: a Transformer's first-block input at
    t, or a recurrent net's top-layer h, the net restarted from that state (fused calls)."""
    if isinstance(net, TransformerLM):

        def shift(module, args, out):
            out = out.clone()
            out[:, t] += delta
            return out

        hook = net.embed_dropout.register_forward_hook(shift)
        logits = net(inputs)[:, -1]
        hook.remove()
    else:
        _, state = net.decode(inputs[:, : t + 1], net.init_state(len(inputs)))
        h = state["h"].clone()
        h[:, -1] += delta
        state = {**state, "h": h}
        rest = inputs[:, t + 1 :]
        logits = net.decode(rest, state)[0][:, -1] if rest.shape[1] else net.output(h[:, -1])
    return F.cross_entropy(logits, target, reduction="none")


@torch.no_grad()
def finite_difference_norms(net: nn.Module, inputs, target, eps: float = 1e-6) -> torch.Tensor:
    """‖∂L_T/∂h_t‖ by distance, each row's gradient by central differences along every axis."""
    b, t = inputs.shape
    steps = torch.cat([torch.eye(W, dtype=torch.float64), -torch.eye(W, dtype=torch.float64)])
    steps = eps * steps.repeat_interleave(b, dim=0)  # (2W·B, W): every row, every axis, ±
    rows = (inputs.repeat(2 * W, 1), target.repeat(2 * W))  # row r of copy k: rows[k·B + r]
    norms = []
    for position in range(t):
        plus, minus = row_losses(net, *rows, position, steps).view(2, W, b)
        norms.append(((plus - minus) / (2 * eps)).norm(dim=0).mean())  # (W, B) -> ()
    return torch.stack(norms).flip(0)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_the_norms_are_the_gradient_by_finite_differences(family):
    net, (inputs, target) = net_of(family), batch()
    norms = gradient_flow(net, inputs, target)
    assert norms.shape == (inputs.shape[1],) and bool((norms > 0).all())
    torch.testing.assert_close(norms, finite_difference_norms(net, inputs, target),
                               rtol=1e-6, atol=1e-10)  # fmt: skip
    if family != "transformer":  # the last state gives the last logits, as decode does
        _, state = net.decode(inputs, net.init_state(len(inputs)))
        torch.testing.assert_close(net.output(state["h"][:, -1]), net(inputs)[:, -1])
    assert not net.training


def test_the_hand_unrolled_lstm_is_nn_lstm_and_its_forget_gates_are_sigmoid_of_the_f_rows():
    net, (inputs, _) = net_of("lstm"), batch()
    x = net.embed(inputs).detach()
    with torch.no_grad():
        outputs, f = lstm_gates(net.rnn, x)
        top = net.rnn(x)[0]
        torch.testing.assert_close(outputs, top, rtol=0, atol=1e-12)
        # The top layer's inputs and previous states as nn.LSTM computes them.
        lower = nn.LSTM(W, W, 1, batch_first=True).double()
        lower.load_state_dict({k: v for k, v in net.rnn.state_dict().items() if k.endswith("l0")})
        below, before = lower(x)[0], torch.cat([torch.zeros_like(top[:, :1]), top[:, :-1]], 1)
        f_rows = slice(W, 2 * W)  # PyTorch's gate order: i, f, g, o
        w_ih, w_hh = net.rnn.weight_ih_l1[f_rows], net.rnn.weight_hh_l1[f_rows]
        bias = net.rnn.bias_ih_l1[f_rows] + net.rnn.bias_hh_l1[f_rows]
        expected = torch.sigmoid(below @ w_ih.T + before @ w_hh.T + bias)
    torch.testing.assert_close(f, expected)
    gates, t = forget_gates(net, inputs), inputs.shape[1]
    torch.testing.assert_close(gates.mean, f.mean((0, 2)).float())
    for d in range(t):
        kept = f[:, t - d :].prod(dim=1).mean() if d else torch.tensor(1.0, dtype=torch.float64)
        torch.testing.assert_close(gates.product[d], kept)


@pytest.mark.parametrize("bias", [0.0, 1.0])
def test_a_constant_forget_gate_keeps_sigmoid_of_its_bias_per_step(bias):
    net, (inputs, _) = net_of("lstm"), batch()
    with torch.no_grad():
        for name, weight in net.rnn.named_parameters():
            if name.startswith("weight"):
                weight[W : 2 * W] = 0.0
    set_forget_bias(net.rnn, bias)
    gates, keep = forget_gates(net, inputs), torch.sigmoid(torch.tensor(bias, dtype=torch.float64))
    torch.testing.assert_close(gates.mean, keep.float().expand(inputs.shape[1]))
    torch.testing.assert_close(gates.product, keep ** torch.arange(inputs.shape[1]).double())


def test_windowed_models_pad_and_other_cells_are_refused():
    inputs, target = batch()
    windowed = build_model(TransformerLMConfig(vocab_size=V, d_model=W, n_heads=2, n_layers=1,
                                               d_ff=12, max_positions=16, context=3))  # fmt: skip
    with pytest.raises(ValueError, match="context=3"):
        gradient_flow(windowed, inputs, target)
    padded = inputs.clone()
    padded[0, 0] = PAD
    with pytest.raises(ValueError, match="PAD"):
        gradient_flow(net_of("gru"), padded, target)
    with pytest.raises(ValueError, match="not an LSTM"):
        forget_gates(net_of("gru"), inputs)


def rows(path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    words = ["the", "cat", "sat", "on", "a", "mat", "while", "two", "dogs", "ran", "past"]
    lines = [" ".join(words[(i + j) % len(words)] for j in range(12)) for i in range(300)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_command_trains_every_family_and_writes_its_files(tmp_path, corpus, capsys):
    out, t = tmp_path / "out", 8
    main(["diagnose", "gradient-flow", "--out", str(out), "--data", str(corpus),
          "--train-steps", "2", "--width", "8", "--layers", "1", "--length", str(t),
          "--batch-size", "4", "--vocab-size", "300"])  # fmt: skip
    printed = capsys.readouterr().out.split()
    names = ["gradient_flow.csv", "forget_gates.csv", "models.csv", "gradient_flow.png",
             "forget_gates.png"]  # fmt: skip
    assert printed == [str((out / name).resolve()) for name in names]
    flow = rows(out / "gradient_flow.csv")
    models = ["rnn", "gru", "lstm-fb0", "lstm-fb1", "transformer"]
    assert [r["model"] for r in flow[:: t * 2]] == models
    assert {r["stage"] for r in flow} == {"init", "trained"} and len(flow) == 5 * 2 * t
    assert all(float(r["relative"]) == 1.0 for r in flow if r["distance"] == "0")
    gates = rows(out / "forget_gates.csv")
    assert {r["model"] for r in gates} == {"lstm-fb0", "lstm-fb1"} and len(gates) == 2 * 2 * t
    first = [float(r["forget_gate"]) for r in gates if r["stage"] == "init" and r["step"] == "0"]
    assert first[0] < first[1]  # forget bias 0, then 1
    assert float(rows(out / "models.csv")[1]["train_seconds"]) > 0


def test_the_command_measures_saved_models_and_refuses_a_windowed_one(tmp_path, corpus, capsys):
    data = LanguageModelData(str(corpus), vocab_size=300, seq_len=8)
    data.setup()
    size = data.tokenizers.tgt_vocab_size
    for name, context in (("lstm-model", 0), ("windowed", 3)):
        config = RNNLMConfig(vocab_size=size, embed_dim=8, hidden_size=8, n_layers=1,
                             context=context)  # fmt: skip
        TextGenerator(build_model(config), data.tokenizers).save_pretrained(tmp_path / name)
    out = tmp_path / "out"
    main(["diagnose", "gradient-flow", "--model", str(tmp_path / "lstm-model"),
          "--out", str(out), "--data", str(corpus), "--length", "8"])  # fmt: skip
    flow = rows(out / "gradient_flow.csv")
    assert {(r["model"], r["stage"]) for r in flow} == {("lstm-model", "trained")}
    assert len(rows(out / "forget_gates.csv")) == 8
    with pytest.raises(SystemExit, match=r"^seqkit diagnose: context=3: "):
        main(["diagnose", "gradient-flow", "--model", str(tmp_path / "windowed"),
              "--out", str(out), "--data", str(corpus), "--length", "8"])  # fmt: skip
