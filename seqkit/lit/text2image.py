"""TextToImage: trains a text-to-image Transformer on `TextToImageData` (cross-entropy over
the codebook tokens of the image, teacher-forced); inference and model directories belong to
`ImageGenerator`. `ImageSamples` shows what it draws at every validation."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric

from seqkit.codebook import PatchCodebook
from seqkit.data.text2image import TextToImageInputs
from seqkit.data.tokenizer import Tokenizers
from seqkit.image_generator import ImageGenerator, image_grid, prompt_words, save_png
from seqkit.lit.loss import check_label_smoothing, label_smoothed_nll
from seqkit.lit.nonfinite import NonFiniteGuard
from seqkit.lit.optim import OptimizerConfig, as_config, configure_adamw
from seqkit.lit.pairing import PairsWithData
from seqkit.models import ModelConfig, build_model, config_from_dict, config_to_dict
from seqkit.models.text2image import OFFSET, TextToImageConfig
from seqkit.sampling import SamplingConfig


class TextToImage(PairsWithData):
    """Text to image with label-smoothed cross-entropy over image tokens, AdamW and warm-up;
    validation and test report the loss and perplexity per image token and the share of
    image tokens predicted right (teacher-forced, greedy per token).

    Args:
        config: the network; vocabulary sizes left at 0 come from the data module (the
            prompt tokenizer's, the codebook's + 4 special tokens).
        optimizer: AdamW and its learning-rate schedule.
        sampling: how the exported model draws by default (`seqkit generate` flags override).
        label_smoothing: mass spread uniformly over the vocabulary (Szegedy et al., 2016).
        nonfinite_patience: a training step whose loss is NaN or infinite is skipped and
            counted; this many in a row stop training with an error.
    """

    def __init__(
        self,
        config: TextToImageConfig = TextToImageConfig(),  # noqa: B008 (frozen)
        optimizer: OptimizerConfig = OptimizerConfig(),
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008 (frozen)
        label_smoothing: float = 0.0,
        nonfinite_patience: int = 10,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            union = ModelConfig | TextToImageConfig
            config = config_from_dict(config, union=union, kind="transformer-text2image")
        self.config = config
        self.optim_config = as_config(OptimizerConfig, optimizer)
        self.sampling = as_config(SamplingConfig, sampling)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.guard = NonFiniteGuard(nonfinite_patience)
        self.save_hyperparameters()
        self._update_hparams()
        self.inputs: TextToImageInputs | None = None
        self.provenance: dict = {}
        self.net = build_model(config) if config.src_vocab_size and config.tgt_vocab_size else None
        self.eval_loss, self.eval_nll, self.eval_acc = MeanMetric(), MeanMetric(), MeanMetric()

    def _update_hparams(self) -> None:
        self._set_hparams({
            "config": config_to_dict(self.config),
            "optimizer": asdict(self.optim_config),
            "sampling": asdict(self.sampling),
            "label_smoothing": self.label_smoothing,
            "nonfinite_patience": self.guard.patience,
        })  # fmt: skip

    @property
    def generator(self) -> ImageGenerator:
        """This module's network, tokenizer and codebook, ready to draw."""
        if self.net is None or self.inputs is None:
            raise ValueError("this model has no network or codebook yet: fit it first")
        i = self.inputs
        return ImageGenerator(self.net, i.tokenizers, i.codebook, i.words, i.max_cells,
                              self.sampling, self.provenance)  # fmt: skip

    # -- pairing with the data ------------------------------------------------------------
    def use_inputs(self, inputs: TextToImageInputs) -> None:
        """Take the tokenizer, codebook and prompt words a data module hands over.

        Raises:
            ValueError: when they contradict this model (another tokenizer or codebook,
                images longer than its positions).
        """
        old = self.inputs
        if old is not None and old.tokenizers.fingerprint() != inputs.tokenizers.fingerprint():
            raise ValueError("the data module's prompt tokenizer is not this model's")
        if old is not None and not torch.equal(old.codebook.centroids, inputs.codebook.centroids):
            raise ValueError("the data module's codebook is not this model's: keep data.seed, "
                             "data.patch_size and data.codebook_size as they were")  # fmt: skip
        if inputs.max_length > self.config.max_positions:
            raise ValueError(f"images of up to {inputs.max_length} tokens exceed "
                             f"model.config.max_positions={self.config.max_positions}: lower "
                             "data.max_digits or raise model.config.max_positions")  # fmt: skip
        self.inputs = inputs

    def configure_model(self) -> None:
        """Build the network once the data says how large the vocabularies are."""
        if self.inputs is not None:
            sizes = {"src_vocab_size": self.inputs.tokenizers.src_vocab_size,
                     "tgt_vocab_size": self.inputs.codebook.num_codes + OFFSET}  # fmt: skip
            for key, size in sizes.items():
                if getattr(self.config, key) not in (0, size):
                    raise ValueError(
                        f"model.config.{key}={getattr(self.config, key)} but the data makes "
                        f"{size}; set it to 0 to follow the data"
                    )
            self.config = replace(self.config, **sizes)
            self._update_hparams()
        if self.net is None and self.config.src_vocab_size and self.config.tgt_vocab_size:
            self.net = build_model(self.config)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.inputs is not None:
            i = self.inputs
            checkpoint["text2image"] = {
                "tokenizers": i.tokenizers.to_dict(), "words": list(i.words),
                "max_cells": i.max_cells, "centroids": i.codebook.centroids,
                "codebook": i.codebook.to_dict(),
            }  # fmt: skip
        self._save_provenance(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if saved := checkpoint.get("text2image"):
            book = saved["codebook"]
            codebook = PatchCodebook(saved["centroids"], book["patch_size"],
                                     tuple(book["image_size"]), book["channels"])  # fmt: skip
            tokenizers = Tokenizers.from_dict(saved["tokenizers"])
            inputs = TextToImageInputs(tokenizers, codebook, tuple(saved["words"]),
                                       saved["max_cells"])  # fmt: skip
            self.inputs = None
            self.use_inputs(inputs)
        self._finish_loading(checkpoint)

    # -- training and evaluation ------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        return configure_adamw(self.net, self.optim_config, self.trainer.estimated_stepping_batches)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        return self._step(batch, "test")

    def _step(self, batch: dict, stage: str) -> Tensor | None:
        if stage != "train" and batch.get("repeat"):
            return None  # a copy that only evens out ranks: count every pair once
        logits = self.net(batch["src"], batch["tgt_in"], batch["src_mask"])  # (B, T, V)
        loss, nll, n_tokens = label_smoothed_nll(logits, batch["tgt_out"], self.label_smoothing)
        if stage == "train":
            if not self.guard.usable(self, loss):
                return None
            self.log("train/loss", loss, batch_size=n_tokens, prog_bar=True)
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n_tokens)
            return loss
        target = batch["tgt_out"]
        right = (logits.argmax(-1) == target)[target != 0].float().mean()
        self.eval_loss.update(loss.detach(), n_tokens)
        self.eval_nll.update(nll, n_tokens)
        self.eval_acc.update(right, n_tokens)
        return loss

    def _log_scores(self, stage: str) -> None:
        self.log(f"{stage}/loss", self.eval_loss.compute(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/ppl", self.eval_nll.compute().exp(), sync_dist=True)
        self.log(f"{stage}/token_accuracy", self.eval_acc.compute(), sync_dist=True)
        for metric in (self.eval_loss, self.eval_nll, self.eval_acc):
            metric.reset()


class ImageSamples(L.Callback):
    """After every validation, draws `num_samples` images for each of `prompts` with the
    model's sampling settings and a fixed `seed`, and logs them as one grid (a row per
    prompt): a `wandb.Image` under `val/samples` for W&B (needs pillow), `add_image` for
    TensorBoard, and a PNG file in `samples/` under the log directory of any other logger
    that has one (CSVLogger). Rank 0 only; the sanity check is skipped.

    Args:
        prompts: what to draw.
        num_samples: images per prompt.
        seed: sampling seed, the same every validation (so the grids show training progress).
        scale: each pixel of the PNG is a `scale`² square.
    """

    KEY = "val/samples"

    def __init__(
        self,
        prompts: tuple[str, ...] = (
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
        ),
        num_samples: int = 8,
        seed: int = 0,
        scale: int = 4,
    ) -> None:
        if not prompts or num_samples < 1 or scale < 1:
            raise ValueError(f"ImageSamples needs prompts, num_samples >= 1 and scale >= 1, "
                             f"got {prompts}, {num_samples}, {scale}")  # fmt: skip
        self.prompts, self.num_samples = list(prompts), num_samples
        self.seed, self.scale = seed, scale

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: TextToImage) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not trainer.loggers:
            return
        generator = pl_module.generator
        known = set(generator.words)
        prompts = [p for p in self.prompts if p.strip() and set(prompt_words(p)) <= known]
        if not prompts:
            rank_zero_warn(f"ImageSamples: the model knows none of the words of {self.prompts}")
            return
        sampling = replace(generator.sampling, num_samples=self.num_samples, seed=self.seed)
        images = [image for row in generator.generate(prompts, sampling) for image in row]
        grid = image_grid(images, self.num_samples)
        epoch, step = trainer.current_epoch, trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                caption = f"rows: {', '.join(prompts)}"
                logger.log_image(self.KEY, [grid], step=step, caption=[caption])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(self.KEY, grid, step, dataformats=_formats(grid))
            elif getattr(logger, "log_dir", None):
                name = f"samples/epoch={epoch}-step={step}.png"
                save_png(grid, Path(logger.log_dir) / name, self.scale)


def _formats(grid) -> str:
    return "HW" if grid.ndim == 2 else "HWC"
