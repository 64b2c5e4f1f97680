"""Images as a seq2seq source: digit strips match their numbers, patches come in reading order,
padding never changes what any seq2seq model computes, a tiny model learns to read, and
`predict` reads arrays and files the way training did."""

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from test_patches import write_mnist
from test_wandb import wandb_records

from seqkit import DigitStripData, RNNConfig, Seq2Seq, TransformerConfig, Translator, callbacks
from seqkit.callbacks import AttentionMaps, TranslationSamples
from seqkit.cli import main
from seqkit.data.strips import number_words
from seqkit.decoding import DecodingConfig, beam_search, greedy
from seqkit.errors import DataError
from seqkit.lit.optim import OptimizerConfig
from seqkit.models import build_model
from seqkit.models.patches import ImageSource, image_sequence, patchify, unpatchify
from seqkit.tokens import BOS, EOS

IMAGE = dict(tgt_vocab_size=12)  # the source: DigitStripData's image_source
MODELS = [
    pytest.param(TransformerConfig(d_model=16, n_heads=2, n_encoder_layers=2, n_decoder_layers=2,
                                   d_ff=32, dropout=0.0, **IMAGE), id="transformer"),
    pytest.param(RNNConfig(cell="rnn", attention="none", embed_dim=8, hidden_size=12,
                           dropout=0.0, **IMAGE), id="rnn"),
    pytest.param(RNNConfig(cell="gru", attention="bahdanau", embed_dim=8, hidden_size=12,
                           dropout=0.0, **IMAGE), id="gru-bahdanau"),
    pytest.param(RNNConfig(cell="lstm", attention="luong", input_feeding=True, embed_dim=8,
                           hidden_size=12, n_layers=2, dropout=0.0, **IMAGE), id="lstm-luong"),
]  # fmt: skip


@pytest.fixture(scope="module")
def data() -> DigitStripData:
    strips = DigitStripData(n_train=64, n_val=16, n_test=16, patch_size=4, seed=3)
    strips.setup()
    return strips


def batch_of(data: DigitStripData, stage: str, indices: list[int]) -> dict:
    """A batch as the model gets it (cut into patches after the transfer)."""
    return data.on_after_batch_transfer(data._datasets[stage][indices], 0)


def test_every_strip_shows_the_digits_of_its_number_in_words(data):
    pool = data.pool
    for stage in ("train", "val", "test"):
        rows, numbers = data.strips_of(stage)
        for row, number in zip(rows, numbers, strict=True):
            digits = [r for r in row if r >= 0]
            assert 2 <= len(digits) <= 4 and all(r < 0 for r in row[len(digits) :])
            assert "".join(str(int(pool.labels[r])) for r in digits) == str(number)
    rows, numbers = data.strips_of("test")
    image = data.strip_images("test", [0])[0]
    k = int((rows[0] >= 0).sum())
    assert image.shape == (1, 8, 8 * k)
    assert torch.equal(image[:, :, 8:16], pool.images[rows[0][1]])  # second digit, second cell
    batch = batch_of(data, "test", [0, 1, 2])
    assert batch["tgt_text"] == [number_words(n) for n in numbers[:3]]
    assert data.tokenizers.decode_target(batch["tgt_out"].tolist()) == batch["tgt_text"]
    assert (batch["tgt_in"][:, 0] == BOS).all() and (batch["tgt_out"] == EOS).any(1).all()


def test_splits_draw_on_disjoint_images_and_are_fixed_by_seed(data):
    stages = ("train", "val", "test")
    used = {s: set(data.strips_of(s)[0].flatten().tolist()) - {-1} for s in stages}
    assert not used["train"] & used["test"] and not used["train"] & used["val"]
    again = DigitStripData(n_train=64, n_val=16, n_test=16, patch_size=4, seed=3)
    assert np.array_equal(again.strips_of("train")[0], data.strips_of("train")[0])
    other = DigitStripData(n_train=64, n_val=16, n_test=16, patch_size=4, seed=4)
    assert not np.array_equal(other.strips_of("train")[0], data.strips_of("train")[0])


def test_image_sequence_reads_columns_left_to_right_and_masks_what_is_past_each_width():
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(8), indexing="ij")
    images = (10 * ys + xs).float()[None, None].repeat(2, 1, 1, 1)  # value = 10 * y + x
    patches, mask = image_sequence(images, torch.tensor([8, 4]), patch_size=2)
    assert patches.shape == (2, 8, 4)
    # Column-major: patch n covers x = 2 * (n // 2), y = 2 * (n % 2).
    assert patches[0, :, 0].tolist() == [0, 20, 2, 22, 4, 24, 6, 26]
    assert mask.tolist() == [[True] * 8, [True] * 4 + [False] * 4]
    assert torch.equal(unpatchify(patches, 2, (1, 4, 8), order="columns"), images)
    # A narrower image gives the first patches of a wider one: positions mean the same place.
    narrow, _ = image_sequence(images[:, :, :, :4], None, 2)
    assert torch.equal(narrow, patches[:, :4])
    with pytest.raises(ValueError, match="multiples of patch_size=2"):
        image_sequence(images, torch.tensor([8, 3]), 2)


def test_batches_hold_each_strip_as_its_own_patches(data):
    batch = batch_of(data, "test", [0, 1, 2, 3])
    rows = data.strips_of("test")[0][:4]
    for i in range(4):
        strip = data.strip_images("test", [i])[0][None]  # (1, C, H, k*W) uint8
        expected = patchify(strip.float(), 4, "columns")[0]
        n = expected.shape[0]
        assert batch["src_mask"][i].sum() == n == 4 * int((rows[i] >= 0).sum())
        normalized = (expected / 255 - data.mean[0]) / data.std[0]
        torch.testing.assert_close(batch["src"][i, :n], normalized)


def test_augmentation_moves_digits_of_training_strips_only_and_is_seeded(data):
    plain = data._datasets["train"][[0, 1]]
    index = plain["index"]
    moved = data.shift(plain["image"], index, epoch=0)
    assert moved.shape == plain["image"].shape and not torch.equal(moved, plain["image"])
    assert torch.equal(moved, data.shift(plain["image"], index, epoch=0))
    assert not torch.equal(moved, data.shift(plain["image"], index, epoch=1))
    # Nothing crosses from one digit's cell into the next: cells move one by one.
    one = data.shift(plain["image"][:, :, :, :8].contiguous(), index, epoch=0)
    torch.testing.assert_close(one, moved[:, :, :, :8])


@pytest.mark.parametrize("config", MODELS)
def test_padding_never_changes_what_a_model_reads(config, data):
    torch.manual_seed(0)
    net = build_model(config, data.image_source).eval()
    batch = batch_of(data, "test", list(range(16)))
    counts = batch["src_mask"].sum(1)
    short, long = int(counts.argmin()), int(counts.argmax())
    assert counts[short] < counts[long]
    src, mask = batch["src"][[short, long]], batch["src_mask"][[short, long]]
    tgt = torch.randint(4, 12, (2, 5))
    alone = net(src[:1, : counts[short]], tgt[:1])
    together = net(src, tgt, mask)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-4)
    decoded = greedy(net, src, mask, max_len=6)
    assert decoded[0] == greedy(net, src[:1, : counts[short]], mask[:1, : counts[short]],
                                max_len=6)[0]  # fmt: skip
    beams = beam_search(net, src, mask, beam_size=1, max_len=6)
    assert [b[0].tokens for b in beams] == decoded


def test_a_tiny_model_learns_to_read_eight_strips(data):
    torch.manual_seed(0)
    batch = batch_of(data, "train", list(range(8)))
    config = RNNConfig(cell="gru", attention="bahdanau", embed_dim=32, hidden_size=64,
                       dropout=0.0, tgt_vocab_size=data.tokenizers.tgt_vocab_size)  # fmt: skip
    net = build_model(config, data.image_source)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        logits = net(batch["src"], batch["tgt_in"], batch["src_mask"])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    ids = greedy(net, batch["src"], batch["src_mask"], max_len=20)
    assert data.tokenizers.decode_target(ids) == batch["tgt_text"]


def test_fit_then_predict_on_arrays_and_files_survives_save_and_load(data, tmp_path, capsys):
    from PIL import Image

    config = TransformerConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                               d_ff=32)  # fmt: skip
    model = Seq2Seq(config, optimizer=OptimizerConfig(warmup_steps=1))
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    assert model.image_source == ImageSource(4, 1, 8, data.mean, data.std)
    assert model.config.src_vocab_size == 0
    strips = data.strip_images("test", [0, 1, 2])
    batch = batch_of(data, "test", [0, 1, 2])
    translator, beam2 = model.translator, DecodingConfig(beam_size=2)
    expected = [t.text for t in translator.generate(batch["src"], batch["src_mask"], beam2)]
    assert translator.read(strips, beam2) == expected  # uint8 tensors of any width
    assert translator.read([s.numpy()[0] / 255.0 for s in strips], beam2) == expected
    paths = []
    for i, strip in enumerate(strips):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(strip[0].numpy()).save(paths[-1])
    assert translator.read(paths, beam2) == expected
    directory = translator.save_pretrained(tmp_path / "model")
    assert "pipeline_tag: image-to-text" in (directory / "README.md").read_text()
    loaded = Translator.from_pretrained(directory)
    assert loaded.read(paths, beam2) == expected
    main(["predict", "--model", str(directory), "--beam", "2", *map(str, paths)])
    printed = capsys.readouterr().out.splitlines()[-3:]
    assert printed == [f"{path}\t{text}" for path, text in zip(paths, expected, strict=True)]
    with pytest.raises(ValueError, match="reads images, not text"):
        loaded.translate(["forty-two"])


def test_bad_strip_settings_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="patch_size=3 does not divide"):
        DigitStripData(patch_size=3).setup()
    with pytest.raises(ValueError, match="min_digits <= max_digits"):
        DigitStripData(min_digits=4, max_digits=2)
    three_classes = write_mnist(tmp_path / "mnist", n=60, classes=3)
    with pytest.raises(DataError, match="digits 0-9"):
        DigitStripData(path=str(three_classes)).setup()
    with pytest.raises(ValueError, match="image source"):
        build_model(RNNConfig(tgt_vocab_size=10))


def fit_with_samples(data: DigitStripData, tmp_path, logger) -> Seq2Seq:
    """Two training steps and one validation, logging samples and attention maps."""
    L.seed_everything(0)
    config = TransformerConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                               d_ff=32)  # fmt: skip
    model = Seq2Seq(config, optimizer=OptimizerConfig(warmup_steps=1))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, num_sanity_val_steps=0,
                        logger=logger, callbacks=[TranslationSamples(n=3), AttentionMaps(n=2)],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    return model


def test_samples_show_the_strips_read_and_attention_runs_over_their_columns(
    data, tmp_path, monkeypatch
):
    from PIL import Image

    grids = []
    draw = callbacks.render_attention
    monkeypatch.setattr(callbacks, "render_attention", lambda g, *a: grids.append(g) or draw(g, *a))
    logger = CSVLogger(str(tmp_path), name="run")
    model = fit_with_samples(data, tmp_path, logger)
    log_dir = Path(logger.log_dir)
    with (log_dir / "samples.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    _, numbers = data.strips_of("val")
    strips = data.strip_images("val", [0, 1, 2])  # the lowest indices
    assert [row[3] for row in rows] == [number_words(n) for n in numbers[:3]]
    for row, strip in zip(rows, strips, strict=True):
        shown = np.asarray(Image.open(log_dir / row[2]))  # samples/epoch=0-step=2-i.png
        assert shown.shape == (*strip.shape[1:], 3)
        assert (shown == strip[0].numpy()[..., None]).all()  # the pixels the model read
    assert [row[4] for row in rows] == model.translator.read(strips, DecodingConfig(beam_size=1))
    assert len(list((log_dir / "attention").glob("*.png"))) == len(grids) == 2
    for grid, strip in zip(grids, strips[:2], strict=True):  # AttentionMaps(n=2)
        assert grid.shape[1] == strip.shape[2] // data.patch_size  # one column per patch column
        np.testing.assert_allclose(grid.sum(1), 1.0, atol=1e-5)  # each output token's attention


def test_wandb_samples_table_holds_the_strip_images(data, tmp_path):
    import wandb
    from PIL import Image

    try:
        logger = WandbLogger(project="seqkit-tests", save_dir=str(tmp_path), offline=True)
        fit_with_samples(data, tmp_path, logger)
    finally:
        wandb.finish()
        wandb.teardown()
    # A table with images goes to W&B as an artifact: its JSON and the PNGs it names,
    # staged on disk until `wandb sync` uploads them.
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    (files,) = [
        {entry.path: Path(entry.local_path) for entry in record.artifact.manifest.contents}
        for record in wandb_records(log)
        if record.WhichOneof("record_type") == "artifact" and "valsamples" in record.artifact.name
    ]
    table = json.loads(files["val/samples.table.json"].read_text())
    assert table["columns"] == list(TranslationSamples.COLUMNS)
    _, numbers = data.strips_of("val")
    assert [row[3] for row in table["data"]] == [number_words(n) for n in numbers[:3]]
    strips = data.strip_images("val", [0, 1, 2])
    for row, strip in zip(table["data"], strips, strict=True):
        assert row[2]["_type"] == "image-file"
        shown = np.asarray(Image.open(files[row[2]["path"]]))
        assert (shown == strip[0].numpy()[..., None]).all()
