"""The seqkit command end to end: fit → export → translate → evaluate, and its errors."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from num2words import num2words

from seqkit.cli import main
from seqkit.lit.cli import cli_main

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "--model.init_args.config.d_model=64", "--model.init_args.config.n_heads=4",
    "--model.init_args.config.n_encoder_layers=2", "--model.init_args.config.n_decoder_layers=2",
    "--model.init_args.config.d_ff=128", "--model.init_args.config.dropout=0.0",
    "--model.init_args.optimizer.lr=0.003", "--model.init_args.optimizer.warmup_steps=30",
]  # fmt: skip


def write_corpus(directory: Path) -> None:
    """A tiny parallel corpus in Multi30k's layout: SPLIT.en.gz / SPLIT.de.gz."""
    numbers = {"train": range(0, 1000, 1), "val": range(1000, 1060), "test": range(2000, 2050)}
    directory.mkdir()
    for split, values in numbers.items():
        for lang in ("en", "de"):
            lines = "".join(
                num2words(n % 1000 if split == "train" else n, lang=lang) + "\n" for n in values
            )
            with gzip.open(directory / f"{split}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write(lines)


def seqkit(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seqkit.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    write_corpus(tmp / "corpus")
    main([
        "fit", "--config", str(ROOT / "recipes/transformer-multi30k.yaml"), *TINY_MODEL,
        f"--data.path={tmp / 'corpus'}", "--data.splits={train: train, val: val, test: test}",
        "--data.vocab_size=300", "--data.max_tokens=1024", f"--data.cache_dir={tmp / 'cache'}",
        "--trainer.max_epochs=6", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp}", "--trainer.check_val_every_n_epoch=3",
    ])  # fmt: skip
    return tmp


def corpus_args(fitted: Path) -> list[str]:
    return [
        "--config", str(ROOT / "recipes/transformer-multi30k.yaml"), *TINY_MODEL,
        f"--data.path={fitted / 'corpus'}", "--data.splits={train: train, val: val, test: test}",
        "--data.vocab_size=300", "--data.max_tokens=1024", f"--data.cache_dir={fitted / 'cache'}",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={fitted}",
    ]  # fmt: skip


def test_fit_tests_and_exports_the_best_model(fitted, capsys):
    model_dir = fitted / "lightning_logs/version_0/model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in model_dir.iterdir()
    }
    assert "test/bleu" in (model_dir / "config.json").read_text()


def test_translate_and_evaluate_match_the_python_api(fitted):
    from seqkit import Translator
    from seqkit.data.sources import read_lines
    from seqkit.decoding import DecodingConfig
    from seqkit.metrics import translation_scores

    model_dir = fitted / "lightning_logs/version_0/model"
    model = Translator.from_pretrained(model_dir)
    src = ["forty-two", "", "nine hundred and one"]
    result = seqkit("translate", "--model", str(model_dir), "--beam", "3", stdin="\n".join(src))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == [*model.translate(src, DecodingConfig(beam_size=3)), ""]

    corpus = fitted / "corpus"
    result = seqkit(
        "evaluate",
        "--model",
        str(model_dir),
        "--src",
        str(corpus / "test.en.gz"),
        "--ref",
        str(corpus / "test.de.gz"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    hyps = model.translate(read_lines(corpus / "test.en.gz"))
    expected = translation_scores(hyps, read_lines(corpus / "test.de.gz"))
    assert json.loads(result.stdout) == pytest.approx(expected)


def test_export_gives_the_same_model(fitted, tmp_path):
    """The recipe averages its last weights (AverageCheckpoints): fit exports those, which
    `averaged.ckpt` holds too."""
    from seqkit import Translator

    checkpoint = fitted / "lightning_logs/version_0/averaged.ckpt"
    main(["export", str(checkpoint), str(tmp_path / "exported")])
    texts = ["seven hundred", "eleven"]
    exported = Translator.from_pretrained(tmp_path / "exported").translate(texts)
    best = Translator.from_pretrained(fitted / "lightning_logs/version_0/model").translate(texts)
    assert exported == best


@pytest.mark.parametrize(
    "args, message",
    [
        (["translate", "--model", "/nowhere"], "/nowhere/config.json: not found"),
        (["export", "/nowhere.ckpt", "out"], "/nowhere.ckpt: no such checkpoint"),
        (["fit", "--config", str(ROOT / "recipes/transformer-multi30k.yaml"),
          "--data.path=/no/such/dir", "--trainer.max_epochs=1"], "/no/such/dir"),
    ],
)  # fmt: skip
def test_bad_input_exits_with_one_clear_message(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert message in str(exit_info.value)


def test_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "export", "translate", "evaluate"):
        assert f"  {command}" in out
    with pytest.raises(SystemExit):
        main(["translate", "--help"])
    assert "--beam" in capsys.readouterr().out


def test_test_and_predict_from_a_checkpoint(fitted, tmp_path, monkeypatch):
    from seqkit import Translator
    from seqkit.data.sources import read_lines

    best = fitted / "lightning_logs/version_0/averaged.ckpt"  # the exported model's weights
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["test", *corpus_args(fitted), f"--ckpt_path={best}"])
    assert 0 <= float(cli.trainer.callback_metrics["test/chrf"]) <= 100
    cli = cli_main(["predict", *corpus_args(fitted), f"--ckpt_path={best}"])
    written = (Path(cli.trainer.log_dir) / "predictions.txt").read_text().splitlines()
    sources = read_lines(fitted / "corpus/test.en.gz")
    model = Translator.from_pretrained(fitted / "lightning_logs/version_0/model")
    assert written == model.translate(sources)  # file order, every sentence once


def test_resuming_continues_the_step_count_and_schedule(fitted):
    from seqkit.callbacks import TokensPerSecond

    last = fitted / "lightning_logs/version_0/checkpoints/last.ckpt"
    state = torch.load(last, weights_only=True)
    first_export = (fitted / "lightning_logs/version_0/model/model.safetensors").read_bytes()
    # `last` is the newest run's last.ckpt (before, Lightning looked in the new run's own
    # empty folder, warned, and trained from step 0).
    cli = cli_main(["fit", *corpus_args(fitted), "--ckpt_path=last", "--trainer.max_epochs=7"])
    trainer = cli.trainer
    # The resumed run exports into its own directory, never into the run it resumed.
    assert Path(trainer.log_dir).name != "version_0"
    assert (Path(trainer.log_dir) / "model" / "model.safetensors").is_file()
    assert (
        fitted / "lightning_logs/version_0/model/model.safetensors"
    ).read_bytes() == first_export
    done = state["epoch"] + 1  # epochs finished when the checkpoint was written
    assert trainer.global_step == state["global_step"] + (7 - done) * trainer.num_training_batches
    # Only the remaining epochs were trained, on the same batches: a restart would train 7.
    counter = next(c for c in trainer.callbacks if isinstance(c, TokensPerSecond))
    rows = cli.datamodule.datasets["train"].select_columns(["src_ids", "tgt_ids"])[:]
    epoch_tokens = sum(map(len, rows["src_ids"])) + sum(map(len, rows["tgt_ids"]))
    assert counter.tokens == (7 - done) * epoch_tokens
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == trainer.global_step  # one schedule, continued


def test_a_setting_refused_while_setting_up_is_one_line_too(tmp_path):
    """Refused in the data module's setup, not at instantiation (a traceback before)."""
    (tmp_path / "train.en").write_text("one\n")
    recipe = str(ROOT / "recipes/transformer-multi30k.yaml")
    result = seqkit("fit", "--config", recipe, f"--data.path={tmp_path}", "--data.held_out=5",
                    f"--trainer.default_root_dir={tmp_path}")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "seqkit fit: held_out=5 needs path= to be one table file"
    )


def test_resuming_from_last_without_a_last_checkpoint_is_one_line(tmp_path):
    recipe = str(ROOT / "recipes/transformer-multi30k.yaml")
    result = seqkit("fit", "--config", recipe, "--data.path=/nowhere", "--ckpt_path=last",
                    f"--trainer.default_root_dir={tmp_path}")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"seqkit fit: --ckpt_path last: no last.ckpt in {tmp_path}/*/version_*/checkpoints/"
        )
    )


@pytest.mark.parametrize(
    "option, message",
    [("--data.max_tokens=100", "max_tokens=100 must be >= max_length=256"),
     ("--data.held_out=-1", "held_out must be >= 0, got -1"),
     # Each of these trained before (lr -1: a traceback from torch's AdamW).
     ("--model.init_args.optimizer.lr=-1", "optimizer.lr must be a number > 0, got -1.0"),
     ("--model.init_args.optimizer.weight_decay=-1",
      "optimizer.weight_decay must be a number >= 0, got -1.0"),
     ("--model.init_args.optimizer.warmup_steps=-5",
      "optimizer.warmup_steps must be an int >= 0, got -5"),
     ("--model.init_args.label_smoothing=1.5", "label_smoothing must be in [0, 1), got 1.5")],
)  # fmt: skip
def test_a_refused_setting_is_one_line_naming_it(option, message):
    recipe = str(ROOT / "recipes/transformer-multi30k.yaml")
    result = seqkit("fit", "--config", recipe, "--data.path=/nowhere", option)
    assert result.returncode == 1 and result.stdout.strip() in ("", "Seed set to 1")
    assert result.stderr.strip().splitlines()[-1] == f"seqkit fit: {message}"
    assert "Traceback" not in result.stderr and "Namespace" not in result.stderr


def test_a_run_that_saves_no_checkpoint_exports_under_its_own_directory(
    fitted, tmp_path, monkeypatch
):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    save_dir = tmp_path / "wandb-runs"
    cli = cli_main(["fit", *corpus_args(fitted), f"--trainer.default_root_dir={tmp_path / 'root'}",
                    "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
                    "--trainer.logger.offline=true", f"--trainer.logger.save_dir={save_dir}",
                    "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
                    "--trainer.limit_test_batches=1"])  # fmt: skip
    import wandb

    wandb.finish()
    assert not cli.trainer.checkpoint_callback.best_model_path  # no checkpoint was saved
    assert not (tmp_path / "cwd" / "model").exists()  # not the current directory
    (config,) = save_dir.glob("**/model/config.json")
    assert cli.trainer.logger.version in config.parts  # the run's own directory


def test_resuming_applies_what_may_change_and_refuses_another_architecture(fitted, tmp_path):
    last = fitted / "lightning_logs/version_0/checkpoints/last.ckpt"
    resume = ["fit", *corpus_args(fitted), f"--ckpt_path={last}"]
    with pytest.raises(SystemExit) as info:
        main([*resume, "--model.init_args.config.d_model=32"])
    assert "the checkpoint's architecture differs: model.config d_model=32 (checkpoint: 64)" in (
        str(info.value)
    )
    cli = cli_main([*resume, "--trainer.max_epochs=7", "--model.init_args.optimizer.lr=0.03",
                    "--model.init_args.decoding.beam_size=1"])  # fmt: skip
    assert cli.model.optim_config.lr == 0.03 and cli.model.decoding.beam_size == 1
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.base_lrs == pytest.approx([0.03] * len(scheduler.base_lrs))  # was 0.003
    recorded = (Path(cli.trainer.log_dir) / "config.yaml").read_text()
    assert "lr: 0.03" in recorded and "beam_size: 1" in recorded
