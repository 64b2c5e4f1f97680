"""Pure `torch.nn` models. The union of configs below is the only registry."""

from __future__ import annotations

import typing
from dataclasses import asdict, fields

from torch import nn

from seqkit.models.rnn import RNNConfig, RNNSeq2Seq
from seqkit.models.transformer import Transformer, TransformerConfig

ModelConfig = TransformerConfig | RNNConfig
"""Every seq2seq model's config; a config's type picks the model."""

MODELS: dict[type, type[nn.Module]] = {TransformerConfig: Transformer, RNNConfig: RNNSeq2Seq}


def build_model(config: ModelConfig) -> nn.Module:
    if type(config) not in MODELS:
        raise TypeError(f"no seqkit model is configured by {type(config).__name__}")
    return MODELS[type(config)](config)


def config_to_dict(config: ModelConfig) -> dict:
    """Plain, JSON-ready fields, for checkpoints and config.json."""
    return asdict(config)


def config_from_dict(data: dict, source: str = "config") -> ModelConfig:
    """The one config class of the union that has every key of `data` (all of its fields are
    always saved, so this is unambiguous); `source` names where `data` came from in errors."""
    keys = set(data)
    matches = [c for c in typing.get_args(ModelConfig) if keys <= {f.name for f in fields(c)}]
    if len(matches) != 1:
        known = ", ".join(c.__name__ for c in typing.get_args(ModelConfig))
        raise ValueError(f"{source}: keys {sorted(keys)} fit {len(matches)} of the model "
                         f"configs ({known}); expected exactly one")  # fmt: skip
    try:
        return matches[0](**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None


__all__ = [
    "MODELS",
    "ModelConfig",
    "RNNConfig",
    "RNNSeq2Seq",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
]
