"""Checkpoint averaging: exact means, safe loading, export parity, picking by step, clear errors;
and AverageCheckpoints, which averages the last weights at the end of `seqkit fit`."""

import json
import os
import shutil
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, timer

from seqkit import NumberWordsData, OptimizerConfig, Seq2Seq, TransformerConfig, Translator
from seqkit.average import average_checkpoints, average_into, last_checkpoints, main
from seqkit.callbacks import AverageCheckpoints
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import DecodingConfig
from seqkit.lit.cli import cli_main, load_checkpoint, pretrained

TINY = TransformerConfig(
    d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0
)
TEXTS = ["forty-two", "seven hundred and one", "nine"]


class Recorder(L.Callback):
    """A copy of the model's weights after every optimizer step, by global step."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = pl_module.state_dict()
        self.states[trainer.global_step] = {k: v.detach().clone() for k, v in state.items()}


def make_trainer(callbacks: list[L.Callback], root, **options) -> L.Trainer:
    return L.Trainer(limit_val_batches=0, logger=False, callbacks=callbacks,
                     default_root_dir=root, enable_progress_bar=False,
                     enable_model_summary=False, **options)  # fmt: skip


def new_model() -> Seq2Seq:
    return Seq2Seq(TINY, OptimizerConfig(lr=1e-2, warmup_steps=1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """Six training steps of a tiny Transformer, a checkpoint every two (+ last.ckpt), and
    AverageCheckpoints(last=3) copying the weights every two steps."""
    tmp = tmp_path_factory.mktemp("average")
    L.seed_everything(0)
    data = NumberWordsData(n_train=200, n_val=10, n_test=10, high=999, vocab_size=280,
                           max_tokens=256, cache_dir=str(tmp / "cache"))  # fmt: skip
    every_two = ModelCheckpoint(
        dirpath=tmp / "checkpoints", every_n_train_steps=2, save_top_k=-1, save_last=True
    )
    averaging, recorder = AverageCheckpoints(last=3, every_n_train_steps=2), Recorder()
    model = new_model()
    make_trainer([every_two, averaging, recorder], tmp, max_steps=6).fit(model, data)
    paths = {torch.load(p, weights_only=True)["global_step"]: p
             for p in sorted((tmp / "checkpoints").glob("epoch=*.ckpt"))}  # fmt: skip
    assert sorted(paths) == [2, 4, 6] and (tmp / "checkpoints/last.ckpt").is_file()
    return SimpleNamespace(data=data, paths=paths, model=model, averaging=averaging,
                           states=recorder.states, root=tmp)  # fmt: skip


@pytest.fixture(scope="module")
def run(trained):
    return trained.data, trained.paths


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
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    for argv, message in [
        # Before: PyTorch's "mmap can only be used with files saved with torch.save(...)".
        (
            [str(tmp_path / "notes.txt"), "--out", "x"],
            "notes.txt: not a PyTorch checkpoint (the .ckpt files seqkit fit writes are zip",
        ),
        ([folder, "--out", "x"], "a directory needs --last N"),
        (["--last", "2", folder, folder, "--out", "x"], "--last N takes one directory"),
        (["--last", "9", folder, "--out", "x"], "found 3 checkpoint(s)"),
        ([str(paths[2]), "--out", str(paths[2])], "would overwrite"),
        ([str(tmp_path / "none.ckpt"), "--out", "x"], "none.ckpt: no such checkpoint file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert message in str(exit_info.value) + capsys.readouterr().err, argv


# -- AverageCheckpoints: averaging at the end of fitting -------------------------------------


def mean_of(states: dict[int, dict], steps: list[int], model: torch.nn.Module) -> dict:
    """The state dict expected after averaging `steps`: parameters are their exact mean in
    float64, cast back; anything else (buffers) is the final step's."""
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    final = states[max(states)]
    return {
        key: (sum(states[s][key].double() for s in steps) / len(steps)).to(value.dtype)
        if key in params
        else value
        for key, value in final.items()
    }


def assert_state_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key
        assert actual[key].dtype == value.dtype, key


def test_fit_ends_with_the_exact_mean_of_the_last_copies(trained):
    model, states = trained.model, trained.states
    assert trained.averaging.averaged_from == [2, 4, 6]  # step 6 is final and a copy: once
    assert any(not torch.equal(states[2][k], states[6][k]) for k in states[6]), "weights moved"
    expected = mean_of(states, [2, 4, 6], model)
    assert_state_equal(model.state_dict(), expected)
    # The file holds the same weights, as `seqkit average` of the checkpoints at those steps.
    written = torch.load(trained.root / "averaged.ckpt", weights_only=True)
    assert trained.averaging.path == trained.root / "averaged.ckpt"
    assert_state_equal(written["state_dict"], expected)
    files = average_checkpoints([trained.paths[step] for step in (2, 4, 6)])["state_dict"]
    assert_state_equal(written["state_dict"], files)
    assert not {"optimizer_states", "lr_schedulers", "callbacks"} & written.keys()
    assert written["provenance"]["averaged_from"] == [{"global_step": s} for s in (2, 4, 6)]
    # last.ckpt keeps the trained weights and the copies, to resume from.
    last = torch.load(trained.root / "checkpoints/last.ckpt", weights_only=True)
    assert_state_equal(last["state_dict"], states[6])
    assert "optimizer_states" in last


def test_the_averaged_checkpoint_and_export_reproduce_the_averaged_model(trained, tmp_path):
    data, model = trained.data, trained.model
    loaded = load_checkpoint(trained.root / "averaged.ckpt")
    assert torch.equal(outputs(loaded, data), outputs(model, data))
    pretrained(model).save_pretrained(tmp_path / "model")
    exported = Translator.from_pretrained(tmp_path / "model")
    assert torch.equal(outputs(exported, data), outputs(model, data))
    assert exported.translate(TEXTS) == loaded.translator.translate(TEXTS)
    config = json.loads((tmp_path / "model/config.json").read_text())
    assert [s["global_step"] for s in config["provenance"]["averaged_from"]] == [2, 4, 6]
    # `seqkit average --last N RUN_DIR` never takes the run's average for a checkpoint.
    picked = last_checkpoints(trained.root, 3)
    assert picked == [trained.paths[step] for step in (2, 4, 6)]


def test_resuming_keeps_the_weight_copies_and_the_final_step_counts(trained, tmp_path):
    saved = torch.load(trained.paths[4], weights_only=True)["callbacks"]["AverageCheckpoints"]
    assert [copy["global_step"] for copy in saved["snapshots"]] == [2, 4]
    averaging, recorder = AverageCheckpoints(last=4, every_n_train_steps=2), Recorder()
    model = new_model()
    trainer = make_trainer([averaging, recorder], tmp_path, max_steps=7)
    trainer.fit(model, trained.data, ckpt_path=trained.paths[4], weights_only=True)
    assert sorted(recorder.states) == [5, 6, 7]  # three steps trained, after the restored four
    # Two copies restored, one taken at step 6, and the final weights (7 is not a copy step).
    assert averaging.averaged_from == [2, 4, 6, 7]
    states = {2: trained.states[2], 4: trained.states[4], **recorder.states}
    assert_state_equal(model.state_dict(), mean_of(states, [2, 4, 6, 7], model))


class ClockPassesAnHourAt(L.Callback):
    """Moves the Timer's clock (which `max_time` reads) an hour on at one global step."""

    def __init__(self, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.step, self.now = step, 0.0
        monkeypatch.setattr(timer, "time", SimpleNamespace(monotonic=lambda: self.now))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.now = 3600.0


def test_a_max_time_stop_averages_the_final_weights_too(trained, tmp_path, monkeypatch):
    averaging, recorder = AverageCheckpoints(last=2, every_n_train_steps=2, filename=""), Recorder()
    clock = ClockPassesAnHourAt(5, monkeypatch)  # runs before the Timer, which is added last
    model = new_model()
    trainer = make_trainer([averaging, recorder, clock], tmp_path, max_steps=100,
                           max_time={"minutes": 1}, enable_checkpointing=False)  # fmt: skip
    trainer.fit(model, trained.data)
    assert trainer.global_step == 5, "max_time stopped training after step 5"
    assert averaging.averaged_from == [4, 5]  # the last copy, and the final weights
    assert_state_equal(model.state_dict(), mean_of(recorder.states, [4, 5], model))
    assert averaging.path is None and not list(tmp_path.glob("**/*.ckpt"))  # filename=""


def test_parameters_are_averaged_and_buffers_kept():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    copies = [{k: torch.full_like(p, i) for k, p in net.named_parameters()} for i in (1, 2, 6)]
    net(torch.randn(4, 2))  # running statistics and the batch counter move
    buffers = {k: v.clone() for k, v in net.named_buffers()}
    average_into(net, copies)
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in net.parameters())
    assert_state_equal(dict(net.named_buffers()), buffers)
    with pytest.raises(ValueError, match=r"parameter '0.bias' is only in the model"):
        average_into(net, [{k: v for k, v in copies[0].items() if k != "0.bias"}])
    with pytest.raises(ValueError, match="last must be at least 1, got 0"):
        AverageCheckpoints(last=0)


RECIPE = """
seed_everything: 0
trainer:
  max_steps: 6
  val_check_interval: 6
  num_sanity_val_steps: 0
  limit_test_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {save_dir: ROOT}
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/loss, mode: min}
    - class_path: seqkit.callbacks.AverageCheckpoints
      init_args: {last: 2, every_n_train_steps: 2}
model:
  class_path: seqkit.Seq2Seq
  init_args:
    config: {d_model: 32, n_heads: 2, n_encoder_layers: 1, n_decoder_layers: 1, d_ff: 64,
             dropout: 0.0}
    optimizer: {lr: 0.01, warmup_steps: 1}
    decoding: {beam_size: 2}
data:
  class_path: seqkit.data.NumberWordsData
  init_args: {n_train: 200, n_val: 10, n_test: 10, high: 999, vocab_size: 280, max_tokens: 256,
              cache_dir: CACHE}
"""


def test_seqkit_fit_validates_tests_and_exports_the_averaged_weights(
    trained, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    recipe = RECIPE.replace("ROOT", str(tmp_path)).replace("CACHE", str(trained.root / "cache"))
    (tmp_path / "recipe.yaml").write_text(recipe)
    cli = cli_main(["fit", "--config", str(tmp_path / "recipe.yaml")])
    run_dir = tmp_path / "lightning_logs/version_0"
    assert cli.trainer.checkpoint_callback.best_model_path  # there is a best checkpoint ...
    averaged = load_checkpoint(run_dir / "averaged.ckpt")  # ... but the average is the model
    tested = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    data = cli.datamodule
    exported = Translator.from_pretrained(run_dir / "model")
    assert torch.equal(outputs(exported, data), outputs(averaged, data))
    config = json.loads((run_dir / "model/config.json").read_text())
    assert config["provenance"]["metrics"]["test/loss"] == round(tested["test/loss"], 4)
    trainer = make_trainer([], tmp_path / "check", limit_test_batches=1)
    (again,) = trainer.test(averaged, data, verbose=False)
    assert again["test/loss"] == pytest.approx(tested["test/loss"], rel=1e-6)
    best = load_checkpoint(cli.trainer.checkpoint_callback.best_model_path)
    (of_best,) = trainer.test(best, data, verbose=False)
    assert of_best["test/loss"] != pytest.approx(tested["test/loss"], rel=1e-4)
    # The averaged weights' val score is logged beside the trained weights' val curve.
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [dict(zip(header, row.split(","), strict=True)) for row in rows[1:]]
    (row,) = [r for r in logged if r.get("averaged/val/loss")]
    assert int(row["step"]) == 6 and not row.get("val/loss")
