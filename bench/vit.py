"""seqkit's ViT against vit-pytorch's (lucidrains) at the same size, trained side by side.

    python bench/vit.py [--recipe recipes/vit-digits.yaml] [--data digits|MNIST_DIR]
        [--minutes M] [--order seqkit,reference] [--val-size N] [--test-size N]

Both networks train in one process, one after the other, inside the same `Classifier`: the
same loss, AdamW and learning-rate schedule, data split, batch order, seed and time budget
(`--minutes`, default the recipe's max_time, plus its max_epochs); only `net` differs. The
reference is `vit_pytorch.ViT` with the recipe's ViTConfig mapped onto its arguments
(`reference_net`). Prints a Markdown table of parameters, steps, wall time, training images/s
(images over the seconds spent inside training steps: data loading and validation excluded),
inference images/s (the test split in batches of 256, eval mode, the two nets taking turns
for 7 passes each, median pass) and test accuracy, then the seqkit/vit-pytorch ratios; writes
them to RUN_DIR/result.json. The last line is the training-speed ratio and both accuracies.

The machine is noisy (other jobs, turbo, thermals): compare the ratios within one run, not
absolute figures across runs, and swap `--order` to check that going first does not matter.

What still differs (vit-pytorch 1.26): its patch embedding is LayerNorm → Linear → LayerNorm;
q, k, v have no bias; it applies `dropout` to the attention weights and the MLP's hidden layer
too (seqkit: `attention_dropout` and none); attention is matmul + softmax rather than
`F.scaled_dot_product_attention`; it is always pre-norm GELU; it keeps PyTorch's default
initialization with class token and positions drawn from N(0, 1). Both end in a LayerNorm and
one linear head.

Needs `pip install -e '.[bench]'`; on a CPU-only torch, `pip install --no-deps vit-pytorch
einops` (vit-pytorch requires torchvision, which would replace torch). Its ViT is loaded from
its own file, as the package's `__init__` imports torchvision.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import statistics
import sys
import time
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from seqkit import Classifier, ImageData, ViTConfig

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"seqkit": "seqkit ViT", "reference": "vit-pytorch ViT"}
# Trainer settings of the recipe that shape training; callbacks and loggers are the bench's.
TRAINER_KEYS = ("max_epochs", "gradient_clip_val", "accumulate_grad_batches", "precision",
                "log_every_n_steps", "check_val_every_n_epoch", "val_check_interval")  # fmt: skip


# -- the recipe --------------------------------------------------------------------------------
def _init_args(node: dict | None) -> dict:
    """A LightningCLI node's arguments, given as {class_path, init_args} or as plain fields."""
    node = node or {}
    return dict(node.get("init_args") or {}) if "class_path" in node else dict(node)


def read_recipe(path: Path) -> dict:
    """The model config, optimizer, data and trainer settings of a `seqkit fit` recipe."""
    if not path.is_file():
        sys.exit(f"{path}: recipe not found")
    recipe = yaml.safe_load(path.read_text()) or {}
    model = _init_args(recipe.get("model"))
    try:
        config = ViTConfig(**_init_args(model.get("config")))
    except (TypeError, ValueError) as err:
        sys.exit(f"{path}: model.init_args.config is not a ViTConfig: {err}")
    seed = recipe.get("seed_everything", 0)
    return {
        "config": config,
        "optimizer": _init_args(model.get("optimizer")),
        "label_smoothing": model.get("label_smoothing", 0.0),
        "data": _init_args(recipe.get("data")),
        "trainer": recipe.get("trainer") or {},
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
    }


def minutes_of(max_time: str | dict | None) -> float | None:
    """A Trainer max_time ("DD:HH:MM:SS" or {days, hours, minutes, seconds}) in minutes."""
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (float(part) for part in max_time.split(":"))
        return days * 1440 + hours * 60 + minutes + seconds / 60
    if isinstance(max_time, dict):
        return timedelta(**max_time).total_seconds() / 60
    return None


def image_data(args: argparse.Namespace, recipe: dict) -> ImageData:
    """The recipe's data module on `--data`, split once for both models. Split sizes: the
    flags, else the recipe's for its own source, else 0.1 for digits and 1000 for files."""
    kwargs = dict(recipe["data"])
    own = kwargs.get("path", "digits")
    path = args.data or own
    default = 0.1 if path == "digits" else 1000
    for key in ("val_size", "test_size"):
        given = getattr(args, key)
        if given is None:
            given = kwargs.get(key, default) if path == own else default
        kwargs[key] = given
    if path != "digits" and Path(path).exists():
        path = str(Path(path).resolve())
    data = ImageData(**{**kwargs, "path": path})
    data.setup("fit")
    return data


# -- the two networks --------------------------------------------------------------------------
def load_reference() -> type[nn.Module]:
    """`vit_pytorch.vit.ViT`, from its file: `import vit_pytorch` also imports its DINO module,
    which needs torchvision."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("vit-pytorch is not installed: pip install --no-deps vit-pytorch einops")
    path = Path(spec.submodule_search_locations[0]) / "vit.py"
    file_spec = importlib.util.spec_from_file_location("vit_pytorch_vit", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module.ViT


def reference_net(c: ViTConfig) -> nn.Module:
    """vit-pytorch's ViT at the sizes of `c` (whose image size, channels and classes are set)."""
    if c.activation != "gelu" or not c.norm_first:
        asked = f"activation={c.activation}, norm_first={c.norm_first}"
        warnings.warn(f"vit-pytorch's ViT is always pre-norm GELU; the config has {asked}",
                      stacklevel=2)  # fmt: skip
    return load_reference()(
        image_size=tuple(c.image_size),  # (H, W): a tuple, as its `pair` tests for one
        patch_size=c.patch_size,
        num_classes=c.num_classes,
        dim=c.d_model,
        depth=c.n_layers,
        heads=c.n_heads,
        mlp_dim=c.d_ff,
        pool=c.pool,
        channels=c.channels,
        dim_head=c.d_model // c.n_heads,
        dropout=c.dropout,
        emb_dropout=c.dropout,
    )


def build(which: str, recipe: dict, data: ImageData, seed: int) -> Classifier:
    """A Classifier whose `net` is seqkit's ViT or the reference, before any optimizer exists."""
    L.seed_everything(seed, verbose=False)
    model = Classifier(recipe["config"], recipe["optimizer"], recipe["label_smoothing"])
    model._follow_data(data)  # the sizes `fit` would take from the data module
    model.configure_model()  # seqkit's net and the metrics; `fit` leaves a built net alone
    if which == "reference":
        L.seed_everything(seed, verbose=False)
        model.net = reference_net(model.config)
    return model


# -- measuring ---------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainTime(L.Callback):
    """Seconds inside training steps (forward, backward, optimizer step) and images seen."""

    def __init__(self) -> None:
        self.seconds, self.images, self._start = 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        _sync(pl_module.device)
        self.seconds += time.perf_counter() - self._start
        self.images += batch["label"].numel()


@torch.inference_mode()
def inference_rates(nets: dict[str, nn.Module], data: ImageData, batch_size: int = 256,
                    rounds: int = 7) -> dict[str, float]:  # fmt: skip
    """Images/s of each net in eval mode over the test split. The nets take turns, a whole
    pass each per round, and each keeps its median round: noise hits both alike."""
    split = data.test_dataloader().dataset
    device = next(next(iter(nets.values())).parameters()).device
    images = split.__getitems__(list(range(len(split))))["image"].to(device)
    batches = images.split(batch_size)
    seconds: dict[str, list[float]] = {name: [] for name in nets}
    for net in nets.values():
        net.eval()
        net(batches[0])  # warm-up
    for _ in range(rounds):
        for name, net in nets.items():
            _sync(device)
            start = time.perf_counter()
            for x in batches:
                net(x)
            _sync(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: len(images) / statistics.median(t) for name, t in seconds.items()}


def measure(
    which: str, data: ImageData, recipe: dict, args: argparse.Namespace
) -> tuple[dict, nn.Module]:
    """Train one model within the budget and test it; returns its figures and its net."""
    model = build(which, recipe, data, args.seed)
    timer = TrainTime()
    settings = {k: v for k, v in recipe["trainer"].items() if k in TRAINER_KEYS}
    trainer = L.Trainer(
        max_time=timedelta(minutes=args.minutes), callbacks=[timer], devices=1,
        logger=CSVLogger(args.run_dir, name=which), accelerator=args.accelerator,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        **settings,
    )  # fmt: skip
    L.seed_everything(args.seed, verbose=False)
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    with contextlib.redirect_stdout(io.StringIO()):  # the confusion matrix
        scores = trainer.test(model, datamodule=data, verbose=False)[0]
    wall = time.perf_counter() - start
    return {
        "name": NAMES[which],
        "params": sum(p.numel() for p in model.net.parameters()),
        "steps": trainer.global_step,
        "epochs": timer.images / len(data.split_indices("train")),
        "wall_min": wall / 60,
        "train_seconds": timer.seconds,
        "train_images_per_sec": timer.images / max(timer.seconds, 1e-9),
        "test_accuracy": scores["test/accuracy"],
        "test_loss": scores["test/loss"],
    }, model.net


# -- the run -----------------------------------------------------------------------------------
def _size(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/vit-digits.yaml")
    parser.add_argument("--data", help="digits or an MNIST IDX directory (default: the recipe's)")
    parser.add_argument("--val-size", type=_size, help="a count or a fraction")
    parser.add_argument("--test-size", type=_size, help="a count or a fraction")
    parser.add_argument("--minutes", type=float, help="training budget per model")
    parser.add_argument("--order", default="seqkit,reference", help="which trains first")
    parser.add_argument("--seed", type=int, help="default: the recipe's seed_everything")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "runs/bench-vit")
    args = parser.parse_args(argv)
    args.order = args.order.split(",")
    if sorted(args.order) != sorted(NAMES):
        parser.error(f"--order: give both of {', '.join(NAMES)}, comma-separated")
    return args


def run(args: argparse.Namespace) -> dict:
    recipe = read_recipe(args.recipe)
    args.seed = recipe["seed"] if args.seed is None else args.seed
    args.minutes = args.minutes or minutes_of(recipe["trainer"].get("max_time")) or 5.0
    args.run_dir.mkdir(parents=True, exist_ok=True)
    data = image_data(args, recipe)
    runs, nets = {}, {}
    for which in args.order:
        runs[which], nets[which] = measure(which, data, recipe, args)
    for which, rate in inference_rates(nets, data).items():
        runs[which]["infer_images_per_sec"] = rate
    mine, ref = runs["seqkit"], runs["reference"]
    result = {
        "recipe": str(args.recipe), "data": data.path, "minutes": args.minutes,
        "image_shape": data.image_shape, "num_classes": data.num_classes,
        "split_sizes": {s: len(data.split_indices(s)) for s in ("train", "val", "test")},
        "order": args.order, "seed": args.seed, "config": asdict(recipe["config"]),
        "optimizer": recipe["optimizer"], "torch": torch.__version__,
        "vit_pytorch": importlib.metadata.version("vit-pytorch"), "runs": runs,
        "ratios": {key: mine[key] / ref[key] for key in
                   ("train_images_per_sec", "infer_images_per_sec", "params")},
    }  # fmt: skip
    (args.run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    args = parse_args()
    r = run(args)
    sizes = "/".join(str(n) for n in r["split_sizes"].values())
    print(f"{r['data']} (train/val/test {sizes}), {args.minutes:g} min per model, "
          f"order {', '.join(args.order)}, seed {args.seed}, torch {r['torch']}, "
          f"vit-pytorch {r['vit_pytorch']}\n")  # fmt: skip
    print("| model | params | steps | epochs | wall min | train img/s | infer img/s | test acc |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for m in (r["runs"]["seqkit"], r["runs"]["reference"]):
        print(f"| {m['name']} | {m['params']:,} | {m['steps']} | {m['epochs']:.1f} | "
              f"{m['wall_min']:.1f} | {m['train_images_per_sec']:,.0f} | "
              f"{m['infer_images_per_sec']:,.0f} | {m['test_accuracy']:.3f} |")  # fmt: skip
    ratios = r["ratios"]
    print(f"\nseqkit/vit-pytorch: inference images/s {ratios['infer_images_per_sec']:.2f}x, "
          f"parameters {ratios['params']:.2f}x")  # fmt: skip
    mine, ref = r["runs"]["seqkit"]["test_accuracy"], r["runs"]["reference"]["test_accuracy"]
    print(f"seqkit/vit-pytorch train images/s ratio: {ratios['train_images_per_sec']:.2f}x; "
          f"test accuracy {mine:.3f} vs {ref:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
