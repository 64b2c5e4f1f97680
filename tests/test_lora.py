"""LoRA adapters (seqkit.lora): only the adapters train, the base weights stay bit for bit,
merging changes no output, the adapter saves alone and small and applies back to its base,
refusals name what is wrong, and `seqkit fit` with lora exports a model `translate` reads."""

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tiny_models import PAIRS, trained

from seqkit import Seq2Seq, Translator
from seqkit.cli import main as seqkit_main
from seqkit.data.batching import pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.lit.cli import cli_main, load_checkpoint
from seqkit.lora import (
    ADAPTER_DIR,
    CONFIG_FILE,
    WEIGHTS_FILE,
    LoraConfig,
    apply_lora,
    linear_names,
    load_adapter,
    merged,
    parameter_counts,
    target_names,
)
from seqkit.models import RNNConfig, build_model
from seqkit.tokens import BOS, PAD

pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
RANK = 4


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers.train([en for en, _ in PAIRS], [de for _, de in PAIRS], vocab_size=300)


@pytest.fixture(scope="module")
def base(tokenizers) -> Translator:
    """A tiny trained Transformer (tied output projection)."""
    return trained(tokenizers, PAIRS, steps=40)


def network(family: str, tokenizers: Tokenizers, base: Translator) -> torch.nn.Module:
    """A fresh copy of the base network of `family`."""
    if family == "transformer":
        net = build_model(base.config)
        net.load_state_dict(base.net.state_dict())
        return net.eval()
    torch.manual_seed(0)
    config = RNNConfig(cell="gru", attention="bahdanau", embed_dim=16, hidden_size=24,
                       src_vocab_size=tokenizers.src_vocab_size,
                       tgt_vocab_size=tokenizers.tgt_vocab_size)  # fmt: skip
    return build_model(config).eval()


def batch(tokenizers: Tokenizers, pairs=PAIRS[:40]) -> tuple[torch.Tensor, ...]:
    src = pad(tokenizers.encode_source([s for s, _ in pairs]))
    tgt = pad(tokenizers.encode_target([t for _, t in pairs]))
    return src, torch.cat([torch.full((len(pairs), 1), BOS), tgt[:, :-1]], dim=1), tgt


def train(net: torch.nn.Module, tokenizers: Tokenizers, steps: int = 8) -> None:
    """AdamW with weight decay over *every* parameter: a base weight that required a
    gradient would move."""
    src, tgt_in, tgt = batch(tokenizers)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-2, weight_decay=0.1)
    torch.manual_seed(0)  # the adapters' dropout
    net.train()
    for _ in range(steps):
        loss = F.cross_entropy(net(src, tgt_in).transpose(1, 2), tgt, ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()


@pytest.fixture(autouse=True)
def seeded() -> None:
    """The adapters' A matrices start from a seeded draw."""
    torch.manual_seed(1)


def base_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k.replace(".base_layer.", "."): v.clone() for k, v in net.state_dict().items()
            if ".lora_" not in k}  # fmt: skip


@pytest.mark.parametrize("family", ["transformer", "gru"])
def test_only_the_adapters_train_two_r_in_plus_out_per_layer(family, tokenizers, base):
    net = network(family, tokenizers, base)
    layers = {n: m for n, m in net.named_modules() if n in target_names(net, LoraConfig())}
    assert "output" not in layers and layers  # default: every Linear but the output
    apply_lora(net, LoraConfig(rank=RANK))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    expected = sum(RANK * (m.in_features + m.out_features) for m in layers.values())
    assert parameter_counts(net)[0] == expected


@pytest.mark.parametrize("family", ["transformer", "gru"])
def test_training_keeps_the_base_and_merging_keeps_the_outputs(family, tokenizers, base):
    net = network(family, tokenizers, base)
    src, tgt_in, _ = batch(tokenizers, PAIRS[40:50])
    with torch.no_grad():
        before, expected = base_state(net), net(src, tgt_in)
    apply_lora(net, LoraConfig(rank=RANK, alpha=8.0, dropout=0.1))
    with torch.no_grad():
        assert torch.equal(net(src, tgt_in), expected)  # B = 0 at first: the base model
    train(net, tokenizers)
    after = base_state(net)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before), "a base weight moved"
    plain = merged(net)
    with torch.no_grad():
        adapted = net(src, tgt_in)
        assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapters learned
        torch.testing.assert_close(plain(src, tgt_in), adapted, atol=1e-5, rtol=1e-5)
    assert plain.state_dict().keys() == before.keys()  # plain names: a model directory


@pytest.fixture(scope="module")
def adapted(tokenizers, base) -> Translator:
    net = apply_lora(network("transformer", tokenizers, base), LoraConfig(rank=RANK))
    train(net, tokenizers)
    return Translator(net, tokenizers, base.decoding)


def test_the_adapter_saves_alone_small_and_applies_back(adapted, base, tokenizers, tmp_path):
    base.save_pretrained(tmp_path / "base")
    out = adapted.save_pretrained(tmp_path / "tuned")
    adapter = out / ADAPTER_DIR
    assert {p.name for p in adapter.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE}
    model_bytes, adapter_bytes = ((d / f).stat().st_size for d, f in (
        (out, "model.safetensors"), (adapter, WEIGHTS_FILE)))  # fmt: skip
    assert adapter_bytes * 5 < model_bytes
    assert all(".lora_" not in k for k in load_file(out / "model.safetensors"))
    meta = json.loads((out / "config.json").read_text())["provenance"]["lora"]
    assert meta["rank"] == RANK and meta["adapter"] == ADAPTER_DIR
    exported = Translator.from_pretrained(out)
    applied = Translator.from_pretrained(tmp_path / "base", adapter=adapter)
    src, tgt_in, _ = batch(tokenizers, PAIRS[40:50])
    with torch.no_grad():
        expected = adapted.net.eval()(src, tgt_in)
        torch.testing.assert_close(exported.net(src, tgt_in), expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(applied.net(src, tgt_in), exported.net(src, tgt_in))
    texts = [s for s, _ in PAIRS[40:50]]
    assert applied.translate(texts) == exported.translate(texts)
    with torch.no_grad():
        assert not torch.allclose(applied.net(src, tgt_in), base.net(src, tgt_in), atol=1e-3)


def test_peft_reads_the_adapter_as_it_reads_its_own(adapted, base, tokenizers, tmp_path):
    from peft import PeftModel

    adapter = adapted.save_pretrained(tmp_path / "tuned") / ADAPTER_DIR
    net = PeftModel.from_pretrained(network("transformer", tokenizers, base), adapter)
    src, tgt_in, _ = batch(tokenizers, PAIRS[40:50])
    with torch.no_grad():
        ours = load_adapter(base.net, adapter)(src, tgt_in)
        torch.testing.assert_close(net.merge_and_unload()(src, tgt_in), ours)


def test_an_adapter_that_does_not_fit_is_refused(adapted, tokenizers, tmp_path):
    adapter = adapted.save_pretrained(tmp_path / "tuned") / ADAPTER_DIR
    other = build_model(adapted.config)  # the same architecture, other weights
    with pytest.raises(ValueError, match="trained on other base weights"):
        load_adapter(other, adapter)
    rnn = network("gru", tokenizers, None)
    with pytest.raises(ValueError, match=r"does not fit this RNNSeq2Seq.*names no nn.Linear"):
        load_adapter(rnn, adapter)
    config = json.loads((adapter / CONFIG_FILE).read_text())
    (adapter / CONFIG_FILE).write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match=rf"{CONFIG_FILE}: .*plain LoRA.*use_dora"):
        load_adapter(adapted.net, adapter)


def test_settings_that_make_no_sense_are_refused(base, tokenizers, tmp_path):
    net = network("transformer", tokenizers, base)
    with pytest.raises(ValueError, match=r"'attn\.qq' names no nn.Linear.*decoder\.\*\.cross"):
        apply_lora(net, LoraConfig(target_modules=("attn.qq",)))
    with pytest.raises(ValueError, match="tied to the target embedding"):
        apply_lora(net, LoraConfig(target_modules=("output",)))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoraConfig(rank=0)
    assert len(target_names(net, LoraConfig(target_modules=("cross_attn",)))) == 2 * 3
    assert "decoder.0.ff.3" in linear_names(net)
    with pytest.raises(ValueError, match=r"give model\.init_from"):
        Seq2Seq(lora=LoraConfig())
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match=r"model\.lora and model\.freeze"):
        Seq2Seq(init_from=str(tmp_path / "base"), lora=LoraConfig(), freeze=["encoder"])


def write_pairs(directory: Path) -> Path:
    directory.mkdir()
    for split, part in (("train", PAIRS[20:]), ("val", PAIRS[:10]), ("test", PAIRS[10:20])):
        for lang, column in (("en", 0), ("de", 1)):
            (directory / f"{split}.{lang}").write_text("".join(p[column] + "\n" for p in part))
    return directory


def fit(tmp_path: Path, *args: str):
    return cli_main([
        "fit", "--config", str(ROOT / "recipes/finetune.yaml"), "--trainer.max_steps=4",
        "--trainer.val_check_interval=4", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={tmp_path}",
        "--data.max_tokens=512", "--data.max_length=64", f"--data.cache_dir={tmp_path / 'cache'}",
        f"--data.path={tmp_path / 'pairs'}", "--data.held_out=0",
        "--data.splits={train: train, val: val, test: test}",
        "--model.init_args.decoding.beam_size=1", *args,
    ])  # fmt: skip


def test_fit_with_lora_exports_merged_weights_and_the_adapter(base, tmp_path, capsys, caplog):
    base.save_pretrained(tmp_path / "base")
    write_pairs(tmp_path / "pairs")
    init = f"--model.init_args.init_from={tmp_path / 'base'}"
    cli = fit(tmp_path, init, f"--model.init_args.lora.rank={RANK}",
              "--model.init_args.optimizer.lr=0.01")  # fmt: skip
    assert cli.trainer.global_step == 4
    assert "LoRA rank 4 (alpha 16) on 26 Linear layers" in caplog.text
    run = tmp_path / "lightning_logs/version_0"
    model, adapter = run / "model", run / "model" / ADAPTER_DIR
    tuned, applied = (Translator.from_pretrained(model),
                      Translator.from_pretrained(tmp_path / "base", adapter=adapter))  # fmt: skip
    texts = [s for s, _ in PAIRS[10:20]]
    assert tuned.translate(texts) == applied.translate(texts)
    capsys.readouterr()
    (tmp_path / "src.txt").write_text("".join(t + "\n" for t in texts))
    seqkit_main(["translate", "--model", str(model), "--src", str(tmp_path / "src.txt"),
                 "--beam", "1"])  # fmt: skip
    assert capsys.readouterr().out.splitlines() == tuned.translate(texts)
    # The checkpoint loads with its adapters (weights_only) and exports the same model.
    last = run / "checkpoints/last.ckpt"  # step 4, as the best one
    seqkit_main(["export", str(last), str(tmp_path / "export")])
    exported = Translator.from_pretrained(tmp_path / "export")
    assert exported.translate(texts) == tuned.translate(texts)
    adapter = tmp_path / "export" / ADAPTER_DIR
    seqkit_main(["export", "--merge-adapter", str(adapter), str(tmp_path / "base"),
                 str(tmp_path / "merged")])  # fmt: skip
    assert Translator.from_pretrained(tmp_path / "merged").translate(texts) == tuned.translate(
        texts
    )
    with pytest.raises(SystemExit, match=r"--merge-adapter .*trained on other base weights"):
        seqkit_main(["export", "--merge-adapter", str(adapter), str(tmp_path / "export"),
                     str(tmp_path / "twice")])  # fmt: skip
    # Training resumes from it: the adapters go on, the base stays the base.
    model = load_checkpoint(last)
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, datamodule=cli.datamodule, ckpt_path=last, weights_only=True)
    assert trainer.global_step == 6 and model.lora.rank == RANK
    state, original = base_state(model.net), load_file(tmp_path / "base" / "model.safetensors")
    assert all(torch.equal(state[k], v) for k, v in original.items())


def test_without_peft_the_error_names_the_extra(base, tokenizers, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'seqkit\[lora\]'"):
        apply_lora(network("transformer", tokenizers, base), LoraConfig())


def test_a_merged_model_saved_again_points_to_no_adapter(adapted, tmp_path):
    out = adapted.save_pretrained(tmp_path / "tuned")
    again = Translator.from_pretrained(out).save_pretrained(tmp_path / "again")
    lora = json.loads((again / "config.json").read_text())["provenance"]["lora"]
    assert lora["rank"] == RANK and "adapter" not in lora
    assert not (again / ADAPTER_DIR).exists()
