"""Model directories in the Hugging Face layout, one reader and one writer for every kind of
seqkit model: `config.json` (its `model_type`, the config and what inference needs),
`model.safetensors`, the tokenizer file(s) of a text model and a README.md model card.
Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from seqkit.card import model_card, public_provenance
from seqkit.errors import DataError
from seqkit.models import (
    ImageModelConfig,
    ModelConfig,
    config_to_dict,
    model_type,
    read_model_config,
    split_legacy_source,
)

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
EXPORT_META_FILE = "seqkit.json"
"""seqkit's own file in an export for another engine (`seqkit.export`), naming its format."""
MISFIT = "the weights do not fit the model in config.json"
# A tokenizer file larger than this per token of config.json's vocabulary (plus the slack) is
# refused unread; seqkit's hold about 30 bytes a token, GPT-2's tokenizer.json 27.
TOKEN_BYTES, SLACK_BYTES = 1024, 1 << 20


def check_output_directory(
    out: Path, kind: str, earlier: Callable[[Path], bool], source: Path | None = None
) -> None:
    """Refuse to write `kind` (e.g. "ONNX export") into `out` where it would overwrite or mix
    with something else: the model directory `source` it is made from (or a folder holding
    it), a file, or a folder holding files that is not an earlier output of the same kind
    (`earlier(out)`), which the new one replaces.

    Raises:
        ValueError: naming `out` and what it holds.
    """
    out = Path(out)
    if source is not None:
        target, model = out.resolve(), Path(source).resolve()
        if target == model or target in model.parents:
            raise ValueError(f"{out}: would overwrite the model directory {source}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; give a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not earlier(out):
        found = export_format(out)
        holds = f"a {found} export" if found else "files"
        raise ValueError(f"{out}: holds {holds}, not an earlier {kind}; give a new or empty "
                         "directory")  # fmt: skip


def export_format(directory: Path) -> str | None:
    """The format ("ctranslate2", "onnx") that an export's seqkit.json in `directory` names;
    None where there is none."""
    try:
        meta = json.loads((Path(directory) / EXPORT_META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    format_ = meta.get("format") if isinstance(meta, dict) else None
    return format_ if isinstance(format_, str) else None


def check_output_model_directory(directory: Path) -> None:
    """`check_output_directory` for a seqkit model directory."""
    check_output_directory(directory, "seqkit model directory", is_model_directory)


def is_export(directory: Path, format_: str, marker: str) -> bool:
    """Whether `directory` holds an export of `format_`: its seqkit.json says so, or it has
    none yet but holds the export's `marker` file (an export killed before seqkit.json)."""
    found = export_format(directory)
    return found == format_ or (found is None and (Path(directory) / marker).is_file())


def is_model_directory(directory: Path) -> bool:
    """Whether `directory` holds a seqkit model directory's weights (a whole one, or one whose
    export was killed before config.json), and is not an engine's export."""
    return (Path(directory) / WEIGHTS_FILE).is_file() and export_format(directory) is None


def save_directory(
    directory: str | Path,
    config: ModelConfig | ImageModelConfig,
    net: nn.Module,
    fields: dict[str, Any],
    provenance: dict[str, Any],
    tokenizers=None,
    *,
    checked: bool = False,
) -> Path:
    """Write a model directory: the weights, the tokenizers if any, the card, and last
    config.json, which holds `model_type`, `config`, the inference `fields` (decoding, image
    source, class names, ...) and `provenance` (training data by name, recipe, steps,
    metrics). An earlier config.json goes first and the new one is renamed into place, so an
    export that is killed leaves a directory that is refused, never one that loads as a mix
    of two exports. A `directory` holding anything but an earlier model directory is refused
    (`check_output_directory`), unless the caller `checked` it before writing files of its
    own there."""
    from seqkit import __version__

    directory = Path(directory)
    if not checked:
        check_output_model_directory(directory)
    directory.mkdir(parents=True, exist_ok=True)
    provenance = public_provenance(provenance)
    config_dict = config_to_dict(config)
    meta = {"model_type": model_type(config), "config": config_dict, **fields,
            "provenance": provenance, "seqkit_version": __version__}  # fmt: skip
    config_path = directory / CONFIG_FILE
    config_path.unlink(missing_ok=True)
    save_model(net, str(directory / WEIGHTS_FILE))
    if tokenizers is not None:
        tokenizers.save(directory)
    card = model_card(config_dict, net, provenance, fields.get("image_source"), meta["model_type"])
    card.save(directory / CARD_FILE)
    temp = config_path.with_name(f".{CONFIG_FILE}.tmp")
    temp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, config_path)
    return directory


def read_directory(directory: str | Path, union=ModelConfig | ImageModelConfig):
    """(config.json as a dict, the model config, the image-source fields of a directory
    written before `ImageSource` existed ({} otherwise)).

    Raises:
        FileNotFoundError: when the directory has no config.json.
        ValueError: naming the file, when it does not hold a seqkit model config.
    """
    meta, config = read_model_config(directory, union)
    _, legacy = split_legacy_source(meta["config"])
    return meta, config, legacy


def load_network(config, image_source, directory: str | Path, device: str = "cpu") -> nn.Module:
    """The network of `config` with the weights of `directory`, in eval mode. The shapes in
    model.safetensors' header are checked against the network built on the meta device
    first, so that a config.json promising other sizes allocates nothing.

    Raises:
        FileNotFoundError: when there is no model.safetensors.
        ValueError: naming the file, when its tensors do not fit the config.
    """
    from seqkit.models import build_model

    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {directory} a seqkit model directory?")
    try:
        with safe_open(str(path), "pt") as f:
            stored = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    with _on_meta():
        net = build_model(config, image_source)
    expected = {key: tuple(value.shape) for key, value in net.state_dict().items()}
    for key, shape in expected.items():
        if key in stored and stored[key] != shape:
            raise ValueError(f"{path}: {MISFIT}: {key} is {stored[key]}, the config makes {shape}")
    return _fill(build_model(config, image_source).eval(), path, device)


@contextmanager
def _on_meta() -> Iterator[None]:
    """Build modules on the meta device (shapes, no memory), skipping `normal_` there: its
    meta decomposition imports torch._dynamo, about two seconds of start-up."""
    original = torch.nn.init.normal_

    def normal_(tensor, *args, **kwargs):
        return tensor if tensor.is_meta else original(tensor, *args, **kwargs)

    torch.nn.init.normal_ = normal_
    try:
        with torch.device("meta"):
            yield
    finally:
        torch.nn.init.normal_ = original


def _fill(net: nn.Module, path: Path, device: str) -> nn.Module:
    """`net` with the tensors of the safetensors file `path` (all of them, by name and
    shape), on `device`; errors name the file or the device."""
    try:
        device = str(torch.device(device))
    except RuntimeError as err:
        raise ValueError(f"device {device!r}: {err}") from None
    try:
        missing, unexpected = load_model(net, str(path), strict=False, device="cpu")
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    except RuntimeError as err:  # a tensor of another shape
        raise ValueError(f"{path}: {MISFIT}: {err}") from None
    if missing or unexpected:
        raise ValueError(f"{path}: {MISFIT}: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")  # fmt: skip
    try:
        return net.to(device)
    except (RuntimeError, AssertionError) as err:  # e.g. cuda on a machine without it
        raise ValueError(f"cannot put the model on device {device!r}: {err}") from None


def load_tokenizers(config: ModelConfig, image_source, directory: str | Path):
    """The tokenizer file(s) of a text model's directory, checked against config.json
    before any weight is allocated: each file no larger than `config`'s vocabularies can
    need, then read and checked (`Tokenizers.load`), then of the vocabulary sizes `config`
    gives (the source side only when it reads tokens, `image_source` None).

    Raises:
        FileNotFoundError: when there is none.
        DataError: naming the file, when it cannot be read as a tokenizer or does not fit.
    """
    from seqkit.data.tokenizer import JOINT_FILE, SOURCE_FILE, TARGET_FILE, Tokenizers

    directory = Path(directory)
    limit = TOKEN_BYTES * max(config.src_vocab_size, config.tgt_vocab_size) + SLACK_BYTES
    for path in (directory / name for name in (JOINT_FILE, SOURCE_FILE, TARGET_FILE)):
        if path.is_file() and path.stat().st_size > limit:
            raise DataError(f"{path}: {path.stat().st_size} bytes, more than the vocabulary "
                            f"sizes in {directory / CONFIG_FILE} can need ({limit})")  # fmt: skip
    tokenizers = Tokenizers.load(directory)
    files = (JOINT_FILE, JOINT_FILE) if tokenizers.joint else (SOURCE_FILE, TARGET_FILE)
    sides = [("tgt_vocab_size", tokenizers.tgt_vocab_size, files[1])]
    if image_source is None:  # an image source has no vocabulary
        sides.insert(0, ("src_vocab_size", tokenizers.src_vocab_size, files[0]))
    for key, size, name in sides:
        if (wanted := getattr(config, key)) != size:
            raise DataError(f"{directory / name}: a vocabulary of {size} tokens, but "
                            f"{directory / CONFIG_FILE} has {key}={wanted}")  # fmt: skip
    return tokenizers
