"""Pure `torch.nn` models. The union of configs below is the only registry."""

from __future__ import annotations

import json
import types
import typing
from dataclasses import asdict, fields
from pathlib import Path

from torch import nn

from seqkit.models.lm import RNNLM, LMConfig, RNNLMConfig, TransformerLM, TransformerLMConfig
from seqkit.models.patches import ImageSource, patch_embedding
from seqkit.models.rnn import RNNConfig, RNNSeq2Seq
from seqkit.models.text2image import TextToImageConfig
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
    TransformerLMConfig: TransformerLM,
    RNNLMConfig: RNNLM,
    TextToImageConfig: Transformer,
}
MODEL_TYPES: dict[str, type] = {
    "transformer": TransformerConfig,
    "rnn": RNNConfig,
    "vit": ViTConfig,
    "recurrent-reader": ReaderConfig,
    "transformer-lm": TransformerLMConfig,
    "rnn-lm": RNNLMConfig,
    "transformer-text2image": TextToImageConfig,
}
"""The `model_type` a model directory's config.json names -> its config class."""
# Fields that configs had before an image source became an `ImageSource` of its own.
LEGACY_SOURCE_FIELDS = ("src_patch_size", "src_channels")


KINDS = {
    **dict.fromkeys(typing.get_args(ModelConfig), "seq2seq"),
    **dict.fromkeys(typing.get_args(ImageModelConfig), "an image classifier"),
    **dict.fromkeys(typing.get_args(LMConfig), "a language model"),
    TextToImageConfig: "a text-to-image model",
}
"""What each config's model is, for messages."""


def model_type(config: ModelConfig | ImageModelConfig) -> str:
    """The name config.json gives `config`'s kind of model, e.g. "transformer"."""
    return next(name for name, cls in MODEL_TYPES.items() if cls is type(config))


def build_model(
    config: ModelConfig | ImageModelConfig | LMConfig, image_source: ImageSource | None = None
) -> nn.Module:
    """The network `config` describes; a seq2seq network reads `image_source` when given
    (through a linear patch embedding), token ids otherwise.

    Raises:
        TypeError: for a config that is not one of the registered ones.
        ValueError: for an image source given to an image classifier, or missing sizes.
    """
    if type(config) not in MODELS:
        raise TypeError(f"no seqkit model is configured by {type(config).__name__}")
    if isinstance(config, ImageModelConfig | LMConfig):
        if image_source is not None:
            raise ValueError(f"{type(config).__name__} takes no source")
        return MODELS[type(config)](config)
    if image_source is None:
        return MODELS[type(config)](config)
    width = config.d_model if isinstance(config, TransformerConfig) else config.embed_dim
    return MODELS[type(config)](config, patch_embedding(image_source.patch_dim, width))


def config_to_dict(config: ModelConfig | ImageModelConfig) -> dict:
    """Plain, JSON-ready fields, for checkpoints and config.json."""
    return asdict(config)


def split_legacy_source(data: dict) -> tuple[dict, dict]:
    """A config dict without the image fields older seqkit kept in it (`src_patch_size`,
    `src_channels`), and those fields (empty when the source is token ids)."""
    legacy = {k: data[k] for k in LEGACY_SOURCE_FIELDS if k in data}
    rest = {k: v for k, v in data.items() if k not in LEGACY_SOURCE_FIELDS}
    if not legacy.get("src_patch_size"):
        return rest, {}
    return rest, {"patch_size": legacy["src_patch_size"], "channels": legacy["src_channels"]}


def config_from_dict(
    data: dict, source: str = "config", union=ModelConfig, kind: str | None = None
) -> ModelConfig | ImageModelConfig:
    """The config of `data`: of the class `kind` names (a `MODEL_TYPES` key), else the one
    class of `union` (ModelConfig or ImageModelConfig) that has every key of `data` (all
    fields are always saved, so this is unambiguous). `source` names `data` in errors.

    Raises:
        ValueError: for an unknown kind, keys no config has, or values a config refuses.
    """
    data, _ = split_legacy_source(data)
    if kind is not None:
        if kind not in MODEL_TYPES:
            raise ValueError(f"{source}: model_type {kind!r} is not one of {sorted(MODEL_TYPES)}")
        if MODEL_TYPES[kind] not in typing.get_args(union):
            what = KINDS[MODEL_TYPES[kind]]
            wanted = ", ".join(c.__name__ for c in typing.get_args(union))
            raise ValueError(f"{source}: holds a {kind} model ({what}), not one of {wanted}")
        matches = [MODEL_TYPES[kind]]
    else:
        matches = [c for c in typing.get_args(union) if keys_fit(data, c)]
    others = [n for n, c in MODEL_TYPES.items() if keys_fit(data, c) and c not in matches]
    if not matches and others:
        return config_from_dict(data, source, union, others[0])  # raises, naming what it holds
    if len(matches) != 1:
        known = ", ".join(c.__name__ for c in typing.get_args(union))
        raise ValueError(f"{source}: keys {sorted(data)} fit {len(matches)} of the model "
                         f"configs ({known}); expected exactly one")  # fmt: skip
    check_values(matches[0], data, source)
    try:
        return matches[0](**data)
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise ValueError(f"{source}: {err}") from None


# Widths a network cannot be built without; other sizes may be 0 (filled in from the data).
POSITIVE = {"d_model", "n_heads", "d_ff", "hidden_size", "embed_dim", "max_positions",
            "patch_size"}  # fmt: skip


def check_values(cls: type, data: dict, source: str) -> None:
    """Raise ValueError, naming `source` and the field, unless every value of `data` has its
    field's type (int, finite float, bool, a Literal's choices, tuple[int, int]) and sizes are
    not negative (positive for the widths in POSITIVE): config.json is untrusted input."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        kind = hints.get(name)
        if kind is None:
            continue  # an unknown key: the constructor names it
        if not _fits(kind, value) or (name in POSITIVE and value < 1):
            want = "a positive int" if name in POSITIVE else _describe(kind)
            raise ValueError(f"{source}: {name}={value!r:.60} is not {want}")


def _fits(kind, value) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is types.UnionType:
        return any(_fits(a, value) for a in args)
    if kind is types.NoneType:
        return value is None
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        return (
            isinstance(value, list | tuple)
            and len(value) == len(args)
            and all(_fits(a, v) for a, v in zip(args, value, strict=True))
        )
    if kind is bool:
        return type(value) is bool
    if kind is int:
        return type(value) is int and value >= 0
    if kind is float:
        return type(value) in (int, float) and 0 <= value < float("inf")
    return True


def _describe(kind) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return f"one of {list(typing.get_args(kind))}"
    if typing.get_origin(kind) is types.UnionType:
        return " or ".join(_describe(a) for a in typing.get_args(kind))
    names = {bool: "true or false", int: "an int >= 0", float: "a number >= 0", None: "null"}
    return names.get(kind if kind is not types.NoneType else None, str(kind))


def keys_fit(data: dict, cls: type) -> bool:
    """Whether every key of `data` is a field of the config class `cls`."""
    return set(data) <= {f.name for f in fields(cls)}


def read_model_config(directory: str | Path, union=ModelConfig) -> tuple[dict, object]:
    """The parsed `config.json` of a model directory and the config it holds, of the
    `model_type` it names (directories written before `model_type`: the one class of `union`
    whose fields it has).

    Raises:
        FileNotFoundError: when there is no config.json.
        ValueError: naming the file, when it is not a seqkit model config.
    """
    directory = Path(directory)
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {directory} a seqkit model directory?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        kind = meta.get("model_type")
        return meta, config_from_dict(meta["config"], str(path), union, kind)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a seqkit model config ({err})") from None


__all__ = [
    "MODELS",
    "MODEL_TYPES",
    "RNNLM",
    "ImageModelConfig",
    "ImageSource",
    "LMConfig",
    "ModelConfig",
    "RNNConfig",
    "RNNLMConfig",
    "RNNSeq2Seq",
    "ReaderConfig",
    "RecurrentReader",
    "Transformer",
    "TransformerConfig",
    "TransformerLM",
    "TransformerLMConfig",
    "ViT",
    "ViTConfig",
    "build_model",
    "config_from_dict",
    "config_to_dict",
    "model_type",
    "read_model_config",
    "split_legacy_source",
]
