"""Contract tests for the ViT and the recurrent image readers, and the Classifier module."""

import itertools

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from seqkit.cli import main
from seqkit.labeler import Labeler
from seqkit.lit.classifier import Classifier, format_confusion, wandb_confusion
from seqkit.lit.optim import OptimizerConfig
from seqkit.models.patches import patchify
from seqkit.models.vit import ReaderConfig, RecurrentReader, ViT, ViTConfig

SIZES = dict(image_size=(8, 12), channels=2, num_classes=5)
VIT = dict(d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, patch_size=4)
VARIANTS = [
    *(pytest.param(ViTConfig, VIT | {"pool": pool}, id=f"vit-{pool}") for pool in ("cls", "mean")),
    *(
        pytest.param(ReaderConfig, {"cell": cell, "by": by, "hidden_size": 12}, id=f"{cell}-{by}")
        for cell, by in itertools.product(("rnn", "gru", "lstm"), ("row", "patch"))
    ),
    pytest.param(ReaderConfig, {"cell": "lstm", "n_layers": 2, "bidirectional": True,
                                "hidden_size": 12, "dropout": 0.1}, id="lstm-2-bidirectional"),
]  # fmt: skip


def tiny(config_cls, sizes=SIZES, **overrides):
    torch.manual_seed(0)
    config = config_cls(**(sizes | overrides))
    return (ViT if config_cls is ViTConfig else RecurrentReader)(config).eval()


def images(n=3, sizes=SIZES):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, sizes["channels"], *sizes["image_size"], generator=g)


@pytest.mark.parametrize(("config_cls", "overrides"), VARIANTS)
def test_shapes_finite_and_gradient_reaches_every_parameter(config_cls, overrides):
    net = tiny(config_cls, **overrides).train()
    logits = net(images())
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 3, 4])).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize(("patch_size", "n_patches"), [(8, 1), (1, 64)], ids=["one", "pixels"])
def test_vit_reads_one_patch_or_every_pixel(pool, patch_size, n_patches):
    sizes = dict(image_size=(8, 8), channels=1, num_classes=3)
    net = tiny(ViTConfig, sizes, **(VIT | {"patch_size": patch_size, "pool": pool}))
    x = images(2, sizes)
    assert net.encode(x).shape == (2, n_patches + (pool == "cls"), 16)
    logits = net(x)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_positions_make_the_vit_see_where_patches_are(pool):
    net = tiny(ViTConfig, **(VIT | {"pool": pool}))
    x = images()
    swapped = x.clone()  # swap the first two 4×4 patches of the first patch row
    swapped[..., :4, :4], swapped[..., :4, 4:8] = x[..., :4, 4:8], x[..., :4, :4]
    assert not torch.allclose(net(x), net(swapped), atol=1e-4)
    with torch.no_grad():  # without positions, attention cannot tell the orders apart
        net.pos_embed.zero_()
    torch.testing.assert_close(net(x), net(swapped), atol=1e-5, rtol=1e-5)


def test_reader_reads_rows_top_down_and_patches_row_major():
    x = images()
    rows = tiny(ReaderConfig, by="row").sequence(x)
    assert rows.shape == (3, 8, 2 * 12)
    torch.testing.assert_close(rows[:, 5], torch.cat([x[:, 0, 5], x[:, 1, 5]], dim=1))
    patches = tiny(ReaderConfig, by="patch", patch_size=4).sequence(x)
    torch.testing.assert_close(patches, patchify(x, 4))
    assert patches.shape == (3, 6, 2 * 4 * 4)


@pytest.mark.parametrize(
    ("config_cls", "overrides"),
    [(ViTConfig, VIT | {"n_layers": 1}), (ReaderConfig, {"cell": "gru", "hidden_size": 32})],
    ids=["vit", "gru-row"],
)
def test_tiny_model_overfits_16_images(config_cls, overrides):
    sizes = dict(image_size=(8, 8), channels=1, num_classes=4)
    net = tiny(config_cls, sizes, **overrides).train()
    x, y = images(16, sizes), torch.arange(16) % 4
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(300):
        logits = net(x)
        if (logits.argmax(-1) == y).all():
            break
        optimizer.zero_grad()
        F.cross_entropy(logits, y).backward()
        optimizer.step()
    assert (net(x).argmax(-1) == y).all()


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=4"):
        ViTConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide image_size=\(28, 28\)"):
        ViTConfig(image_size=(28, 28), patch_size=5)
    with pytest.raises(ValueError, match="patch_size=3 does not divide"):
        ReaderConfig(image_size=(28, 28), by="patch", patch_size=3)
    ReaderConfig(image_size=(28, 28), by="row", patch_size=3)  # rows ignore the patch size
    with pytest.raises(ValueError, match="needs image_size, channels and num_classes > 0"):
        ViT(ViTConfig())
    with pytest.raises(ValueError, match=r"images: expected \(B, 2, 8, 12\), got \(3, 2, 12, 8\)"):
        tiny(ViTConfig, **VIT)(images().transpose(2, 3))
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean', got 'max'"):
        ViTConfig(pool="max")
    with pytest.raises(ValueError, match="by must be 'row' or 'patch'"):
        ReaderConfig(by="column")
    assert ViTConfig(image_size=[8, 8]) == ViTConfig(image_size=(8, 8))  # as JSON gives it


def test_confusion_matrix_as_text_and_wandb_chart():
    matrix = torch.tensor([[3, 0], [1, 12]])
    text = format_confusion(matrix, ["cat", "dog"])
    assert text.splitlines() == ["    | cat dog", "cat |   3   0", "dog |   1  12"]
    rows = wandb_confusion(matrix, ["cat", "dog"]).table.data  # W&B's own chart, from counts
    assert rows == [["cat", "cat", 3], ["cat", "dog", 0], ["dog", "cat", 1], ["dog", "dog", 12]]


def classifier(**overrides) -> Classifier:
    torch.manual_seed(0)
    sizes = dict(image_size=(8, 8), channels=1, num_classes=3)
    model = Classifier(config=ViTConfig(**(sizes | VIT | overrides)))
    model.class_names, model.mean, model.std = ["a", "b", "c"], [0.5], [0.25]
    return model.eval()


@pytest.mark.parametrize("config", [VIT, {"cell": "lstm", "by": "patch", "hidden_size": 12}])
def test_save_pretrained_then_from_pretrained_gives_identical_logits(tmp_path, config):
    torch.manual_seed(0)
    sizes = dict(image_size=(8, 8), channels=1, num_classes=3)
    cls = ViTConfig if "d_model" in config else ReaderConfig
    model = Classifier(config=cls(**(sizes | config))).eval()
    model.class_names, model.mean, model.std = ["a", "b", "c"], [0.5], [0.25]
    loaded = Labeler.from_pretrained(model.labeler.save_pretrained(tmp_path / "model"))
    assert loaded.config == model.config and not loaded.net.training
    assert (loaded.class_names, loaded.mean, loaded.std) == (["a", "b", "c"], [0.5], [0.25])
    x = images(4, sizes)
    torch.testing.assert_close(loaded.net(x), model.net(x), atol=0, rtol=0)
    assert set(loaded.predict(x.clamp(0, 1))) <= {"a", "b", "c"}


def test_predict_normalizes_arrays_and_files_with_the_stored_statistics(tmp_path, capsys):
    from PIL import Image

    model = classifier()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    expected = (torch.from_numpy(pixels) / 255.0 - 0.5) / 0.25
    labeler = model.labeler
    labels = labeler.predict(pixels)
    assert labels == [["a", "b", "c"][i] for i in model.net(expected).argmax(-1)]
    assert labeler.predict(torch.from_numpy(pixels / 255.0)) == labels  # floats in [0, 1]
    assert labeler.predict(list(pixels[:, 0, :, :, None])) == labels  # (H, W, C) images
    paths = []
    for i, image in enumerate(pixels[:, 0]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    assert labeler.predict(paths) == labels
    directory = labeler.save_pretrained(tmp_path / "model")
    assert "pipeline_tag: image-classification" in (directory / "README.md").read_text()
    main(["predict", "--model", str(directory), *map(str, paths)])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{path}\t{label}" for path, label in zip(paths, labels, strict=True)]
    with pytest.raises(ValueError, match="no network yet"):
        Classifier().labeler.predict(pixels)


class FakeImageData(L.LightningDataModule):
    """The interface of seqkit's image data modules, over 12 random 8×8 images."""

    image_shape, num_classes, class_names = (1, 8, 8), 3, ["a", "b", "c"]
    mean, std = [0.5], [0.25]

    def normalize(self, x):
        return (x - 0.5) / 0.25

    def loader(self):
        g = torch.Generator().manual_seed(0)
        rows = [{"image": self.normalize(torch.rand(1, 8, 8, generator=g)), "label": i % 3,
                 "index": i} for i in range(12)]  # fmt: skip
        return DataLoader(rows, batch_size=4)

    train_dataloader = val_dataloader = test_dataloader = loader


def test_fit_fills_sizes_from_data_and_checkpoint_restores_predict(tmp_path, capsys):
    model = Classifier(config=ViTConfig(**VIT), optimizer=OptimizerConfig(warmup_steps=1))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)  # fmt: skip
    data = FakeImageData()
    trainer.fit(model, data)
    assert model.config.image_size == (8, 8) and model.config.num_classes == 3
    assert {"train/loss_epoch", "val/accuracy", "train/images_per_sec"} <= set(
        trainer.callback_metrics
    )
    trainer.test(model, data, verbose=False)
    assert 0 <= trainer.callback_metrics["test/accuracy"] <= 1
    assert "test confusion matrix" in capsys.readouterr().out
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = Classifier.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert (loaded.class_names, loaded.mean, loaded.std) == (["a", "b", "c"], [0.5], [0.25])
    pixels = np.random.default_rng(0).random((5, 1, 8, 8))
    assert loaded.labeler.predict(pixels) == model.labeler.predict(pixels)
    with pytest.raises(ValueError, match=r"model\.config\.num_classes=4 but the data has 3"):
        L.Trainer(max_steps=1, logger=False).fit(
            Classifier(config=ViTConfig(num_classes=4, **VIT)), data
        )
