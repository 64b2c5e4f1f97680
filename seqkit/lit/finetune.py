"""Fine-tuning a saved model: which config changes are allowed, and which parts can be frozen."""

from __future__ import annotations

from dataclasses import fields, replace

from torch import nn

from seqkit.models import ModelConfig

FREEZABLE = {
    "embeddings": ("src_embed.", "tgt_embed.", "pos_embed."),
    "encoder": ("encoder.", "encoder_norm."),
}
"""Parts `freeze` names -> the parameter-name prefixes they cover."""
DROPOUTS = ("dropout", "attention_dropout", "activation_dropout")


def fine_tuning_config(pretrained: ModelConfig, given: ModelConfig, origin: str) -> ModelConfig:
    """The pretrained config, with the dropout rates `given` sets.

    Raises:
        ValueError: naming `origin` and the fields, when `given` changes anything else.
    """
    changes = {
        f.name: getattr(given, f.name)
        for f in fields(given)
        if getattr(given, f.name) != f.default and not f.name.endswith("vocab_size")
    }
    if type(given) is type(pretrained):
        changes = {k: v for k, v in changes.items() if v != getattr(pretrained, k)}
    wrong = {k: v for k, v in changes.items() if k not in DROPOUTS}
    if wrong or (changes and type(given) is not type(pretrained)):
        raise ValueError(
            f"model.init_from={origin} fixes the architecture ({type(pretrained).__name__} "
            f"in its config.json); model.config may only change {', '.join(DROPOUTS)}, "
            f"got {wrong or changes}"
        )
    return replace(pretrained, **changes)


def check_freezable(parts: list[str]) -> None:
    """Raises ValueError for a part `FREEZABLE` does not know."""
    unknown = set(parts) - set(FREEZABLE)
    if unknown:
        raise ValueError(f"freeze: unknown part(s) {sorted(unknown)}; choose from {FREEZABLE}")


def freeze(net: nn.Module, parts: list[str]) -> None:
    """Stop training the parameters of `parts` (see `FREEZABLE`)."""
    frozen = tuple(prefix for part in parts for prefix in FREEZABLE[part])
    for name, param in net.named_parameters():
        if name.startswith(frozen):
            param.requires_grad_(False)
