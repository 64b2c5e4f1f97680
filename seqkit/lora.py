"""LoRA adapters (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") on a
seqkit network's `nn.Linear` layers, through `peft`.

A Linear `y = W x + b` becomes `y = W x + b + (alpha / rank) B A x`, with A (rank, in) random
and B (out, rank) zero at first, so the adapted network starts as the base one; only A and B
train. `apply_lora` injects the adapters in place (`peft.inject_adapter_in_model`, which keeps
the network's own `encode`/`decode`), `merged` folds them into a plain copy for export, and an
adapter is saved on its own in peft's layout (`adapter_config.json`,
`adapter_model.safetensors` keyed as `PeftModel` keys it), so `PeftModel.from_pretrained(net,
ADAPTER_DIR)` reads it too. Nothing is unpickled. `peft` is imported only here, lazily.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

ADAPTER_DIR = "adapter"
"""The adapter's directory inside an exported model directory."""
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"  # peft's names
PREFIX = "base_model.model."  # how PeftModel prefixes the keys it saves
FINGERPRINT = "seqkit_base_sha256"  # safetensors metadata: the base weights it was trained on
EXTRA = "pip install 'seqkit[lora]'"


@dataclass(frozen=True)
class LoraConfig:
    """LoRA settings; peft's `LoraConfig` names in brackets."""

    rank: int = 8
    """Rank of the update B A of each adapted layer (peft: r)."""
    alpha: float = 16.0
    """The update is scaled by alpha / rank (peft: lora_alpha)."""
    dropout: float = 0.0
    """Dropout on the adapter's input while training (peft: lora_dropout)."""
    target_modules: tuple[str, ...] = ()
    """The nn.Linear layers to adapt. An entry names a module path or any run of its dotted
    components: "q" (every query projection), "cross_attn" (q, kv and out of every
    cross-attention), "decoder" (every Linear of the decoder), "decoder.0.ff.0". Empty: every
    Linear but the output projection and an image source's patch embedding — the
    Transformer's attention (q, kv, out) and feed-forward (ff.0, ff.3) layers, the recurrent
    models' bridge, attention and combine layers (their LSTM/GRU cells are not nn.Linear)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"lora: rank must be >= 1, alpha > 0 and 0 <= dropout < 1; got rank={self.rank}, "
                f"alpha={self.alpha}, dropout={self.dropout}"
            )


def _peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError(f"LoRA adapters need peft: {EXTRA}") from err
    return peft


def check_options(config: LoraConfig | None, init_from: str | None, freeze: list[str]) -> None:
    """Seq2Seq's refusals: LoRA adapts trained weights (`init_from`), and chooses what trains
    itself (no `freeze`).

    Raises:
        ValueError: naming the options.
    """
    if config is None:
        return
    if init_from is None:
        raise ValueError(
            "model.lora adapts a trained model: give model.init_from (a model directory); "
            "on random weights only the adapters would train"
        )
    if freeze:
        raise ValueError(
            "model.lora and model.freeze both choose what trains: with lora only the adapters "
            "train; choose where with lora.target_modules (e.g. [decoder])"
        )


def linear_names(net: nn.Module) -> list[str]:
    """Names of every nn.Linear in `net` (an adapted one: of those adapted as well)."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return [n.removesuffix(".base_layer") for n in names if ".lora_" not in n]


def _matches(name: str, entry: str) -> bool:
    return f".{entry}." in f".{name}."


def target_names(net: nn.Module, config: LoraConfig) -> list[str]:
    """The full names of the Linear layers `config.target_modules` picks in `net`.

    Raises:
        ValueError: for an entry that names no Linear (listing those there are), or the
            output projection while it is tied to the target embedding (a merge would
            change the embedding too).
    """
    names = linear_names(net)
    if not config.target_modules:
        return [n for n in names if n != "output" and not n.startswith("src_embed")]
    for entry in config.target_modules:
        if not any(_matches(n, entry) for n in names):
            shown = sorted({_layer_pattern(n) for n in names})
            raise ValueError(f"lora.target_modules: {entry!r} names no nn.Linear of this "
                             f"{type(net).__name__}; it has {', '.join(shown)}")  # fmt: skip
    chosen = [n for n in names if any(_matches(n, e) for e in config.target_modules)]
    if "output" in chosen and getattr(net.config, "tie_embeddings", False):
        raise ValueError("lora.target_modules: the output projection is tied to the target "
                         "embedding (tie_embeddings): leave it out")  # fmt: skip
    return chosen


def _layer_pattern(name: str) -> str:
    """'decoder.3.cross_attn.q' -> 'decoder.*.cross_attn.q': one entry per kind of layer."""
    parts = name.split(".")
    return ".".join("*" if p.isdigit() and i == 1 else p for i, p in enumerate(parts))


def _peft_config(config: LoraConfig, targets: list[str]):
    return _peft().LoraConfig(r=config.rank, lora_alpha=config.alpha,
                              lora_dropout=config.dropout, target_modules=targets)  # fmt: skip


def apply_lora(net: nn.Module, config: LoraConfig) -> nn.Module:
    """`net` with LoRA adapters injected in place (B = 0: outputs unchanged); afterwards only
    the adapters' parameters require gradients.

    Raises:
        ImportError: without peft, naming the extra.
        ValueError: from `target_names`, or for a network that already has adapters.
    """
    if is_adapted(net):
        raise ValueError("this network already has LoRA adapters")
    targets = target_names(net, config)
    net = _peft().inject_adapter_in_model(_peft_config(config, targets), net)
    for name, param in net.named_parameters():
        param.requires_grad_(".lora_" in name)
    return net


def is_adapted(net: nn.Module) -> bool:
    """Whether `net` holds LoRA adapters (peft marks the network it injects into)."""
    return hasattr(net, "peft_config")


def parameter_counts(net: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters of `net`, each tied tensor counted once."""
    params = {id(p): p for p in net.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merged(net: nn.Module) -> nn.Module:
    """A plain copy of an adapted `net`: every adapted Linear is W + (alpha / rank) B A, under
    its own name again (`net` itself is left as it is)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    net = copy.deepcopy(net)
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge(safe_merge=True)  # raises on NaN or infinite merged weights
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, layer.get_base_layer())
    del net.peft_config
    return net


def base_fingerprint(net: nn.Module) -> str:
    """SHA-256 of the base weights of `net` (adapted or not): names and bytes, in name order."""
    state = {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items()
             if ".lora_" not in k}  # fmt: skip
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def save_adapter(net: nn.Module, directory: str | Path) -> Path:
    """Write the adapters of `net` to `directory` as peft does: adapter_config.json and
    adapter_model.safetensors (its metadata also holds the base weights' fingerprint)."""
    peft = _peft()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = peft.get_peft_model_state_dict(net)
    tensors = {PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {"format": "pt", FINGERPRINT: base_fingerprint(net)}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata=metadata)
    net.peft_config["default"].save_pretrained(str(directory))  # peft's adapter_config.json
    return directory


def read_adapter_config(directory: str | Path) -> LoraConfig:
    """The settings of a saved adapter (peft's adapter_config.json).

    Raises:
        FileNotFoundError: without adapter_config.json.
        ValueError: naming the file, for JSON that is not a plain LoRA adapter seqkit applies.
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {directory} a LoRA adapter directory?")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("peft_type") != "LORA":
            raise ValueError(f"peft_type {meta.get('peft_type')!r}, not 'LORA'")
        unsupported = {k: meta[k] for k in UNSUPPORTED if meta.get(k) not in UNSUPPORTED[k]}
        if unsupported:
            raise ValueError(f"seqkit applies plain LoRA; this adapter sets {unsupported}")
        targets = meta["target_modules"]
        targets = [targets] if isinstance(targets, str) else targets
        return LoraConfig(meta["r"], meta["lora_alpha"], meta["lora_dropout"], targets)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: not a LoRA adapter config seqkit can apply ({err})") from None


UNSUPPORTED = {"bias": ("none", None), "use_dora": (False, None), "use_rslora": (False, None),
               "modules_to_save": (None, []), "fan_in_fan_out": (False, None),
               "rank_pattern": ({}, None), "alpha_pattern": ({}, None),
               "layers_to_transform": (None,), "exclude_modules": (None, []),
               "lora_bias": (False, None)}  # fmt: skip
"""peft settings a saved adapter may hold -> the values under which it is plain LoRA."""


def load_adapter(net: nn.Module, directory: str | Path) -> nn.Module:
    """A plain copy of the base `net` with the adapter saved in `directory` merged in (as
    peft's `PeftModel.from_pretrained(net, directory).merge_and_unload()`).

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: naming the file, when the adapter does not fit `net`: other layers or
            shapes, or (an adapter seqkit saved) other base weights than it was trained on.
    """
    config = read_adapter_config(directory)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        with safe_open(str(path), "pt") as f:
            stored = {k.removeprefix(PREFIX): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            trained_on = (f.metadata() or {}).get(FINGERPRINT)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    misfit = f"{path}: the adapter does not fit this {type(net).__name__}"
    try:
        adapted = apply_lora(copy.deepcopy(net), config)
    except ValueError as err:
        raise ValueError(f"{misfit}: {err}") from None
    _check_state(_peft().get_peft_model_state_dict(adapted), stored, misfit)
    if trained_on and trained_on != base_fingerprint(net):
        raise ValueError(f"{path}: trained on other base weights than this model's (a LoRA "
                         "adapter applies to the model it was trained from)")  # fmt: skip
    _peft().set_peft_model_state_dict(adapted, stored)
    return merged(adapted).eval()


def _check_state(expected: dict, stored: dict, misfit: str) -> None:
    missing, unexpected = sorted(expected.keys() - stored), sorted(stored.keys() - expected)
    if missing or unexpected:
        raise ValueError(f"{misfit}: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for key, value in expected.items():
        if stored[key].shape != value.shape:
            raise ValueError(f"{misfit}: {key} is {tuple(stored[key].shape)}, the model makes "
                             f"{tuple(value.shape)}")  # fmt: skip


def summary(net: nn.Module, config: LoraConfig) -> str:
    """One line for the log: rank, layers adapted, trainable parameters of all."""
    trainable, total = parameter_counts(net)
    layers = sum(1 for n, _ in net.named_modules() if n.endswith(".lora_A"))
    share = 100 * trainable / total
    return (f"LoRA rank {config.rank} (alpha {config.alpha:g}) on {layers} Linear layers: "
            f"{trainable:,} trainable parameters of {total:,} ({share:.2f}%)")  # fmt: skip


def config_of(net: nn.Module) -> LoraConfig:
    """The settings `net` was adapted with, its target modules by full name."""
    peft_config = net.peft_config["default"]
    return LoraConfig(rank=peft_config.r, alpha=peft_config.lora_alpha,
                      dropout=peft_config.lora_dropout,
                      target_modules=sorted(peft_config.target_modules))  # fmt: skip


def describe(config: LoraConfig) -> dict:
    """Rank, alpha, dropout and the number of layers (for config.json's provenance)."""
    return {"rank": config.rank, "alpha": config.alpha, "dropout": config.dropout,
            "layers": len(config.target_modules)}  # fmt: skip


def to_dict(config: LoraConfig) -> dict:
    """Plain data (checkpoints, provenance)."""
    return {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in fields(config)}  # fmt: skip
