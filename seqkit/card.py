"""The README.md model card written beside an exported model, as a Hugging Face `ModelCard`
whose metadata (`ModelCardData`) the Hub's own code validates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from seqkit.tokens import SPECIAL_TOKENS

METRICS = {
    "bleu": "sacreBLEU",
    "chrf": "chrF",
    "exact_match": "exact match",
    "ppl": "perplexity",
    "ppl_char": "perplexity per character",
    "bpc": "bits per character",
    "loss": "loss",
    "accuracy": "accuracy",
}
DATA_PATH_KEYS = ("path", "mix_with")  # provenance keys that may hold a local path

USES = {  # pipeline tag: how to use the model
    "text-generation": [
        "```python",
        "from seqkit import TextGenerator",
        'generator = TextGenerator.from_pretrained("THIS_DIRECTORY")',
        'print(generator.perplexity(["..."]))',
        "```",
        "",
        '`seqkit generate --model THIS_DIRECTORY --prompt "..."`',
    ],
    "translation": [
        "```python",
        "from seqkit import Translator",
        'translator = Translator.from_pretrained("THIS_DIRECTORY")',
        'print(translator.translate(["..."]))',
        "```",
        "",
        "`seqkit translate --model THIS_DIRECTORY < source.txt > translations.txt`, or",
        "`seqkit serve --model THIS_DIRECTORY` for an HTTP API.",
    ],
    "text-to-image": [
        "```python",
        "from seqkit import ImageGenerator, SamplingConfig",
        'generator = ImageGenerator.from_pretrained("THIS_DIRECTORY")',
        'images = generator.generate(["seven"], SamplingConfig(num_samples=4, seed=1))',
        "```",
        "",
        "`seqkit generate --model THIS_DIRECTORY --prompt seven --num-samples 16 --out grid.png`",
    ],
    "image-to-text": [
        "```python",
        "from seqkit import Translator",
        'translator = Translator.from_pretrained("THIS_DIRECTORY")',
        'print(translator.read(["strip.png"]))  # files, arrays or tensors, of any width',
        "```",
        "",
        "`seqkit predict --model THIS_DIRECTORY strip1.png strip2.png`",
    ],
    "image-classification": [
        "```python",
        "from seqkit import Labeler",
        'labeler = Labeler.from_pretrained("THIS_DIRECTORY")',
        'print(labeler.predict(["image.png"]))  # files, arrays or tensors',
        "```",
        "",
        "`seqkit predict --model THIS_DIRECTORY image1.png image2.png`",
    ],
}


def data_name(path: str | None) -> str | None:
    """How a model card names training data: a Hugging Face dataset name as it is, a local
    file or directory by its own name only (never the absolute path of the machine it was
    trained on)."""
    if not path:
        return path
    local = Path(path).expanduser()
    if local.is_absolute() or local.exists() or path.startswith((".", "~")):
        return local.resolve().name if local.exists() else local.name
    return path


def data_provenance(hparams, name: str) -> dict[str, Any]:
    """What a model card says about a translation data module (its class `name`)."""
    keys = ("path", "src_lang", "tgt_lang", "tgt_langs", "splits", "vocab_size", "joint_vocab",
            "extend_vocab", "mix_with", "mix_ratio")  # fmt: skip
    return {"class": name, **{k: hparams[k] for k in keys if k in hparams}}


def checkpoint_provenance(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """What a Lightning checkpoint says of its weights' origin: the provenance seqkit keeps
    in it, else (older checkpoints) the data module's hyperparameters Lightning saved."""
    provenance = dict(checkpoint.get("provenance", {}))
    data = checkpoint.get("datamodule_hyper_parameters")
    if "data" not in provenance and data:
        name = str(data.get("_class_path", "")).rsplit(".", 1)[-1]
        provenance["data"] = data_provenance(data, name or "unknown")
    provenance.setdefault("steps", checkpoint.get("global_step"))
    return provenance


def public_provenance(provenance: dict[str, Any]) -> dict[str, Any]:
    """`provenance` as a model directory keeps it: the training data, the model it was
    fine-tuned from (`init_from`) and the recipe(s) named without the local paths of the
    machine it was trained on (a recipe of seqkit's own `recipes/` as `recipes/NAME`)."""
    out = dict(provenance)
    if out.get("data"):
        out["data"] = public_data(out["data"])
    if isinstance(out.get("init_from"), str):
        out["init_from"] = data_name(out["init_from"])
    if isinstance(out.get("recipe"), str):
        out["recipe"] = " ".join(_recipe_name(path) for path in out["recipe"].split())
    return out


def _recipe_name(path: str) -> str:
    local = Path(path).expanduser().resolve()
    own = RECIPES / local.name
    return f"recipes/{local.name}" if own.is_file() and own.samefile(local) else local.name


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
"""seqkit's own recipes (beside the package in a source checkout)."""


def public_data(data: dict[str, Any]) -> dict[str, Any]:
    """Training-data provenance with local paths reduced to file or directory names."""
    return {k: data_name(v) if k in DATA_PATH_KEYS and isinstance(v, str) else v
            for k, v in data.items()}  # fmt: skip


def _describe(
    config: dict[str, Any], image_source: dict | None, kind: str = ""
) -> tuple[str, str, str]:
    """The model's name, its pipeline tag, and what it reads and writes (`kind`: its
    config.json `model_type`)."""
    if kind == "transformer-text2image":
        codes = config["tgt_vocab_size"] - len(SPECIAL_TOKENS)
        return "Transformer", "text-to-image", f"prompts → images as tokens of {codes} patch codes"
    if "num_classes" in config:  # an image classifier
        family = "ViT" if "d_model" in config else f"{config['cell'].upper()} image reader"
        h, w = config["image_size"]
        io = f"{config['channels']}×{h}×{w} images → {config['num_classes']} classes"
        return family, "image-classification", io
    family = config["cell"].upper() if "cell" in config else "Transformer"
    if "vocab_size" in config:  # a language model
        window = f", each token predicted from the last {config['context']}" * bool(
            config["context"]
        )
        return (
            f"{family} language model",
            "text-generation",
            f"{config['vocab_size']:,} tokens{window}",
        )
    if config.get("attention", "none") != "none":
        family += f" + {config['attention'].capitalize()} attention"
    target = f"{config['tgt_vocab_size']:,} target tokens"
    if image_source:
        p = image_source["patch_size"]
        return family, "image-to-text", f"images in {p}×{p} patches → {target}"
    return family, "translation", f"{config['src_vocab_size']:,} source tokens → {target}"


def model_card(
    config: dict[str, Any],
    net: nn.Module,
    meta: dict[str, Any],
    image_source: dict | None = None,
    kind: str = "",
):
    """A `huggingface_hub.ModelCard`: validated metadata (library, task, languages, datasets,
    tags) and Markdown saying what the model is, what it was trained on, by which recipe,
    what it scored, and how to use it. `meta` holds the optional keys "data", "recipe",
    "init_from", "steps", "averaged_from" and "metrics" that training recorded."""
    from huggingface_hub import ModelCard, ModelCardData

    family, task, io = _describe(config, image_source, kind)
    data = public_data(meta.get("data") or {})
    src, tgts = data.get("src_lang"), data.get("tgt_langs") or [data.get("tgt_lang")]
    tgt = ",".join(lang for lang in tgts if lang)  # several with language tags
    pair = f" {src}→{tgt}" if src and tgt else ""
    n_params = sum(p.numel() for p in net.parameters())
    metrics = meta.get("metrics") or {}
    card_data = ModelCardData(
        library_name="seqkit",
        pipeline_tag=task,
        language=[src, *tgts] if src and tgt else None,
        datasets=[data["path"]] if data.get("path") else None,
        tags=["seqkit", family.split()[0].lower()],
    )
    lines = [f"# seqkit {family}{pair}", "", "## Model", "", f"- {n_params:,} parameters; {io}"]
    lines += [f"- `{key}`: {value}" for key, value in config.items() if "vocab_size" not in key]
    if meta.get("init_from"):
        lines.append(f"- fine-tuned from `{data_name(str(meta['init_from']))}`")
    if lora := meta.get("lora"):
        adapter = "; the adapter alone in `adapter/`" if lora.get("adapter") else ""
        lines.append(f"- LoRA rank {lora['rank']} (alpha {lora['alpha']:g}) merged into the "
                     f"weights{adapter}")  # fmt: skip
    if meta.get("steps"):
        lines.append(f"- trained for {meta['steps']:,} optimizer steps")
    if averaged := meta.get("averaged_from"):
        lines.append(f"- the average of {len(averaged)} checkpoints")
    lines.append("")
    if data:
        lines += ["## Data", ""]
        lines += [f"- `{key}`: {value}" for key, value in data.items() if value is not None]
        lines.append("")
    if meta.get("recipe"):
        lines += ["## Recipe", "", f"`seqkit fit --config {meta['recipe']}`", ""]
    if metrics:
        lines += ["## Results", "", "| split | metric | value |", "|---|---|---|"]
        for key, value in sorted(metrics.items()):
            split, _, name = key.partition("/")
            lines.append(f"| {split} | {METRICS.get(name, name)} | {value:.4g} |")
        lines.append("")
    lines += ["## Use", "", *USES[task], ""]
    # ModelCard parses the YAML header back and refuses metadata that is not valid.
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
