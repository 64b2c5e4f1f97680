"""Image patches and ImageData: exact patchify inverse, patch order, stratified seeded splits,
IDX files, normalization from the train split, train-only augmentation, clear input errors."""

import gzip
import struct
from pathlib import Path
from types import SimpleNamespace

import datasets
import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED_DATA

from seqkit.data.images import IDX_IMAGES, IDX_LABELS, eight_bit, load_images, read_idx
from seqkit.data.patches import ImageData
from seqkit.data.sources import DataError
from seqkit.models.patches import normalize, patchify, unpatchify


@pytest.fixture(scope="module")
def digits() -> ImageData:
    data = ImageData()
    data.setup()
    return data


def write_idx(path: Path, magic: int, array: np.ndarray) -> Path:
    data = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist(directory: Path, n: int = 30, classes: int = 3, prefix: str = "t10k") -> Path:
    """`n` 4x4 images, pixel value = row index, labels 0, 1, ..., classes-1, 0, 1, ..."""
    directory.mkdir(parents=True, exist_ok=True)
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 4, 4))
    write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", IDX_IMAGES, images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte", IDX_LABELS, np.arange(n) % classes)
    return directory


# --- patches --------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "p"), [((2, 3, 12, 8), 4), ((1, 1, 8, 8), 2), ((2, 1, 6, 6), 6)])
def test_unpatchify_inverts_patchify(shape, p):
    images = torch.randn(shape)
    patches = patchify(images, p)
    assert patches.shape == (shape[0], shape[2] * shape[3] // p**2, shape[1] * p * p)
    assert torch.equal(unpatchify(patches, p, shape[1:]), images)


def test_patches_run_left_to_right_then_top_to_bottom_channel_major():
    c, h, w, p = 2, 6, 9, 3
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    images = torch.stack([1000 * k + 100 * ys + xs for k in range(c)])[None]  # value = (c, y, x)
    patches = patchify(images, p)
    assert patches.shape == (1, (h // p) * (w // p), c * p * p)
    for k in range(patches.shape[1]):
        row, col = divmod(k, w // p)
        block = images[0, :, row * p : (row + 1) * p, col * p : (col + 1) * p]  # (C, p, p)
        assert torch.equal(patches[0, k], block.reshape(-1))


def test_patch_size_must_divide_the_image(digits):
    with pytest.raises(ValueError, match=r"patch_size=3 does not divide the image size 8x8"):
        patchify(torch.zeros(1, 1, 8, 8), 3)
    with pytest.raises(ValueError, match=r"patch_size=3 .* 8x8.* \[1, 2, 4, 8\]"):
        digits.check_patch_size(3)
    digits.check_patch_size(4)
    with pytest.raises(ValueError, match=r"expected \(B, 4, 16\)"):
        unpatchify(torch.zeros(1, 5, 16), 4, (1, 8, 8))


# --- splits ---------------------------------------------------------------------------------


def test_digits_splits_are_stratified_disjoint_and_seeded(digits):
    labels = digits._loaded().labels.numpy()
    splits = {stage: digits.split_indices(stage) for stage in ("train", "val", "test")}
    assert {stage: len(rows) for stage, rows in splits.items()} == {
        "train": 1437,
        "val": 180,
        "test": 180,
    }
    assert len(np.unique(np.concatenate(list(splits.values())))) == len(labels) == 1797
    counts = np.bincount(labels)
    for rows in splits.values():
        expected = counts * len(rows) / len(labels)
        assert np.all(np.abs(np.bincount(labels[rows], minlength=10) - expected) < 1 + 1e-9)
    again, other = ImageData(seed=0), ImageData(seed=1)
    assert all(np.array_equal(again.split_indices(s), rows) for s, rows in splits.items())
    assert not np.array_equal(other.split_indices("val"), splits["val"])
    assert (digits.num_classes, digits.class_names[:2]) == (10, ["0", "1"])
    assert digits.image_shape == (1, 8, 8)


def test_sizes_can_be_counts_and_empty_splits_are_refused(tmp_path):
    data = ImageData(str(write_mnist(tmp_path)), val_size=3, test_size=6)
    assert [len(data.split_indices(s)) for s in ("train", "val", "test")] == [21, 3, 6]
    with pytest.raises(DataError, match="the val split is empty"):
        ImageData(str(tmp_path), val_size=0.01).setup()
    with pytest.raises(ValueError, match="val_size=0"):
        ImageData(val_size=0)


def test_batches_hold_normalized_images_labels_and_source_rows(digits):
    batch = next(iter(digits.val_dataloader()))
    pool = digits._loaded()
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (128, 1, 8, 8)
    assert torch.equal(batch["index"], torch.from_numpy(digits.split_indices("val")[:128]))
    assert torch.equal(batch["label"], pool.labels[batch["index"]])
    assert torch.allclose(batch["image"], digits.normalize(pool.images[batch["index"]]))


def test_normalization_comes_from_the_train_split_only(digits):
    train = digits._loaded().images[digits.split_indices("train")].double() / 255
    assert digits.mean == pytest.approx([train.mean().item()])
    assert digits.std == pytest.approx([train.std(unbiased=False).item()])
    every = torch.cat([batch["image"] for batch in digits.train_dataloader()])
    assert every.mean().item() == pytest.approx(0, abs=1e-5)
    assert every.std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    restored = ImageData()
    restored.load_state_dict({"mean": [0.5], "std": [0.25]})  # a checkpoint's numbers win
    assert (restored.mean, restored.std) == ([0.5], [0.25])
    white = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.equal(normalize(white, [0.5], [0.25]), torch.full((1, 1, 2, 2), 2.0))


def test_ranks_share_out_the_train_split(digits):
    seen = []
    for rank in (0, 1):
        digits.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        try:
            seen.append(torch.cat([b["index"] for b in digits.train_dataloader()]))
        finally:
            digits.trainer = None
    assert len(seen[0]) == len(seen[1]) == 719  # 1437 rows, one repeated to even the ranks
    assert set(torch.cat(seen).tolist()) == set(digits.split_indices("train").tolist())


def test_evaluation_batches_flag_the_rows_repeated_to_even_out_ranks(digits):
    kept, flagged = [], 0
    for rank in range(7):
        digits.trainer = SimpleNamespace(world_size=7, global_rank=rank)
        try:
            for batch in digits.val_dataloader():
                kept += batch["index"][batch["keep"]].tolist()
                flagged += int((~batch["keep"]).sum())
        finally:
            digits.trainer = None
    val = digits.split_indices("val").tolist()
    assert sorted(kept) == sorted(val)  # every image exactly once
    assert flagged == -len(val) % 7 == 2  # 180 rows over 7 ranks: 2 repeated


# --- IDX files --------------------------------------------------------------------------------


def test_idx_files_are_read_gzipped_or_not(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    for name in ("a-images-idx3-ubyte", "b-images-idx3-ubyte.gz"):
        path = write_idx(tmp_path / name, IDX_IMAGES, array)
        assert np.array_equal(read_idx(path, IDX_IMAGES), array)
    data = ImageData(str(write_mnist(tmp_path / "mnist")), val_size=3, test_size=3)
    assert (data.image_shape, data.num_classes, data.class_names) == ((1, 4, 4), 3, ["0", "1", "2"])
    pool = data._loaded()
    assert torch.equal(pool.images[:, 0, 0, 0], torch.arange(30, dtype=torch.uint8))


def test_train_and_t10k_files_keep_their_test_split(tmp_path):
    write_mnist(tmp_path, n=30, prefix="t10k")
    write_mnist(tmp_path, n=60, prefix="train")
    data = ImageData(str(tmp_path), val_size=6)
    assert [len(data.split_indices(s)) for s in ("train", "val", "test")] == [54, 6, 30]
    assert data.split_indices("test").tolist() == list(range(60, 90))


def test_idx_errors_name_the_file(tmp_path):
    directory = write_mnist(tmp_path / "magic")
    write_idx(directory / "t10k-labels-idx1-ubyte", IDX_IMAGES, np.zeros((30, 1, 1)))
    wrong = r"t10k-labels-idx1-ubyte: IDX magic number is 0x00000803, expected 0x00000801"
    with pytest.raises(DataError, match=wrong):
        ImageData(str(directory)).setup()
    directory = write_mnist(tmp_path / "count")
    write_idx(directory / "t10k-labels-idx1-ubyte", IDX_LABELS, np.zeros(29))
    counts = r"t10k-images-idx3-ubyte.gz holds 30 images but t10k-labels-idx1-ubyte holds 29"
    with pytest.raises(DataError, match=counts):
        ImageData(str(directory)).setup()
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx file"):
        ImageData(str(directory)).setup()


def test_labels_out_of_range_and_missing_paths_are_refused(tmp_path):
    directory = write_mnist(tmp_path, classes=3)
    with pytest.raises(DataError, match=r"label 2 of image 2 is out of range \[0, 2\) \(10 such"):
        ImageData(str(directory), num_classes=2).setup()
    with pytest.raises(DataError, match="no_such_dir: no such directory"):
        ImageData("./no_such_dir").setup()


def test_mnist_test_set_splits_8000_1000_1000():
    path = SHARED_DATA / "mnist"
    if not (path / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found at {path}")
    data = ImageData(str(path), val_size=1000, test_size=1000)
    assert [len(data.split_indices(s)) for s in ("train", "val", "test")] == [8000, 1000, 1000]
    assert (data.image_shape, data.num_classes) == ((1, 28, 28), 10)
    assert np.bincount(data._loaded().labels)[[0, 1, 9]].tolist() == [980, 1135, 1009]
    assert (
        ImageData(str(path)).split_indices("test").tolist() == data.split_indices("test").tolist()
    )


# --- Hugging Face datasets and image folders --------------------------------------------------


def test_hub_dataset_columns_and_test_split(monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    labels = datasets.ClassLabel(names=["a", "b"])
    features = datasets.Features({"img": datasets.Image(), "labels": labels})

    def split(n):
        images = [Image.fromarray(np.full((4, 4, 3), i, np.uint8)) for i in range(n)]
        columns = {"img": images, "labels": [i % 2 for i in range(n)]}
        return datasets.Dataset.from_dict(columns, features)

    hub = datasets.DatasetDict({"train": split(20), "test": split(6)})
    monkeypatch.setattr(datasets, "load_dataset", lambda path: hub)
    data = ImageData("someone/tiny", val_size=4)
    assert (data.image_shape, data.class_names) == ((3, 4, 4), ["a", "b"])
    assert [len(data.split_indices(s)) for s in ("train", "val", "test")] == [16, 4, 6]
    with pytest.raises(DataError, match=r"someone/tiny: no column pixels in \['img', 'labels'\]"):
        ImageData("someone/tiny", image_column="pixels").setup()


def test_image_folder_classes_are_subfolders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for label, value in (("cat", 10), ("dog", 200)):
        (tmp_path / label).mkdir()
        for i in range(4):
            Image.fromarray(np.full((6, 6), value + i, np.uint8)).save(
                tmp_path / label / f"{i}.png"
            )
    data = ImageData(str(tmp_path), val_size=2, test_size=2)
    assert (data.image_shape, data.class_names) == ((1, 6, 6), ["cat", "dog"])
    assert ImageData(str(tmp_path), val_size=2, test_size=2, image_size=4).image_shape == (1, 4, 4)
    Image.fromarray(np.zeros((20, 10), np.uint8)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(DataError, match=r"dog/odd\.png is \(20, 10\) pixels"):
        ImageData(str(tmp_path), val_size=2, test_size=2).setup()


# --- augmentation -----------------------------------------------------------------------------


def test_shifts_only_train_batches_and_fixed_by_seed_and_epoch(digits):
    batch = next(iter(digits.train_dataloader()))
    digits.augment = True
    try:
        digits.trainer = SimpleNamespace(training=False, current_epoch=0)
        assert digits.on_after_batch_transfer(batch, 0) is batch  # validation, test, predict
        digits.trainer = SimpleNamespace(training=True, current_epoch=0)
        shifted = digits.on_after_batch_transfer(batch, 0)
        again = digits.on_after_batch_transfer(batch, 0)["image"]
        digits.trainer.current_epoch = 1
        later = digits.on_after_batch_transfer(batch, 0)["image"]
    finally:
        digits.augment, digits.trainer = False, None
    assert not torch.equal(shifted["image"], batch["image"])
    assert torch.equal(shifted["image"], again) and not torch.equal(shifted["image"], later)
    assert torch.equal(shifted["label"], batch["label"])
    # The same image gets the same shift whatever batch it is in.
    part = digits.shift({key: value[5:9] for key, value in batch.items()}, epoch=0)
    assert torch.equal(part["image"], shifted["image"][5:9])


def test_a_shift_moves_pixels_and_fills_background(digits):
    pool = digits._loaded()
    index = torch.arange(40)
    batch = {"image": digits.normalize(pool.images[index]), "index": index}
    moved = digits.shift(batch, epoch=3)["image"]
    dy, dx = (digits._offsets[1][index] - 1).T  # offsets in [0, 2] are shifts in [-1, 1]
    for i in range(40):
        padded = torch.nn.functional.pad(pool.images[i, 0], (1, 1, 1, 1))  # background is 0
        expected = padded[1 + dy[i] : 9 + dy[i], 1 + dx[i] : 9 + dx[i]]
        assert torch.allclose(moved[i, 0], digits.normalize(expected[None, None])[0, 0])


class Recorder(L.LightningModule):
    """Checks what a Trainer hands the steps: shifted images in training only."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(64, 10)
        self.shifted: list[bool] = []

    def _raw(self, batch):
        return self.trainer.datamodule.normalize(
            self.trainer.datamodule._loaded().images[batch["index"]]
        )

    def training_step(self, batch, batch_idx):
        self.shifted.append(not torch.equal(batch["image"], self._raw(batch)))
        return F.cross_entropy(self.layer(batch["image"].flatten(1)), batch["label"])

    def validation_step(self, batch, batch_idx):
        assert torch.equal(batch["image"], self._raw(batch))

    def predict_step(self, batch, batch_idx):
        assert torch.equal(batch["image"], self._raw(batch))
        return batch["index"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_trainer_shifts_training_batches_only(tmp_path):
    data = ImageData(augment=True, batch_size=64)
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, limit_predict_batches=2,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    assert model.shifted == [True] * 4
    predicted = torch.cat(trainer.predict(model, datamodule=data))
    assert predicted.tolist() == data.split_indices("test")[:128].tolist()


# --- images to predict on ---------------------------------------------------------------------


def test_load_images_from_arrays_and_files(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    images = load_images([tmp_path / "gray.png", str(tmp_path / "rgb.png"), gray], channels=1)
    assert images.dtype == torch.uint8 and images.shape == (3, 1, 8, 8)
    assert all(torch.equal(image[0], torch.from_numpy(gray)) for image in images)
    assert load_images(gray[:, :, None] / 255.0).dtype == torch.float32  # (H, W, C) floats
    batch = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    assert load_images(batch, size=(4, 4)).shape == (5, 3, 4, 4)
    with pytest.raises(DataError, match=r"float pixels in \[0.0, 15.75\]"):
        load_images(gray / 4.0)
    with pytest.raises(DataError, match=r"image 1 is \(1, 4, 4\)"):
        load_images([gray, gray[:4, :4]])
    with pytest.raises(DataError, match=r"missing\.png: cannot read"):
        load_images(tmp_path / "missing.png")


def test_sixteen_bit_gray_images_are_scaled_not_clipped(tmp_path):
    """Pillow's convert("L") clips 16-bit values at 255 (the image read white, silently)."""
    Image = pytest.importorskip("PIL.Image")
    gray = np.arange(0, 256, 4, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(gray).save(tmp_path / "8.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "16.png")  # 0..65535
    Image.fromarray(gray.astype(np.int32), mode="I").save(tmp_path / "32.tif")  # 8-bit values
    eight, sixteen, thirty_two = load_images([tmp_path / f for f in ("8.png", "16.png", "32.tif")])
    assert torch.equal(sixteen, eight) and torch.equal(thirty_two, eight)
    with Image.open(tmp_path / "16.png") as image:  # datasets of Pillow images read alike
        assert image.mode.startswith("I") and eight_bit(image, "16.png").tobytes() == gray.tobytes()
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(tmp_path / "big.tif")
    with pytest.raises(DataError, match=r"big\.tif: gray values in \[70000, 70000\]"):
        load_images(tmp_path / "big.tif")


def test_arrays_of_unsigned_or_empty_images_are_refused_by_name():
    # Before: torch's "min_all not implemented for 'UInt16'" and an interpolation error.
    with pytest.raises(DataError, match=r"integer pixels in \[1000, 1000\], expected 0\.\.255"):
        load_images(np.full((8, 8), 1000, np.uint16))
    assert load_images(np.full((8, 8), 200, np.uint16)).dtype == torch.uint8
    with pytest.raises(DataError, match=r"an array of shape \(1, 0, 0\)"):
        load_images(np.zeros((0, 0), np.uint8), size=(8, 8))
