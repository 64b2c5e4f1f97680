"""Fine-tuning a saved model: which config changes are allowed, which parts can be frozen,
how the vocabulary grows for an extended tokenizer, and what the tokenizer does to new data."""

from __future__ import annotations

from dataclasses import fields, replace

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from seqkit.data import fertility
from seqkit.data.tokenizer import Tokenizers
from seqkit.data.vocab_extension import new_token_pieces
from seqkit.models import ModelConfig
from seqkit.models.resize import grow_vocabularies as grow_vocabularies_by_pieces

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


def grow_vocabularies(net: nn.Module, old: Tokenizers, new: Tokenizers) -> None:
    """Grow `net` (trained with `old`) in place for `new`, a tokenizer that extends `old`
    (`seqkit.data.vocab_extension.extends`): each new token's rows start as the mean of
    those of the pieces `old` cuts it into (`seqkit.models.resize`)."""
    src = new_token_pieces(old.source, new.source)
    tgt = new_token_pieces(old.target, new.target)
    grow_vocabularies_by_pieces(net, src if isinstance(net.src_embed, nn.Embedding) else [], tgt)


def report_fertility(model_dir: str, data) -> None:
    """Log the tokens per word of `data`'s train split (a TranslationData) with the tokenizer
    of the model in `model_dir`, and with the extended one if any, against the model's own
    training data (config.json provenance); warn, naming the remedy, for a side cut into more
    than `fertility.FACTOR` times its old rate."""
    own = fertility.recorded_rates(model_dir) or {}
    base = data.tokens_per_word(data.base_tokenizers)
    extended = data.tokens_per_word() if data.extend_vocab else {}
    langs = {"source": data.src_lang, "target": data.tgt_lang}
    sides = [fertility.SideReport(side, langs[side], base[side], own.get(side),
                                  extended.get(side)) for side in fertility.SIDES]  # fmt: skip
    table, warnings = fertility.report(sides, data.extend_vocab)
    if not own:
        table += f"\n({model_dir} records no tokens per word of its own training data)"
    rank_zero_info(table)
    for warning in warnings:
        rank_zero_warn(warning)
