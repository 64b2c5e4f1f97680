"""The README.md model card written beside an exported model."""

from __future__ import annotations

from typing import Any

from torch import nn

METRICS = {
    "bleu": "sacreBLEU",
    "chrf": "chrF",
    "exact_match": "exact match",
    "ppl": "perplexity",
    "loss": "loss",
    "accuracy": "accuracy",
}


USES = {  # pipeline tag: how to use the model
    "translation": [
        "```python",
        "from seqkit import Seq2Seq",
        'model = Seq2Seq.from_pretrained("THIS_DIRECTORY")',
        'print(model.translate(["..."], beam_size=5))',
        "```",
        "",
        "`seqkit translate --model THIS_DIRECTORY < source.txt > translations.txt`",
    ],
    "image-to-text": [
        "```python",
        "from seqkit import Seq2Seq",
        'model = Seq2Seq.from_pretrained("THIS_DIRECTORY")',
        'print(model.predict(["strip.png"]))  # files, arrays or tensors, of any width',
        "```",
        "",
        "`seqkit predict --model THIS_DIRECTORY strip1.png strip2.png`",
    ],
    "image-classification": [
        "```python",
        "from seqkit import Classifier",
        'model = Classifier.from_pretrained("THIS_DIRECTORY")',
        'print(model.predict(["image.png"]))  # files, arrays or tensors',
        "```",
        "",
        "`seqkit predict --model THIS_DIRECTORY image1.png image2.png`",
    ],
}


def _describe(config: dict[str, Any]) -> tuple[str, str, str]:
    """The model's name, its pipeline tag, and what it reads and writes."""
    if "num_classes" in config:  # an image classifier
        family = "ViT" if "d_model" in config else f"{config['cell'].upper()} image reader"
        h, w = config["image_size"]
        io = f"{config['channels']}×{h}×{w} images → {config['num_classes']} classes"
        return family, "image-classification", io
    family = config["cell"].upper() if "cell" in config else "Transformer"
    if config.get("attention", "none") != "none":
        family += f" + {config['attention'].capitalize()} attention"
    target = f"{config['tgt_vocab_size']:,} target tokens"
    if config.get("src_patch_size"):
        p = config["src_patch_size"]
        return family, "image-to-text", f"images in {p}×{p} patches → {target}"
    return family, "translation", f"{config['src_vocab_size']:,} source tokens → {target}"


def model_card(config: dict[str, Any], net: nn.Module, meta: dict[str, Any]) -> str:
    """Markdown with a YAML header: what the model is, what it was trained on, by which
    recipe, what it scored, and how to use it. `meta` holds the optional keys "data",
    "recipe", "init_from", "steps" and "metrics" that training recorded."""
    family, task, io = _describe(config)
    data = meta.get("data") or {}
    src, tgt = data.get("src_lang"), data.get("tgt_lang")
    pair = f" {src}→{tgt}" if src and tgt else ""
    n_params = sum(p.numel() for p in net.parameters())
    metrics = meta.get("metrics") or {}

    header = ["---", "library_name: seqkit", f"pipeline_tag: {task}"]
    if src and tgt:
        header += ["language:", f"- {src}", f"- {tgt}"]
    header += ["tags:", "- seqkit", f"- {family.split()[0].lower()}", "---", ""]
    lines = [*header, f"# seqkit {family}{pair}", ""]
    lines += ["## Model", "", f"- {n_params:,} parameters; {io}"]
    lines += [f"- `{key}`: {value}" for key, value in config.items() if "vocab_size" not in key]
    if meta.get("init_from"):
        lines.append(f"- fine-tuned from `{meta['init_from']}`")
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
    return "\n".join(lines)
