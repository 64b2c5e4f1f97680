"""W&B and other logging: a tiny run is read back from wandb's offline files; the samples and
attention callbacks write what they promise; `cross_attention` gives proper weights."""

import csv
import importlib.util
import json
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from seqkit import NumberWordsData, OptimizerConfig, RNNConfig, Seq2Seq, TransformerConfig
from seqkit.callbacks import (
    AttentionMaps,
    TokensPerSecond,
    TranslationSamples,
    render_attention,
)
from seqkit.models import build_model
from seqkit.tokens import PAD

TINY = TransformerConfig(
    d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ff=64, dropout=0.0,
    share_embeddings=True,
)  # fmt: skip
N_SAMPLES, N_MAPS, EPOCHS = 3, 2, 2
HAS_PIL = importlib.util.find_spec("PIL") is not None


def fit(tmp: Path, logger) -> tuple[Seq2Seq, NumberWordsData]:
    """Two short epochs, each ending in a validation, so per-epoch logs come twice."""
    L.seed_everything(0)
    data = NumberWordsData(n_train=120, n_val=10, n_test=2, high=999, vocab_size=300,
                           max_tokens=512, cache_dir=str(tmp / "cache"))  # fmt: skip
    model = Seq2Seq(TINY, OptimizerConfig(lr=3e-3, warmup_steps=2))
    callbacks = [TranslationSamples(n=N_SAMPLES), AttentionMaps(n=N_MAPS), TokensPerSecond()]
    trainer = L.Trainer(max_epochs=EPOCHS, limit_train_batches=3, log_every_n_steps=1,
                        num_sanity_val_steps=1, logger=logger, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp)  # fmt: skip
    trainer.fit(model, data)
    return model, data


# -- reading an offline W&B run back ----------------------------------------------------------
def wandb_records(path: Path):
    """The protobuf `Record`s of a `run-*.wandb` file: after a 7-byte header, a LevelDB-style
    log of 32 KiB blocks; each record is cut into chunks of (crc32, length, type) + data."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path}: not a W&B transaction log"
    pos, parts = 7, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"{path}: bad checksum at byte {pos}"
        parts.append(chunk)
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE.../LAST
            record = Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def _items_to_dict(items) -> dict:
    out: dict = {}
    for item in items:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = json.loads(item.value_json)
    return out


def read_offline_run(save_dir: Path) -> dict:
    """History rows and config of the one offline run under `save_dir`."""
    (run_dir,) = (save_dir / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    history, config = [], {}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(_items_to_dict(record.history.item))
        elif kind == "run":
            config |= _items_to_dict(record.run.config.update)
        elif kind == "config":
            config |= _items_to_dict(record.config.update)
    return {"dir": run_dir, "history": history, "config": config}


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory):
    import wandb

    tmp = tmp_path_factory.mktemp("wandb")
    try:
        logger = WandbLogger(project="seqkit-tests", save_dir=str(tmp), offline=True)
        fit(tmp, logger)
    finally:
        wandb.finish()  # no run leaks into other tests
        wandb.teardown()  # finish() can return before wandb-core has written everything
    return read_offline_run(tmp)


def logged(run: dict, key: str) -> list:
    return [row[key] for row in run["history"] if key in row]


def test_wandb_history_has_training_and_validation_metrics(wandb_run):
    assert len(logged(wandb_run, "train/loss")) >= 3
    assert all(rate > 0 for rate in logged(wandb_run, "train/tokens_per_sec"))
    assert len(logged(wandb_run, "train/tokens_per_sec")) >= 3
    assert len(logged(wandb_run, "val/bleu")) == EPOCHS


def test_wandb_config_holds_the_model_hyperparameters(wandb_run):
    config = wandb_run["config"]["config"]
    assert isinstance(config, dict), f"the model config reached W&B as {config!r:.50}..."
    assert config["d_model"] == TINY.d_model
    assert config["n_decoder_layers"] == TINY.n_decoder_layers
    assert config["src_vocab_size"] > 0  # filled in from the data before logging


def test_wandb_samples_table_has_the_same_sentences_every_epoch(wandb_run):
    tables = logged(wandb_run, "val/samples")
    assert len(tables) == EPOCHS  # after each validation, none for the sanity check
    sources = []
    for meta in tables:
        assert meta["_type"] == "table-file"
        assert (meta["ncols"], meta["nrows"]) == (5, N_SAMPLES)
        table = json.loads((wandb_run["dir"] / "files" / meta["path"]).read_text())
        assert table["columns"] == list(TranslationSamples.COLUMNS)
        assert len(table["data"]) == N_SAMPLES
        sources.append([row[2] for row in table["data"]])
    assert sources[0] == sources[1] and all(sources[0])


@pytest.mark.skipif(not HAS_PIL, reason="wandb.Image needs pillow")
def test_wandb_attention_images_are_logged(wandb_run):
    images = logged(wandb_run, "val/attention")
    assert len(images) == EPOCHS
    meta = images[-1]
    assert meta["_type"] == "images/separated" and meta["count"] == N_MAPS
    assert len(meta["captions"]) == N_MAPS and "→" in meta["captions"][0]
    for name in meta["filenames"]:
        assert (wandb_run["dir"] / "files" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- other loggers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csv")
    logger = CSVLogger(str(tmp), name="run")
    model, data = fit(tmp, logger)
    return model, data, Path(logger.log_dir)


def test_csv_logger_gets_samples_tsv_and_attention_pngs(csv_run):
    _, data, log_dir = csv_run
    with (log_dir / "samples.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert tuple(rows[0]) == TranslationSamples.COLUMNS
    assert len(rows) == 1 + EPOCHS * N_SAMPLES
    assert {row[0] for row in rows[1:]} == {str(epoch) for epoch in range(EPOCHS)}
    by_index = {}
    for batch in data.val_dataloader():
        by_index |= dict(zip(batch["index"].tolist(), batch["src_text"], strict=True))
    first = [by_index[i] for i in sorted(by_index)[:N_SAMPLES]]
    assert [row[2] for row in rows[1:]] == first * EPOCHS  # the lowest indices, every epoch
    pngs = sorted((log_dir / "attention").glob("*.png"))
    assert len(pngs) == EPOCHS * N_MAPS
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


class _StubTensorBoard(TensorBoardLogger):
    """A TensorBoardLogger whose SummaryWriter records calls. Its parent's `__init__` needs the
    tensorboard package; the callbacks only use `experiment`."""

    def __init__(self) -> None:
        self.recorder = _Recorder()

    @property
    def experiment(self):
        return self.recorder


def test_tensorboard_gets_a_markdown_table_and_images(csv_run):
    model, data, _ = csv_run
    batch = next(iter(data.val_dataloader()))
    logger = _StubTensorBoard()
    trainer = SimpleNamespace(loggers=[logger], current_epoch=1, global_step=6)
    src = batch["src"][:2]
    args = (trainer, model.eval(), src, src != PAD, batch["src_text"][:2], batch["tgt_text"][:2])
    TranslationSamples().log_samples(*args)
    AttentionMaps().log_samples(*args)
    (text, *images) = logger.recorder.calls
    assert text[0] == "add_text" and text[1][0] == "val/samples" and text[1][2] == 6
    lines = text[1][1].splitlines()
    assert lines[0] == "| source | reference | hypothesis |" and len(lines) == 2 + 2
    assert [call[1][0] for call in images] == ["val/attention/0", "val/attention/1"]
    for _, (_, image, step), kwargs in images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert step == 6 and kwargs == {"dataformats": "HWC"}


def test_callbacks_do_nothing_without_a_logger(tmp_path):
    fit(tmp_path, logger=False)


# -- rendering --------------------------------------------------------------------------------
def test_render_attention_gives_an_rgb_image():
    weights = np.full((3, 4), 0.25)
    image = render_attention(weights, ["a", "b", "c", "</s>"], ["x", "y", "</s>"])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] >= 3 and image.shape[1] >= 4


# -- cross_attention ---------------------------------------------------------------------------
SRC = torch.tensor([[5, 6, 7, 8, 2], [9, 10, 2, PAD, PAD]])  # the second one padded
TGT = torch.tensor([[1, 11, 12, 13], [1, 14, 15, 16]])
TRANSFORMER = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2,
                                n_encoder_layers=1, n_decoder_layers=2, d_ff=32)  # fmt: skip


def rnn(attention: str, **options) -> RNNConfig:
    return RNNConfig(src_vocab_size=20, tgt_vocab_size=20, attention=attention, embed_dim=8,
                     hidden_size=12, **options)  # fmt: skip


CONFIGS = {
    "transformer": TRANSFORMER,
    "rnn-bahdanau": rnn("bahdanau"),
    "rnn-luong": rnn("luong", cell="lstm"),
    "rnn-luong-input-feeding": rnn("luong", input_feeding=True, bidirectional=False),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_cross_attention_is_a_distribution_over_real_source_tokens(config):
    torch.manual_seed(0)
    net = build_model(config).eval()
    with torch.no_grad():
        weights = net.cross_attention(SRC, SRC != PAD, TGT)
        alone = net.cross_attention(SRC[1:, :3], SRC[1:, :3] != PAD, TGT[1:])
    assert weights.shape == (2, 4, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    assert (weights[1, :, 3:] == 0).all()
    torch.testing.assert_close(weights[1, :, :3], alone[0])  # padding changes nothing


def test_transformer_cross_attention_matches_what_sdpa_computes(monkeypatch):
    """SDPA over identity values returns its own weights: compare with the recomputed ones."""
    torch.manual_seed(0)
    net = build_model(TRANSFORMER).eval()
    src_mask = SRC != PAD
    with torch.no_grad():
        weights = net.cross_attention(SRC, src_mask, TGT)
    attn = net.decoder[-1].cross_attn
    seen = []

    def spy(x, kv, mask=None, is_causal=False):
        q = attn.split_heads(attn.q(x))
        eye = torch.eye(kv[0].shape[2]).expand(*kv[0].shape[:2], -1, -1)  # (B, H, S, S)
        seen.append(F.scaled_dot_product_attention(q, kv[0], eye, attn_mask=mask))
        return type(attn).attend(attn, x, kv, mask, is_causal)

    monkeypatch.setattr(attn, "attend", spy)
    with torch.no_grad():
        net(SRC, TGT)
    torch.testing.assert_close(weights, seen[0].mean(1))


def test_rnn_without_attention_says_so():
    net = build_model(rnn("none")).eval()
    with pytest.raises(ValueError, match="attention='none'"):
        net.cross_attention(SRC, SRC != PAD, TGT)


def test_the_wandb_flag_logs_the_resolved_recipe_and_samples(tmp_path):
    import wandb

    from seqkit.lit.cli import cli_main

    recipe = Path(__file__).resolve().parents[1] / "recipes/transformer-numbers.yaml"
    try:
        cli_main([
            "fit", "--config", str(recipe), "--wandb", "seqkit-cli-test",
            "--model.init_args.config.d_model=32", "--model.init_args.config.n_heads=2",
            "--model.init_args.config.n_encoder_layers=1", "--model.init_args.config.d_ff=64",
            "--model.init_args.config.n_decoder_layers=1", "--data.init_args.n_train=120",
            "--data.init_args.n_val=10", "--data.init_args.n_test=4",
            "--data.init_args.vocab_size=300", "--data.init_args.high=999",
            f"--data.init_args.cache_dir={tmp_path / 'cache'}", "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        ])  # fmt: skip
    finally:
        wandb.finish()
        wandb.teardown()
    run = read_offline_run(tmp_path)
    assert run["config"]["recipe"]["trainer"]["max_epochs"] == 1  # the resolved CLI config
    assert run["config"]["recipe"]["wandb"] == "seqkit-cli-test"
    assert run["config"]["config"]["d_model"] == 32
    assert logged(run, "val/samples") and logged(run, "val/bleu")
    assert (tmp_path / "lightning_logs/version_0/metrics.csv").is_file()  # CSV logs stay
