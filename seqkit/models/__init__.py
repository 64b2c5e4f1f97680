"""Pure `torch.nn` models. The union of configs below is the only registry."""

from __future__ import annotations

from dataclasses import asdict, fields

from torch import nn

from seqkit.models.transformer import Transformer, TransformerConfig

ModelConfig = TransformerConfig
"""Every seq2seq model's config; the union grows with each model family."""

ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "transformer": (TransformerConfig, Transformer),
}


def architecture_of(config: ModelConfig) -> str:
    for name, (config_cls, _) in ARCHITECTURES.items():
        if type(config) is config_cls:
            return name
    raise TypeError(f"no seqkit model is configured by {type(config).__name__}")


def build_model(config: ModelConfig) -> nn.Module:
    return ARCHITECTURES[architecture_of(config)][1](config)


def config_to_dict(config: ModelConfig) -> dict:
    """Plain, JSON-ready form that names the architecture, for checkpoints and config.json."""
    return {"architecture": architecture_of(config), **asdict(config)}


def config_from_dict(data: dict, source: str = "config") -> ModelConfig:
    """Inverse of `config_to_dict`; `source` names where `data` came from in errors."""
    data = dict(data)
    name = data.pop("architecture", "transformer")
    if name not in ARCHITECTURES:
        raise ValueError(f"{source}: unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    config_cls = ARCHITECTURES[name][0]
    unknown = set(data) - {f.name for f in fields(config_cls)}
    if unknown:
        raise ValueError(f"{source}: unknown {config_cls.__name__} keys {sorted(unknown)}")
    return config_cls(**data)


__all__ = [
    "ModelConfig",
    "Transformer",
    "TransformerConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
]
