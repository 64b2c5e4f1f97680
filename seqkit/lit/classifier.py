"""Classifier: trains, scores and runs any seqkit image classifier (ViT, recurrent reader)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, replace

import lightning as L
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from seqkit.labeler import Labeler
from seqkit.lit.loss import check_label_smoothing
from seqkit.lit.nonfinite import NonFiniteGuard
from seqkit.lit.optim import (
    OptimizerConfig,
    as_config,
    configure_adamw,
    rescale_learning_rate,
)
from seqkit.lit.precision import warn_if_slow_bf16
from seqkit.models import (
    ImageModelConfig,
    ReaderConfig,
    ViTConfig,
    build_model,
    config_from_dict,
)

STAGES = ("train", "val", "test")


def _sizes_known(config: ImageModelConfig) -> bool:
    return bool(min(config.image_size) and config.channels and config.num_classes)


def format_confusion(matrix: Tensor, names: Sequence[str]) -> str:
    """A text grid: one row per true class, one column per predicted class."""
    width = max(max(len(n) for n in names), len(str(int(matrix.max()))))
    lines = [" " * width + " | " + " ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, matrix.tolist(), strict=True):
        lines.append(f"{name:>{width}} | " + " ".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


class Classifier(L.LightningModule):
    """Image classification with cross-entropy and AdamW: loss and accuracy every epoch,
    a confusion matrix at test; `labeler` labels arrays or image files and saves the model.

    Args:
        config: the model (ViTConfig or ReaderConfig); image size, channels and classes left
            at 0 come from the data module.
        optimizer: AdamW and its learning-rate schedule.
        label_smoothing: mass spread uniformly over the classes (Szegedy et al., 2016).
        nonfinite_patience: a training step whose loss is NaN or infinite is skipped and
            counted; this many in a row stop training with an error.
    """

    def __init__(
        self,
        config: ViTConfig | ReaderConfig = ViTConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        label_smoothing: float = 0.0,
        nonfinite_patience: int = 10,
    ) -> None:
        super().__init__()
        self.config = (
            config_from_dict(config, union=ImageModelConfig) if isinstance(config, dict) else config
        )
        self.optim_config = as_config(OptimizerConfig, optimizer)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.guard = NonFiniteGuard(nonfinite_patience)
        self.save_hyperparameters()  # keeps the CLI's class path, for `--ckpt_path`
        self._update_hparams()
        # What `predict` needs besides the weights; kept in checkpoints and config.json.
        self.class_names: list[str] | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.provenance: dict = {}
        self.net: nn.Module | None = None
        self._build_net()
        self._window_images, self._window_start = 0, 0.0

    def _update_hparams(self) -> None:
        self.hparams.update(self._plain_hparams())
        # Loggers (W&B, TensorBoard) record this snapshot: fields, not a dataclass repr.
        self._hparams_initial = copy.deepcopy(self._hparams)

    def _plain_hparams(self) -> dict:
        """Plain data only, so checkpoints load with `torch.load(weights_only=True)`."""
        return {
            "config": asdict(self.config),
            "optimizer": asdict(self.optim_config),
            "label_smoothing": self.label_smoothing,
            "nonfinite_patience": self.guard.patience,
        }

    def _build_net(self) -> None:
        if self.net is not None or not _sizes_known(self.config):
            return
        self.net = build_model(self.config)
        n = self.config.num_classes
        # Epoch metrics, summed over ranks by torchmetrics; "train" is taken by nn.Module.
        self.metrics = nn.ModuleDict()
        for stage in STAGES:
            self.metrics[f"{stage}_loss"] = MeanMetric()
            self.metrics[f"{stage}_accuracy"] = MulticlassAccuracy(n, average="micro")
        self.confusion = MulticlassConfusionMatrix(n)

    # -- pairing with the data ----------------------------------------------------------
    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if getattr(data, "image_shape", None) is not None:
            self._follow_data(data)

    def _follow_data(self, data) -> None:
        """Take sizes, class names and normalization from an image data module."""
        c, h, w = data.image_shape
        sizes = {"image_size": (h, w), "channels": c, "num_classes": data.num_classes}
        for key, size in sizes.items():
            value = getattr(self.config, key)
            if value not in (0, (0, 0), size):
                raise ValueError(f"model.config.{key}={value} but the data has {size}; "
                                 "set it to 0 to follow the data")  # fmt: skip
        try:
            self.config = replace(self.config, **sizes)
        except ValueError as err:
            raise ValueError(f"model.config: {err}") from None
        self._update_hparams()
        names = list(data.class_names) if data.class_names is not None else None
        if self.class_names is not None and names is not None and names != self.class_names:
            raise ValueError(f"the data's classes {names} are not the ones this model was "
                             f"trained on, {self.class_names}")  # fmt: skip
        self.class_names = names or self.class_names
        self.mean, self.std = list(data.mean), list(data.std)

    def configure_model(self) -> None:
        """Build the network once the data says how large the images are."""
        if not _sizes_known(self.config):
            raise ValueError("image size, channels and classes unknown: give them in "
                             "model.config or fit with an image data module")  # fmt: skip
        self._build_net()

    def on_fit_start(self) -> None:
        warn_if_slow_bf16(self.trainer.precision, self.device)
        data = getattr(self.trainer, "datamodule", None)
        if data is not None:
            plain = (str, int, float, bool, type(None))
            info = {k: v for k, v in data.hparams.items() if isinstance(v, plain)}
            self.provenance["data"] = {"class": type(data).__name__, **info}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["image_data"] = {"class_names": self.class_names, "mean": self.mean,
                                    "std": self.std}  # fmt: skip
        checkpoint["provenance"] = {**self.provenance, "steps": self.trainer.global_step}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = checkpoint.get("image_data", {})
        self.class_names = stored.get("class_names") or self.class_names
        if stored.get("mean") is not None:
            self.mean, self.std = stored["mean"], stored["std"]
        self.provenance = dict(checkpoint.get("provenance", {}))
        rescale_learning_rate(checkpoint, self.optim_config.lr)  # resuming with another lr

    # -- training and evaluation ----------------------------------------------------------
    def configure_optimizers(self) -> dict:
        return configure_adamw(self.net, self.optim_config, self.trainer.estimated_stepping_batches)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        return self._step(batch, "test")

    def _step(self, batch: dict, stage: str) -> Tensor | None:
        images, labels = batch["image"], batch["label"]
        keep = batch.get("keep")
        if stage != "train" and keep is not None and not keep.all():
            # Rows repeated only to even out ranks: count every image once.
            images, labels = images[keep], labels[keep]
            if not len(labels):
                return None
        logits = self.net(images)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        if stage == "train" and not self.guard.usable(self, loss):
            return None  # Lightning skips this step's backward and optimizer step
        mean_loss, accuracy = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_accuracy"]
        mean_loss(loss.detach(), labels.numel())
        accuracy(logits.detach(), labels)
        # Metric objects: Lightning logs their compute(), which torchmetrics syncs over ranks
        # at epoch end (sync_dist is for plain tensors). Train also logs per-step values.
        train = stage == "train"
        self.log(f"{stage}/loss", mean_loss, on_step=train, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/accuracy", accuracy, on_step=train, on_epoch=True, prog_bar=True)
        if train:
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        elif stage == "test":
            self.confusion.update(logits.argmax(-1), labels)
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if not self._window_start:
            self._window_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        self._window_images += batch["label"].numel()
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            now = time.perf_counter()
            rate = self._window_images / max(now - self._window_start, 1e-9)
            self.log("train/images_per_sec", rate * self.trainer.world_size)
            self._window_images, self._window_start = 0, now

    def on_test_epoch_end(self) -> None:
        matrix = self.confusion.compute().cpu()  # summed over ranks: every rank must call it
        self.confusion.reset()
        if not self.trainer.is_global_zero:
            return
        names = self.class_names or [str(i) for i in range(self.config.num_classes)]
        if len(names) <= 30:  # larger grids are unreadable as text: see the logger's plot
            print("test confusion matrix (rows: true class, columns: predicted)")
            print(format_confusion(matrix, names))
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                chart = wandb_confusion(matrix, names)
                step = self.trainer.global_step
                logger.experiment.log({"test/confusion_matrix": chart, "trainer/global_step": step})

    # -- prediction -----------------------------------------------------------------------
    @property
    def labeler(self) -> Labeler:
        """This module's network, class names and pixel statistics, ready to label images and
        to be saved (`save_pretrained`)."""
        if self.net is None:
            raise ValueError("this model has no network yet: fit it, or load one with "
                             "Labeler.from_pretrained or load_from_checkpoint")  # fmt: skip
        return Labeler(self.net, self.class_names, self.mean, self.std, self.provenance)

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[int, int | str]]:
        """(row index, label) pairs; labels are class names when the model knows them."""
        labels = self.net(batch["image"]).argmax(-1).tolist()
        return list(zip(batch["index"].tolist(), self.labeler.named(labels), strict=True))


def wandb_confusion(matrix: Tensor, names: Sequence[str]):
    """W&B's confusion-matrix chart, built from the counts (wandb.plot.confusion_matrix wants
    every prediction)."""
    import wandb

    rows = [[names[i], names[j], count] for i, row in enumerate(matrix.tolist())
            for j, count in enumerate(row)]  # fmt: skip
    table = wandb.Table(columns=["Actual", "Predicted", "nPredictions"], data=rows)
    fields = {"Actual": "Actual", "Predicted": "Predicted", "nPredictions": "nPredictions"}
    return wandb.plot_table("wandb/confusion_matrix/v1", table, fields,
                            {"title": "test confusion matrix"})  # fmt: skip
