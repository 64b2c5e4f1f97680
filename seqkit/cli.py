"""The `seqkit` command: LightningCLI's fit/validate/test/predict; translate, evaluate, export."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

USAGE = """usage: seqkit COMMAND [options]

Training (LightningCLI; `seqkit COMMAND --help` lists every option):
  fit        train a recipe: seqkit fit --config recipes/transformer-numbers.yaml
             (then tests the best checkpoint and exports it next to the logs)
  validate   score a checkpoint on the validation split
  test       score a checkpoint on the test split
  predict    the test split's (or a "predict" split's) translations or labels, in order,
             into LOG_DIR/predictions.txt

Using trained models:
  predict    label or read image files: seqkit predict --model DIR a.png b.png
  export     write a checkpoint as a model directory: seqkit export CKPT DIR
  average    average checkpoints: seqkit average --last 5 RUN_DIR/checkpoints --out DIR
  translate  translate lines: seqkit translate --model DIR < src.txt > hyp.txt
  evaluate   sacreBLEU and chrF: seqkit evaluate --model DIR --src test.en.gz --ref test.de.gz
"""


class SaveConfig(SaveConfigCallback):
    """Writes config.yaml beside the logs and gives the resolved config to W&B runs."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.parser.dump(self.config, skip_none=False, format="json")
                logger.experiment.config.update({"recipe": json.loads(config)})


class SeqkitCLI(LightningCLI):
    """LightningCLI whose `fit` ends by testing the best checkpoint and exporting it, whose
    `predict` writes the translations in the data's order, and whose `--wandb PROJECT` logs
    the run to Weights & Biases with sample translations and attention maps."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--wandb",
            type=str | None,
            default=None,
            help="Also log to this Weights & Biases project: metrics, the resolved config, "
            "sample translations and attention maps every validation (WANDB_MODE=offline "
            "works without an account)",
        )
        parser.add_argument(
            "--wandb_log_model",
            type=bool | Literal["all"],
            default=False,
            help="With --wandb: upload the best checkpoint (true) or every one (all) as artifacts",
        )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        project = self._get(self.config_init, "wandb")
        if project:
            from lightning.pytorch.loggers import WandbLogger

            from seqkit.callbacks import AttentionMaps, TranslationSamples

            log_model = self._get(self.config_init, "wandb_log_model")
            # After the loggers the recipe has, so that log_dir and checkpoints stay there.
            logger = WandbLogger(
                project=project, log_model=log_model, save_dir=trainer.default_root_dir
            )
            trainer.loggers = [*trainer.loggers, logger]
            if hasattr(self.model, "generate"):  # translation models
                trainer.callbacks[:0] = [TranslationSamples(), AttentionMaps()]
        return trainer

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.interrupted or not hasattr(self.model, "save_pretrained"):
            return
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback else ""
        metrics = {}
        splits = getattr(self.datamodule, "splits", None)  # image data always has a test split
        if splits is None or "test" in splits:
            # Testing the best checkpoint leaves its weights in self.model.
            results = trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True
            )
            metrics = {k: round(float(v), 4) for k, v in results[0].items()} if results else {}
        # Beside the checkpoints (version_N/model), so that runs never overwrite each other.
        run_dir = Path(best).parent.parent if best else Path(trainer.log_dir or ".")
        recipes = self._get(self.config, "config") or []
        if recipes:
            self.model.provenance["recipe"] = " ".join(str(path) for path in recipes)
        if trainer.is_global_zero:
            out = self.model.save_pretrained(run_dir / "model", metrics=metrics)
            text_source = not getattr(self.model.config, "src_patch_size", 1)
            use = (
                f"translate --model {out} < src.txt"
                if text_source
                else f"predict --model {out} IMAGE..."
            )
            print(f"\nmodel written to {out}\n  use it: seqkit {use}")

    def after_predict(self) -> None:
        """Write the translations in the data's order, gathered from every rank once."""
        predictions = [pair for batch in self.trainer.predict_loop.predictions for pair in batch]
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = [pair for part in gathered for pair in part]
        run_dir = Path(self.trainer.log_dir or ".")  # every rank: log_dir broadcasts
        if not self.trainer.is_global_zero or not predictions:
            return
        rows = sorted(dict(predictions).items())  # repeated rows (evened-out ranks) count once
        out = run_dir / "predictions.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(f"{text}\n" for _, text in rows), encoding="utf-8")
        print(f"{len(rows)} translations written to {out}")


def cli_main(args: list[str] | None = None, run: bool = True) -> SeqkitCLI:
    """LightningCLI over every seqkit LightningModule and LightningDataModule (by class_path)."""
    return SeqkitCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=SaveConfig,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _read(path: str | None) -> list[str]:
    from seqkit.data.sources import read_lines

    if path is None or path == "-":
        return read_lines(sys.stdin.buffer, name="<stdin>", allow_empty=True)
    return read_lines(path, allow_empty=True)


def _load(args: argparse.Namespace):
    """The model named by --model, on --device, with --alpha applied."""
    from seqkit.lit.seq2seq import Seq2Seq

    model = Seq2Seq.from_pretrained(args.model).to(args.device)
    if args.alpha is not None:
        model.decoding = replace(model.decoding, alpha=args.alpha)
    return model


def _decoding_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (seqkit export)")
    parser.add_argument("--beam", type=int, help="beam size (default: the model's, 1 = greedy)")
    parser.add_argument("--alpha", type=float, help="length penalty exponent")
    parser.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def translate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit translate", description="Translate plain text line by line (batched)."
    )
    _decoding_args(parser)
    parser.add_argument("--src", help="input file, .gz allowed (default: stdin)")
    parser.add_argument("--out", help="output file (default: stdout)")
    args = parser.parse_args(argv)
    model = _load(args)
    lines = _read(args.src)
    hyps = model.translate(lines, args.beam, args.max_tokens, progress=args.src is not None)
    text = "".join(h + "\n" for h in hyps)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def evaluate_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit evaluate",
        description="Translate --src and score it against --ref with sacreBLEU and chrF "
        "(the code path validation uses).",
    )
    _decoding_args(parser)
    parser.add_argument("--src", required=True, help="source file, .gz allowed")
    parser.add_argument("--ref", required=True, help="reference file, .gz allowed")
    parser.add_argument("--out", help="also write the translations here")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    args = parser.parse_args(argv)
    from seqkit.metrics import translation_scores

    sources, refs = _read(args.src), _read(args.ref)
    if len(sources) != len(refs):
        sys.exit(
            f"seqkit evaluate: {args.src} has {len(sources)} lines but {args.ref} has "
            f"{len(refs)}; they must be aligned line by line"
        )
    model = _load(args)
    hyps = model.translate(sources, args.beam, args.max_tokens, progress=True)
    if args.out:
        Path(args.out).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    scores = translation_scores(hyps, refs)
    if args.json:
        print(json.dumps(scores, indent=2))
        return
    print(f"BLEU = {scores['bleu']:.2f}  {scores['bleu_signature']}")
    print(f"chrF = {scores['chrf']:.2f}  {scores['chrf_signature']}")
    print(f"exact match = {scores['exact_match']:.4f}")


def export_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit export",
        description="Write a training checkpoint as a self-contained model directory "
        "(config.json, model.safetensors, tokenizer file(s)).",
    )
    parser.add_argument("checkpoint", help="a .ckpt file written by seqkit fit")
    parser.add_argument("directory", help="where to write the model")
    args = parser.parse_args(argv)
    from seqkit.lit.seq2seq import load_checkpoint

    if not Path(args.checkpoint).is_file():
        sys.exit(f"seqkit export: {args.checkpoint}: no such checkpoint file")
    out = load_checkpoint(args.checkpoint).save_pretrained(args.directory)
    print(f"model written to {out}")


def predict_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit predict",
        description="Label image files with an image classifier, or read them with an "
        "image-to-text seq2seq model; prints FILE<TAB>OUTPUT per image. (Without --model DIR, "
        "`seqkit predict` is LightningCLI's: it predicts a recipe's test split.)",
    )
    parser.add_argument("--model", required=True, help="model directory (seqkit export)")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    parser.add_argument("--beam", type=int, help="beam size of a seq2seq model")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    args = parser.parse_args(argv)
    from seqkit.lit.classifier import Classifier
    from seqkit.lit.seq2seq import Seq2Seq
    from seqkit.models import ImageModelConfig, ModelConfig, read_model_config

    _, config = read_model_config(args.model, ModelConfig | ImageModelConfig)
    if isinstance(config, ImageModelConfig):
        model = Classifier.from_pretrained(args.model).to(args.device)
        outputs = model.predict(args.images, batch_size=args.batch_size)
    else:
        model = Seq2Seq.from_pretrained(args.model).to(args.device)
        outputs = model.predict(args.images, beam_size=args.beam, batch_size=args.batch_size)
    for path, output in zip(args.images, outputs, strict=True):
        print(f"{path}\t{output}")


def average_main(argv: list[str]) -> None:
    from seqkit import average

    average.main(argv)


TOOLS = {
    "translate": translate_main,
    "evaluate": evaluate_main,
    "export": export_main,
    "average": average_main,
}


def _names_model_directory(args: list[str]) -> bool:
    """Whether `--model` names an exported model (LightningCLI's takes a class or options)."""
    for i, arg in enumerate(args):
        value = arg.partition("=")[2] if arg.startswith("--model=") else None
        if arg == "--model" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None:
            return (Path(value) / "config.json").is_file()
    return False


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    from seqkit.data.sources import DataError

    try:
        if args[0] in TOOLS:
            TOOLS[args[0]](args[1:])
        elif args[0] == "predict" and _names_model_directory(args[1:]):
            predict_main(args[1:])
        else:
            cli_main(argv)  # None: LightningCLI reads sys.argv itself
    except (DataError, FileNotFoundError) as err:  # bad input: its message says what to fix
        sys.exit(f"seqkit {args[0]}: {err}")


if __name__ == "__main__":
    main()
