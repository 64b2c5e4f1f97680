"""Labeler: a trained image classifier ready to use, outside Lightning (the image-classification
counterpart of `Translator`). Importing it never loads Lightning, `datasets` or scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seqkit.models import ImageModelConfig
from seqkit.models.patches import normalize
from seqkit.pretrained import load_network, read_directory, save_directory


@dataclass
class Labeler:
    """An image classifier with what `predict` needs besides the weights.

    Args:
        net: a seqkit image classifier (ViT or recurrent reader).
        class_names: the name of each class, or None to return class indices.
        mean: the training pixels' mean per channel (0..1), or None for no standardization.
        std: the training pixels' standard deviation per channel.
        provenance: where the weights came from (data, recipe, steps, metrics), for the card.
    """

    net: nn.Module
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ImageModelConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> Labeler:
        self.net.to(device)
        return self

    @torch.inference_mode()
    def predict(self, images: Any, batch_size: int = 256) -> list[int] | list[str]:
        """Labels (class names when known) of images given as `load_images` reads them: file
        paths, arrays or tensors (H, W), (C, H, W), (H, W, C), or one (B, C, H, W) batch;
        integer pixels 0..255, float pixels 0..1. They are resized and converted to the
        model's size and channels, and standardized with the training data's statistics.

        Raises:
            DataError: for an image that cannot be read.
        """
        from seqkit.data.images import load_images

        c = self.config.channels
        x = load_images(images, size=self.config.image_size, channels=c)  # (B, C, H, W)
        x = normalize(x, self.mean or [0.0] * c, self.std or [1.0] * c)
        was_training = self.net.training
        self.net.eval()
        try:
            logits = [self.net(part.to(self.device)) for part in x.split(batch_size)]
        finally:
            self.net.train(was_training)
        return self.named(torch.cat(logits).argmax(-1).tolist())

    def named(self, labels: Sequence[int]) -> list[int] | list[str]:
        """Class names for class indices, when the model knows them."""
        return [self.class_names[i] for i in labels] if self.class_names else list(labels)

    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write config.json (model_type, config, class names, normalization, provenance and
        `metrics`), model.safetensors and a README.md model card into `directory`."""
        provenance = {**self.provenance, **({"metrics": metrics} if metrics else {})}
        fields = {"class_names": self.class_names,
                  "normalization": {"mean": self.mean, "std": self.std}}  # fmt: skip
        return save_directory(directory, self.config, self.net, fields, provenance)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> Labeler:
        """Load a directory written by `save_pretrained` or `seqkit fit`; never unpickles.

        Raises:
            FileNotFoundError: for a missing directory, config or weights file.
            ValueError: naming the file, for a config or weights that do not fit.
        """
        meta, config, _ = read_directory(directory, ImageModelConfig)  # refuses a seq2seq model
        net = load_network(config, None, directory, device)
        stats = meta.get("normalization") or {}
        return cls(net, meta.get("class_names"), stats.get("mean"), stats.get("std"),
                   meta.get("provenance", {}))  # fmt: skip
