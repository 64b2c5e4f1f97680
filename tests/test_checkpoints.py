"""Every model family's `seqkit fit` checkpoint goes through every command that reads one:
`seqkit export`, `seqkit average`, and `--ckpt_path` for test and predict."""

from pathlib import Path

import pytest
from test_cli import write_corpus

from seqkit.cli import main
from seqkit.lit.cli import cli_main
from seqkit.translator import Translator

ROOT = Path(__file__).resolve().parents[1]
SMALL_RNN = ["--model.init_args.config.embed_dim=16", "--model.init_args.config.hidden_size=24"]
FAMILIES = {
    "transformer": ("transformer-multi30k.yaml", [
        "--model.init_args.config.d_model=32", "--model.init_args.config.n_heads=4",
        "--model.init_args.config.n_encoder_layers=1",
        "--model.init_args.config.n_decoder_layers=1", "--model.init_args.config.d_ff=64"]),
    "rnn": ("rnn-multi30k.yaml", SMALL_RNN),
    "gru+bahdanau": ("gru-multi30k.yaml", SMALL_RNN),
    "lstm+luong": ("lstm-multi30k.yaml", SMALL_RNN),
}  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus"
    write_corpus(path)
    return path


def args(family: str, corpus: Path, root: Path) -> list[str]:
    recipe, sizes = FAMILIES[family]
    return [
        "--config", str(ROOT / "recipes" / recipe), *sizes, f"--data.path={corpus}",
        "--data.splits={train: train, val: val, test: test}", "--data.src_lang=en",
        "--data.tgt_lang=de", "--data.vocab_size=280", "--data.max_tokens=512",
        f"--data.cache_dir={root / 'cache'}", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", "--trainer.limit_val_batches=1",
        "--trainer.limit_test_batches=1", "--model.init_args.decoding.beam_size=2",
        "--model.init_args.decoding.max_len=8",
    ]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_every_familys_checkpoint_exports_averages_tests_and_predicts(family, corpus, tmp_path):
    options = args(family, corpus, tmp_path)
    cli = cli_main(["fit", *options, "--trainer.max_steps=2", "--trainer.val_check_interval=1",
                    "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.save_top_k=-1",
                    "--trainer.callbacks.every_n_train_steps=1"])  # fmt: skip
    checkpoints = sorted(Path(cli.trainer.log_dir).glob("checkpoints/*.ckpt"))
    assert len(checkpoints) >= 2, checkpoints
    texts = ["seven", "forty-two"]
    exported = tmp_path / "exported"
    main(["export", str(checkpoints[-1]), str(exported)])
    assert Translator.from_pretrained(exported).config == cli.model.config
    main(["average", "--last", "2", str(checkpoints[0].parent), "--out", str(tmp_path / "avg")])
    assert len(Translator.from_pretrained(tmp_path / "avg").translate(texts)) == 2
    tested = cli_main(["test", *options, f"--ckpt_path={checkpoints[-1]}"])
    assert "test/bleu" in tested.trainer.callback_metrics
    predicted = cli_main(["predict", *options, f"--ckpt_path={checkpoints[-1]}"])
    lines = (Path(predicted.trainer.log_dir) / "predictions.txt").read_text().splitlines()
    assert len(lines) == 50  # test split: one line per source, in order


class Payload:
    """What a malicious checkpoint carries: unpickling it runs code (here, writes a file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("command", ["export", "average", "test"])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(command, corpus, tmp_path):
    import subprocess
    import sys

    import torch

    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": Payload(marker)}, "global_step": 1}, evil)
    argv = {
        "export": ["export", str(evil), str(tmp_path / "out")],
        "average": ["average", str(evil), "--out", str(tmp_path / "out")],
        "test": ["test", *args("transformer", corpus, tmp_path), f"--ckpt_path={evil}"],
    }[command]
    result = subprocess.run([sys.executable, "-m", "seqkit.cli", *argv], capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert not marker.exists()  # the payload never ran
    if command != "test":  # ours: one line naming the file
        assert f"{evil}: not a plain-data PyTorch checkpoint" in result.stderr
        assert "Traceback" not in result.stderr
