"""Checkpoint averaging: the element-wise mean of the weights of one run's last checkpoints.

Averaging the last few checkpoints of a run (Vaswani et al., 2017, averaged the last 5) smooths
out the noise of the final updates and often gains a little BLEU at no training cost. The
checkpoints must hold one model (same config, weights and tokenizer); they are read as plain
data (`torch.load(weights_only=True)`, memory-mapped) and never unpickled.

    seqkit average --last 5 lightning_logs/version_0/checkpoints --out averaged
    seqkit average a.ckpt b.ckpt c.ckpt --out averaged.ckpt

`AverageCheckpoints` does the same during `seqkit fit`, from weights it keeps in memory.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from seqkit.lit.checkpoint_io import AtomicCheckpointIO

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
    if not zipfile.is_zipfile(path):  # torch.save's format; PyTorch's own message is about mmap
        raise ValueError(f"{path}: not a PyTorch checkpoint (the .ckpt files seqkit fit writes "
                         "are zip archives)")  # fmt: skip
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


def mean(tensors: Sequence[Tensor]) -> Tensor:
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
    averaged["state_dict"] = {key: mean([sd[key] for sd in ordered]) for key in ordered[-1]}
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
    by_step = _by_step(directory)
    if not by_step and (directory / "checkpoints").is_dir():
        directory = directory / "checkpoints"  # e.g. lightning_logs/version_0
        by_step = _by_step(directory)
    if len(by_step) < n:
        steps = ", ".join(map(str, sorted(by_step))) or "none"
        raise ValueError(
            f"{directory}: found {len(by_step)} checkpoint(s) at distinct global steps "
            f"(steps: {steps}) but --last {n} needs {n}; {USAGE_HINT}"
        )
    return [by_step[step] for step in sorted(by_step)[-n:]]


def _by_step(directory: Path) -> dict[int, Path]:
    """`directory`'s checkpoints by global_step, skipping averages (`provenance` lists what
    they were averaged from, e.g. the run folder's averaged.ckpt): averaging one again would
    count its steps twice."""
    by_step: dict[int, Path] = {}
    # Descriptive names before last*.ckpt, so that a repeated step keeps the former.
    for path in sorted(directory.glob("*.ckpt"), key=lambda p: (p.name.startswith("last"), p)):
        checkpoint = read_checkpoint(path)
        if "averaged_from" not in (checkpoint.get("provenance") or {}):
            by_step.setdefault(checkpoint["global_step"], path)
    return by_step


def write(checkpoint: dict, out: str | Path) -> str:
    """Write a checkpoint (`out` ends in .ckpt) or a model directory; returns what was done."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".ckpt":
        AtomicCheckpointIO().save_checkpoint(checkpoint, out)
        return f"checkpoint written to {out}\n  export: seqkit export {out} DIR"
    if not checkpoint.get("tokenizers"):
        raise ValueError("the checkpoints hold no tokenizer, so write a .ckpt, not a directory")
    from seqkit.lit.cli import load_checkpoint, pretrained

    # Through a file and `load_checkpoint`: the one safe (weights_only) way to a Seq2Seq.
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        torch.save(checkpoint, Path(tmp) / "averaged.ckpt")
        pretrained(load_checkpoint(Path(tmp) / "averaged.ckpt")).save_pretrained(out)
    return f"model written to {out}\n  translate: seqkit translate --model {out} < src.txt"


def average_into(module: torch.nn.Module, snapshots: Sequence[dict[str, Tensor]]) -> None:
    """Set `module`'s parameters to the element-wise `mean` of `snapshots` (name -> tensor, as
    `named_parameters` names them); its buffers keep their values. Raises ValueError naming
    the first parameter that a snapshot lacks, adds or holds in another shape."""
    params = dict(module.named_parameters())
    for i, snapshot in enumerate(snapshots):
        for name in sorted(params.keys() ^ snapshot.keys()):
            where = "the model" if name in params else f"weight copy {i}"
            raise ValueError(
                f"parameter {name!r} is only in {where}: the copies are of another model"
            )
        for name, param in params.items():
            if snapshot[name].shape != param.shape:
                raise ValueError(
                    f"parameter {name!r} is {tuple(param.shape)} in the model but "
                    f"{tuple(snapshot[name].shape)} in weight copy {i}"
                )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(mean([snapshot[name] for snapshot in snapshots]))


class AverageCheckpoints(L.Callback):
    """Averages the weights of the last steps into the model when fitting ends.

    `seqkit average --last N` (fairseq's `average_checkpoints.py`) done from copies kept in
    memory, so that no checkpoint files need to be kept for it.

    Every `every_n_train_steps` optimizer steps it copies the parameters to CPU memory and
    keeps the newest `last` copies. When fitting ends (max_steps, max_epochs, max_time, early
    stopping; not an interrupt or an error) the final weights join them unless they are the
    newest already, so that the steps after the last copy count, and the model's parameters
    become their element-wise mean (`mean`); buffers keep their final values. The averaged
    weights are written to `filename` in the run directory, beside `checkpoints/`, and
    `provenance["averaged_from"]` lists their steps (into the exported config.json).

    The rule for `seqkit fit`: with this callback the averaged weights are the run's model.
    It validates them (logged as `averaged/val/...` at the final step, printed beside the best
    checkpoint's score), tests them and exports them, instead of the best checkpoint, which
    stays on disk (`seqkit export BEST.ckpt DIR`).

    Costs: `last` copies of the parameters in CPU memory per process, and in every checkpoint
    as this callback's state, so that a run resumed with `--ckpt_path` averages the same
    copies. Under DDP each rank keeps identical copies and ends with identical weights; rank
    0 writes the file. Sharded strategies (FSDP, DeepSpeed) are refused.
    """

    def __init__(
        self, last: int = 5, every_n_train_steps: int = 100, filename: str = "averaged.ckpt"
    ) -> None:
        """
        Args:
            last: How many weight copies to average, the newest; the final weights are one.
                Vaswani et al. (2017) averaged 5 checkpoints (base) or 20 (big).
            every_n_train_steps: Optimizer steps between copies: the average spans the last
                `last` x `every_n_train_steps` steps of training.
            filename: The averaged checkpoint's file name, in the run directory (where
                `checkpoints/` and `model/` are); "" writes none.
        """
        if last < 1:
            raise ValueError(f"AverageCheckpoints: last must be at least 1, got {last}")
        if every_n_train_steps < 1:
            raise ValueError(
                f"AverageCheckpoints: every_n_train_steps must be at least 1, got "
                f"{every_n_train_steps}"
            )
        self.last, self.every_n_train_steps, self.filename = last, every_n_train_steps, filename
        self.snapshots: list[tuple[int, dict[str, Tensor]]] = []  # (global step, parameters)
        self.averaged_from: list[int] = []  # the steps averaged, once fitting has ended
        self.path: Path | None = None  # the averaged checkpoint, once written

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

        if stage == "fit" and isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy):
            raise ValueError(
                f"AverageCheckpoints: {type(trainer.strategy).__name__} shards the weights "
                "over the ranks; averaging needs whole copies (use strategy=ddp)"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.averaged_from, self.path = [], None
        getattr(pl_module, "provenance", {}).pop("averaged_from", None)  # trained on again

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # accumulating gradients, several batches end one step
        if step and step % self.every_n_train_steps == 0 and not self._has(step):
            self._take(step, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if not step:
            return
        if not self._has(step):
            self._take(step, pl_module)
        self.averaged_from = [s for s, _ in self.snapshots]
        if len(self.snapshots) < self.last:
            rank_zero_warn(
                f"AverageCheckpoints: training ended at step {step} with {len(self.snapshots)} "
                f"weight copies (steps {self.averaged_from}), fewer than last={self.last}"
            )
        average_into(pl_module, [weights for _, weights in self.snapshots])
        if hasattr(pl_module, "provenance"):
            pl_module.provenance["averaged_from"] = [{"global_step": s} for s in self.averaged_from]
        written = ""
        if self.filename:
            from seqkit.lit.cli import run_directory

            path = Path(trainer.strategy.broadcast(str(run_directory(trainer) / self.filename)))
            trainer.save_checkpoint(path, weights_only=True)  # rank 0, the run's checkpoint IO
            self.path, written = path, f", written to {path}"
        rank_zero_info(f"averaged the weights of steps {self.averaged_from}{written}")

    def _has(self, step: int) -> bool:
        return bool(self.snapshots) and self.snapshots[-1][0] == step

    def _take(self, step: int, pl_module: L.LightningModule) -> None:
        weights = {
            name: p.detach().to("cpu", copy=True) for name, p in pl_module.named_parameters()
        }
        self.snapshots = [*self.snapshots, (step, weights)][-self.last :]

    def state_dict(self) -> dict:
        return {"snapshots": [{"global_step": s, "weights": w} for s, w in self.snapshots]}

    def load_state_dict(self, state_dict: dict) -> None:
        snapshots = state_dict.get("snapshots", [])
        self.snapshots = [(int(s["global_step"]), s["weights"]) for s in snapshots][-self.last :]

    def validate(
        self,
        trainer: L.Trainer,
        model: L.LightningModule,
        datamodule: L.LightningDataModule | None = None,
    ) -> dict[str, float]:
        """Validate the averaged weights `model` holds after fitting; returns and logs the
        metrics as `averaged/val/...` at the final step (a second `val/...` point there would
        read as the trained weights' curve), and prints them beside the best checkpoint's."""
        loggers, trainer.loggers = trainer.loggers, []
        try:
            results = trainer.validate(model, datamodule=datamodule, verbose=False)
        finally:
            trainer.loggers = loggers
        metrics = {f"averaged/{k}": float(v) for k, v in (results[0] if results else {}).items()}
        for logger in loggers if metrics else []:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        callback = trainer.checkpoint_callback
        monitor = getattr(callback, "monitor", None)
        shown = (
            {monitor: metrics[f"averaged/{monitor}"]} if f"averaged/{monitor}" in metrics else {}
        )
        text = ", ".join(f"{k} {v:.4g}" for k, v in (shown or metrics).items())
        if shown and callback.best_model_score is not None:
            text += f" (best checkpoint: {float(callback.best_model_score):.4g})"
        rank_zero_info(f"averaged weights of steps {self.averaged_from}: {text or 'no val split'}")
        return metrics


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
