"""Pure `torch.nn` models. The union of configs below is the only registry."""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, fields
from pathlib import Path

from torch import nn

from seqkit.models.rnn import RNNConfig, RNNSeq2Seq
from seqkit.models.transformer import Transformer, TransformerConfig
from seqkit.models.vit import ReaderConfig, RecurrentReader, ViT, ViTConfig

ModelConfig = TransformerConfig | RNNConfig
"""Every seq2seq model's config; a config's type picks the model."""
ImageModelConfig = ViTConfig | ReaderConfig
"""Every image classifier's config; a config's type picks the model."""

MODELS: dict[type, type[nn.Module]] = {
    TransformerConfig: Transformer,
    RNNConfig: RNNSeq2Seq,
    ViTConfig: ViT,
    ReaderConfig: RecurrentReader,
}


def build_model(config: ModelConfig | ImageModelConfig) -> nn.Module:
    if type(config) not in MODELS:
        raise TypeError(f"no seqkit model is configured by {type(config).__name__}")
    return MODELS[type(config)](config)


def config_to_dict(config: ModelConfig | ImageModelConfig) -> dict:
    """Plain, JSON-ready fields, for checkpoints and config.json."""
    return asdict(config)


def config_from_dict(
    data: dict, source: str = "config", union=ModelConfig
) -> ModelConfig | ImageModelConfig:
    """The one config class of `union` (ModelConfig or ImageModelConfig) that has every key
    of `data` (all of its fields are always saved, so this is unambiguous); `source` names
    where `data` came from in errors."""
    keys = set(data)
    matches = [c for c in typing.get_args(union) if keys <= {f.name for f in fields(c)}]
    if len(matches) != 1:
        known = ", ".join(c.__name__ for c in typing.get_args(union))
        raise ValueError(f"{source}: keys {sorted(keys)} fit {len(matches)} of the model "
                         f"configs ({known}); expected exactly one")  # fmt: skip
    try:
        return matches[0](**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None


def read_model_config(directory: str | Path, union=ModelConfig) -> tuple[dict, object]:
    """The parsed `config.json` of a model directory and the config of `union` it holds."""
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {directory} a seqkit model directory?")
    try:
        meta = json.loads(path.read_text())
        return meta, config_from_dict(meta["config"], str(path), union)
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a seqkit model config ({err})") from None


__all__ = [
    "MODELS",
    "ImageModelConfig",
    "ModelConfig",
    "RNNConfig",
    "RNNSeq2Seq",
    "ReaderConfig",
    "RecurrentReader",
    "Transformer",
    "TransformerConfig",
    "ViT",
    "ViTConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "read_model_config",
]
