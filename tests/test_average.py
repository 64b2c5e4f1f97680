"""Checkpoint averaging: exact means, safe loading, export parity, picking by step, clear errors."""

import json
import os
import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from seqkit import NumberWordsData, OptimizerConfig, Seq2Seq, TransformerConfig, Translator
from seqkit.average import average_checkpoints, last_checkpoints, main
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.lit.cli import load_checkpoint

TINY = TransformerConfig(
    d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0
)
TEXTS = ["forty-two", "seven hundred and one", "nine"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Six training steps of a tiny Transformer, a checkpoint every two (+ last.ckpt)."""
    tmp = tmp_path_factory.mktemp("average")
    L.seed_everything(0)
    data = NumberWordsData(n_train=200, n_val=10, n_test=10, high=999, vocab_size=280,
                           max_tokens=256, cache_dir=str(tmp / "cache"))  # fmt: skip
    every_two = ModelCheckpoint(
        dirpath=tmp / "checkpoints", every_n_train_steps=2, save_top_k=-1, save_last=True
    )
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, logger=False, callbacks=[every_two],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(Seq2Seq(TINY, OptimizerConfig(lr=1e-2, warmup_steps=1)), data)
    paths = {torch.load(p, weights_only=True)["global_step"]: p
             for p in sorted((tmp / "checkpoints").glob("epoch=*.ckpt"))}  # fmt: skip
    assert sorted(paths) == [2, 4, 6] and (tmp / "checkpoints/last.ckpt").is_file()
    return data, paths


def weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def outputs(model: Seq2Seq | Translator, data: NumberWordsData) -> torch.Tensor:
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        return model.net.eval()(batch["src"], batch["tgt_in"])


def test_averaging_one_checkpoint_reproduces_it(run, tmp_path):
    data, paths = run
    averaged = average_checkpoints([paths[4]])
    original = weights(paths[4])
    assert averaged["state_dict"].keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(averaged["state_dict"][key], value), key
        assert averaged["state_dict"][key].dtype == value.dtype
    torch.save(averaged, tmp_path / "one.ckpt")
    model, reference = load_checkpoint(tmp_path / "one.ckpt"), load_checkpoint(paths[4])
    assert torch.equal(outputs(model, data), outputs(reference, data))
    beam2 = DecodingConfig(beam_size=2)
    assert model.translator.translate(TEXTS, beam2) == reference.translator.translate(TEXTS, beam2)


def test_averaging_two_checkpoints_gives_the_exact_mean(run):
    _, paths = run
    a, b = weights(paths[2]), weights(paths[6])
    averaged = average_checkpoints([paths[6], paths[2]])  # order of the arguments is irrelevant
    assert averaged["global_step"] == 6
    assert [s["global_step"] for s in averaged["provenance"]["averaged_from"]] == [2, 6]
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & averaged.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a), "training did not move the weights"
    for key, value in averaged["state_dict"].items():
        if a[key].is_floating_point():
            expected = ((a[key].double() + b[key].double()) / 2).to(a[key].dtype)
            assert torch.equal(value, expected), key
        else:  # counters and masks come from the newest checkpoint
            assert torch.equal(value, b[key]), key


def test_cli_writes_a_safe_checkpoint_and_an_identical_model_directory(run, tmp_path, capsys):
    data, paths = run
    main([*map(str, paths.values()), "--out", str(tmp_path / "avg.ckpt")])
    torch.load(tmp_path / "avg.ckpt", weights_only=True)  # plain data only
    from_checkpoint = load_checkpoint(tmp_path / "avg.ckpt")
    main(["--last", "3", str(paths[2].parent), "--out", str(tmp_path / "model")])
    printed = capsys.readouterr().out
    assert "step        6" in printed and str(paths[2]) in printed and "last.ckpt" not in printed
    assert f"model written to {tmp_path / 'model'}" in printed
    from_directory = Translator.from_pretrained(tmp_path / "model")
    sources = json.loads((tmp_path / "model/config.json").read_text())["provenance"]
    assert [s["global_step"] for s in sources["averaged_from"]] == [2, 4, 6]
    assert torch.equal(outputs(from_directory, data), outputs(from_checkpoint, data))
    assert from_directory.translate(TEXTS) == from_checkpoint.translator.translate(TEXTS)
    # Without optimizer state, resuming is refused instead of silently restarting AdamW.
    trainer = L.Trainer(max_steps=8, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    with pytest.raises(KeyError, match="only the model"):
        trainer.fit(from_checkpoint, data, ckpt_path=tmp_path / "avg.ckpt", weights_only=True)


def test_last_checkpoints_picks_by_global_step_not_by_name_or_time(run, tmp_path):
    _, paths = run
    folder = tmp_path / "run/checkpoints"
    folder.mkdir(parents=True)
    names = {2: "epoch=9-step=900.ckpt", 4: "a.ckpt", 6: "b.ckpt"}  # names that mislead
    for step, name in names.items():
        shutil.copy(paths[step], folder / name)
        os.utime(folder / name, (1e9 - step, 1e9 - step))  # the oldest step is the newest file
    shutil.copy(paths[6], folder / "last.ckpt")
    assert last_checkpoints(folder, 2) == [folder / "a.ckpt", folder / "b.ckpt"]
    picked = [folder / names[step] for step in (2, 4, 6)]
    assert last_checkpoints(folder, 3) == picked  # last.ckpt repeats step 6: counted once
    assert last_checkpoints(tmp_path / "run", 3) == picked  # the run folder works too
    with pytest.raises(ValueError, match=r"found 3 checkpoint.*steps: 2, 4, 6.*save_top_k=-1"):
        last_checkpoints(folder, 4)


def _altered(path, tmp_path, change) -> str:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "other.ckpt")
    return str(tmp_path / "other.ckpt")


def _other_tokenizer(checkpoint: dict) -> None:
    tokenizers = Tokenizers.train(["one two three"] * 3, ["eins zwei drei"] * 3, vocab_size=270)
    checkpoint["tokenizers"] = tokenizers.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["hyper_parameters"]["config"].update(d_ff=128),
         r"hyper_parameters\['config'\]\['d_ff'\] \(64 vs 128\)"),
        (_other_tokenizer, r"tokenizers\['tokenizer.json'\]: .*different tokenizers"),
        (lambda c: c["state_dict"].update({"net.extra": torch.zeros(1)}),
         r"state_dict\['net.extra'\] is in .*other.ckpt but not in"),
        (lambda c: c["state_dict"].update({k: torch.zeros(3) for k in list(c["state_dict"])[:1]}),
         r"differ in state_dict\['net\..*'\]: .* vs \(3,\) torch.float32"),
        (lambda c: None, r"both at global_step 4: the same checkpoint twice"),
    ],
    ids=["config", "tokenizer", "missing-weight", "shape", "same-step"],
)  # fmt: skip
def test_mismatches_name_both_files_and_the_key(run, tmp_path, change, message):
    _, paths = run
    other = _altered(paths[4], tmp_path, change)
    with pytest.raises(ValueError, match=message) as error:
        average_checkpoints([paths[4], other])
    assert str(paths[4]) in str(error.value) and other in str(error.value)


def test_cli_errors_say_what_to_do(run, tmp_path, capsys):
    _, paths = run
    folder = str(paths[2].parent)
    for argv, message in [
        ([folder, "--out", "x"], "a directory needs --last N"),
        (["--last", "2", folder, folder, "--out", "x"], "--last N takes one directory"),
        (["--last", "9", folder, "--out", "x"], "found 3 checkpoint(s)"),
        ([str(paths[2]), "--out", str(paths[2])], "would overwrite"),
        ([str(tmp_path / "none.ckpt"), "--out", "x"], "none.ckpt: no such checkpoint file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert message in str(exit_info.value) + capsys.readouterr().err, argv
