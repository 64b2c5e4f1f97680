"""Checkpoint averaging: the element-wise mean of the weights of one run's last checkpoints.

Averaging the last few checkpoints of a run (Vaswani et al., 2017, averaged the last 5) smooths
out the noise of the final updates and often gains a little BLEU at no training cost. The
checkpoints must hold one model (same config, weights and tokenizer); they are read as plain
data (`torch.load(weights_only=True)`, memory-mapped) and never unpickled.

    seqkit average --last 5 lightning_logs/version_0/checkpoints --out averaged
    seqkit average a.ckpt b.ckpt c.ckpt --out averaged.ckpt
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from seqkit.lit.checkpoint_io import AtomicCheckpointIO
from seqkit.lit.cli import load_checkpoint, pretrained

RESUME_STATE = ("optimizer_states", "lr_schedulers", "callbacks")
"""Dropped from the average, as Lightning's `save_weights_only` does: it is for evaluation and
export, and `trainer.fit(ckpt_path=...)` must refuse it rather than resume with the optimizer
state of one of the checkpoints."""

USAGE_HINT = (
    "keep several with ModelCheckpoint(save_top_k=-1, every_n_train_steps=...) "
    "(every one) or ModelCheckpoint(save_top_k=N) (the best N)"
)


def read_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint as plain data; tensors are memory-mapped, read when used."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        reason = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: not a plain-data PyTorch checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{path}: not a Lightning checkpoint (it has no state_dict)")
    if not isinstance(checkpoint.get("global_step"), int):
        raise ValueError(f"{path}: not a Lightning checkpoint (it has no global_step)")
    return checkpoint


def _first_difference(a: dict, b: dict) -> str | None:
    """The first key (sorted) that only one dict has or whose values differ; None if equal."""
    for key in sorted(a.keys() | b.keys(), key=str):
        if key not in a or key not in b or a[key] != b[key]:
            return key
    return None


def _describe(value: object) -> str:
    return "missing" if value is None else repr(value)


def check_compatible(a_path: Path, a: dict, b_path: Path, b: dict) -> None:
    """Raise ValueError, naming both files and the first differing key, unless two
    checkpoints hold the same model: config, tokenizer, weight names, shapes and dtypes."""
    configs = [c.get("hyper_parameters", {}).get("config") or {} for c in (a, b)]
    key = _first_difference(*configs)
    if key is not None:
        values = " vs ".join(_describe(config.get(key)) for config in configs)
        raise ValueError(
            f"{a_path} and {b_path} differ in hyper_parameters['config'][{key!r}] ({values}): "
            "only checkpoints of one model can be averaged"
        )
    key = _first_difference(a.get("tokenizers") or {}, b.get("tokenizers") or {})
    if key is not None:
        raise ValueError(
            f"{a_path} and {b_path} differ in tokenizers[{key!r}]: they were trained with "
            "different tokenizers, so their token ids mean different things"
        )
    weights_a, weights_b = a["state_dict"], b["state_dict"]
    for key in sorted(weights_a.keys() ^ weights_b.keys()):
        has, lacks = (a_path, b_path) if key in weights_a else (b_path, a_path)
        raise ValueError(f"state_dict[{key!r}] is in {has} but not in {lacks}")
    for key, x in weights_a.items():
        y = weights_b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            raise ValueError(
                f"{a_path} and {b_path} differ in state_dict[{key!r}]: "
                f"{tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}"
            )


def _mean(tensors: Sequence[Tensor]) -> Tensor:
    """Element-wise mean accumulated in float64, cast back to the dtype; tensors that are not
    floating point (counters, masks) come from the last one."""
    last = tensors[-1]
    if not last.is_floating_point():
        return last.clone()
    total = torch.zeros(last.shape, dtype=torch.float64)
    for tensor in tensors:
        total += tensor
    return (total / len(tensors)).to(last.dtype)


def average_checkpoints(paths: Sequence[str | Path]) -> dict:
    """The checkpoint with the highest global_step, its floating-point weights replaced by the
    mean over `paths` and its optimizer, scheduler and callback state dropped (`RESUME_STATE`).
    `provenance["averaged_from"]` lists the files and steps, oldest first. Loads with
    `load_checkpoint`."""
    if not paths:
        raise ValueError("no checkpoints to average")
    paths = [Path(p) for p in paths]
    checkpoints = [read_checkpoint(p) for p in paths]
    for path, checkpoint in zip(paths[1:], checkpoints[1:], strict=True):
        check_compatible(paths[0], checkpoints[0], path, checkpoint)
    order = sorted(range(len(paths)), key=lambda i: checkpoints[i]["global_step"])
    for i, j in itertools.pairwise(order):
        if checkpoints[i]["global_step"] == checkpoints[j]["global_step"]:
            raise ValueError(
                f"{paths[i]} and {paths[j]} are both at global_step "
                f"{checkpoints[i]['global_step']}: the same checkpoint twice? (last.ckpt repeats "
                "the newest one); it would count double in the average"
            )
    ordered = [checkpoints[i]["state_dict"] for i in order]
    last = checkpoints[order[-1]]
    averaged = {key: value for key, value in last.items() if key not in RESUME_STATE}
    averaged["state_dict"] = {key: _mean([sd[key] for sd in ordered]) for key in ordered[-1]}
    sources = [{"path": str(paths[i]), "global_step": checkpoints[i]["global_step"]} for i in order]
    # Provenance travels into config.json (and the model card) through `save_pretrained`.
    averaged["provenance"] = {**last.get("provenance", {}), "averaged_from": sources}
    return averaged


def last_checkpoints(directory: str | Path, n: int) -> list[Path]:
    """The `n` checkpoints of `directory` with the highest global_step, oldest first.

    Steps are read from the files, not from their names or times; files at one step (last.ckpt
    beside the checkpoint it repeats) count once. A run folder holding `checkpoints/` works too.
    """
    directory = Path(directory)
    if n < 1:
        raise ValueError(f"cannot average the last {n} checkpoints; give N >= 1")
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    if not any(directory.glob("*.ckpt")) and (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"  # e.g. lightning_logs/version_0
    by_step: dict[int, Path] = {}
    # Descriptive names before last*.ckpt, so that a repeated step keeps the former.
    for path in sorted(directory.glob("*.ckpt"), key=lambda p: (p.name.startswith("last"), p)):
        by_step.setdefault(read_checkpoint(path)["global_step"], path)
    if len(by_step) < n:
        steps = ", ".join(map(str, sorted(by_step))) or "none"
        raise ValueError(
            f"{directory}: found {len(by_step)} checkpoint(s) at distinct global steps "
            f"(steps: {steps}) but --last {n} needs {n}; {USAGE_HINT}"
        )
    return [by_step[step] for step in sorted(by_step)[-n:]]


def write(checkpoint: dict, out: str | Path) -> str:
    """Write a checkpoint (`out` ends in .ckpt) or a model directory; returns what was done."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".ckpt":
        AtomicCheckpointIO().save_checkpoint(checkpoint, out)
        return f"checkpoint written to {out}\n  export: seqkit export {out} DIR"
    if not checkpoint.get("tokenizers"):
        raise ValueError("the checkpoints hold no tokenizer, so write a .ckpt, not a directory")
    # Through a file and `load_checkpoint`: the one safe (weights_only) way to a Seq2Seq.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        torch.save(checkpoint, Path(tmp) / "averaged.ckpt")
        pretrained(load_checkpoint(Path(tmp) / "averaged.ckpt")).save_pretrained(out)
    return f"model written to {out}\n  translate: seqkit translate --model {out} < src.txt"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkit average",
        usage="seqkit average CKPT [CKPT ...] --out OUT\n"
        "       seqkit average --last N DIR --out OUT",
        description="Average the weights of checkpoints of one run into one model. OUT ending "
        "in .ckpt gets a checkpoint (for seqkit test/export), anything else a model directory "
        "(for seqkit translate/evaluate).",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="CKPT",
        help="checkpoints; with --last, one checkpoint folder (or a run folder with checkpoints/)",
    )
    parser.add_argument(
        "--last", type=int, metavar="N", help="average DIR's N checkpoints of highest global step"
    )
    parser.add_argument("--out", required=True, help="a .ckpt file or a model directory")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.last is not None and len(args.paths) != 1:
        parser.error("--last N takes one directory: seqkit average --last N DIR --out OUT")
    if args.last is None and any(Path(p).is_dir() for p in args.paths):
        parser.error("a directory needs --last N: seqkit average --last N DIR --out OUT")
    try:
        paths = args.paths if args.last is None else last_checkpoints(args.paths[0], args.last)
        if any(Path(p).resolve() == Path(args.out).resolve() for p in paths):
            raise ValueError(f"--out {args.out} would overwrite one of the checkpoints averaged")
        checkpoint = average_checkpoints(paths)
        print(f"averaged {len(paths)} checkpoint(s):")
        for source in checkpoint["provenance"]["averaged_from"]:
            print(f"  step {source['global_step']:>8}  {source['path']}")
        print(write(checkpoint, args.out))
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"seqkit average: {err}")


if __name__ == "__main__":
    main()
