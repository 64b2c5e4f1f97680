"""LightningCLI for seqkit: `seqkit fit/validate/test/predict` over every LightningModule and
LightningDataModule, by class path."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from seqkit.errors import ConfigError
from seqkit.generator import TextGenerator
from seqkit.labeler import Labeler
from seqkit.lit.checkpoint_io import AtomicCheckpointIO
from seqkit.lit.classifier import Classifier
from seqkit.lit.lm import LanguageModel
from seqkit.lit.seq2seq import Seq2Seq
from seqkit.lit.text2image import TextToImage
from seqkit.translator import Translator, one_line


class SaveConfig(SaveConfigCallback):
    """Writes config.yaml beside the logs and gives the resolved config to W&B runs."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = self.parser.dump(self.config, skip_none=False, format="json")
                logger.experiment.config.update({"recipe": json.loads(config)})


class SeqkitCLI(LightningCLI):
    """LightningCLI whose `fit` ends by testing the best checkpoint (or the averaged weights,
    with `seqkit.callbacks.AverageCheckpoints`) and exporting it, whose
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

    def _parse_ckpt_path(self) -> None:
        """LightningCLI writes a checkpoint's hyperparameters over the parsed config, dropping
        the command line's. Keep what a resumed run may change as given (RESUMABLE), and
        refuse an architecture that differs from the checkpoint's, naming the fields."""
        subcommand = self.config.get("subcommand")
        if subcommand and self.config[subcommand].get("ckpt_path") == "last":
            root = self.config[subcommand].trainer.get("default_root_dir") or "."
            self.config[subcommand].ckpt_path = str(last_checkpoint(Path(root)))
        given = self.config[subcommand].clone() if subcommand else None
        super()._parse_ckpt_path()
        if given is None or "init_args" not in (given.get("model") or {}):
            return
        resumed, given = self.config[subcommand].model.init_args, given.model.init_args
        # A fine-tuning run's architecture is its init_from's, not the recipe's `config`
        # defaults; the data module still needs that model's tokenizer (instantiate_classes).
        self._resumed_init_from = given.get("init_from")
        if "config" in given and "config" in resumed and not self._resumed_init_from:
            old, new = resumed.config.as_dict(), given.config.as_dict()
            # A size left at 0 is filled in from the data: not a change.
            changed = {
                k: (old[k], v) for k, v in new.items() if k in old and v != old[k] and v != 0
            }
            if changed:
                fields = ", ".join(f"{k}={v} (checkpoint: {o})" for k, (o, v) in changed.items())
                raise ConfigError(
                    f"--ckpt_path: the checkpoint's architecture differs: model.config {fields}; "
                    "a resumed run keeps it (drop those settings, or fine-tune with "
                    "model.init_from)"
                )
        for key in RESUMABLE:
            if key in given:
                resumed[key] = given[key]

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a ValueError that seqkit's own code raised while setting up (a data module
        or model refusing a setting or an input, by name) ends the command with its message,
        as at instantiation. One raised elsewhere (a library's internals) keeps its traceback."""
        try:
            super()._run_subcommand(subcommand)
        except ValueError as err:
            if isinstance(err, ConfigError) or not _raised_by_seqkit(err):
                raise
            raise ConfigError(str(err)) from err

    def instantiate_classes(self) -> None:
        """Instantiate, then hand a fine-tuned model's tokenizer to the data module.

        Explicitly, once, model to data: `link_arguments` cannot express it, because data
        modules differ (ImageData has no tokenizer) and a link would overwrite a tokenizer
        the user gave, which `Seq2Seq.setup` should refuse by name instead.
        """
        try:
            super().instantiate_classes()
        except ValueError as err:  # jsonargparse wraps a class's own message in its Namespace
            raise ConfigError(str(_first_cause(err))) from err
        init_from = getattr(self.model, "init_from", None) or getattr(
            self, "_resumed_init_from", None
        )
        data = self.datamodule
        if init_from and hasattr(data, "use_tokenizer") and not data.tokenizer_dir:
            data.use_tokenizer(init_from)

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The trainer, writing checkpoints atomically where it would use Lightning's plain
        TorchCheckpointIO (a checkpoint IO plugin given on the command line is kept)."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
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
            if isinstance(self.model, Seq2Seq):  # translation models
                trainer.callbacks[:0] = [TranslationSamples(), AttentionMaps()]
        return trainer

    def after_fit(self) -> None:
        """Test the run's model and export it: the best checkpoint, or with AverageCheckpoints
        the averaged weights the model holds (validated first, to compare with the best)."""
        from seqkit.average import AverageCheckpoints

        trainer = self.trainer
        if trainer.interrupted or not isinstance(
            self.model, Seq2Seq | Classifier | LanguageModel | TextToImage
        ):
            return
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback else ""
        averaging = [c for c in trainer.callbacks if isinstance(c, AverageCheckpoints)]
        if averaging and averaging[0].averaged_from:
            averaging[0].validate(trainer, self.model, self.datamodule)
            best = ""  # the model holds the averaged weights: test those, not a reloaded best
        metrics = {}
        splits = getattr(self.datamodule, "splits", None)  # image data always has a test split
        if splits is None or "test" in splits:
            # Testing the best checkpoint leaves its weights in self.model.
            results = trainer.test(
                self.model, datamodule=self.datamodule, ckpt_path=best or None, weights_only=True
            )
            metrics = {k: round(float(v), 4) for k, v in results[0].items()} if results else {}
        # Beside the checkpoints (version_N/model), so that runs never overwrite each other.
        run_dir = run_directory(trainer)
        recipes = self._get(self.config, "config") or []
        if recipes:
            self.model.provenance["recipe"] = " ".join(str(path) for path in recipes)
        if trainer.is_global_zero:
            model = self.model
            out = pretrained(model).save_pretrained(run_dir / "model", metrics=metrics).resolve()
            if isinstance(model, LanguageModel):
                use = f'generate --model {out} --prompt "..."'
            elif isinstance(model, TextToImage):
                use = f"generate --model {out} --prompt seven --num-samples 16 --out grid.png"
            elif isinstance(model, Seq2Seq) and model.image_source is None:
                use = f"translate --model {out} < src.txt"
            else:
                use = f"predict --model {out} IMAGE..."
            print(f"\nmodel written to {out}\n  use it: seqkit {use}")
            if getattr(model, "lora", None) is not None:  # merged above; the adapter beside
                from seqkit.lora import ADAPTER_DIR, WEIGHTS_FILE

                size = (out / ADAPTER_DIR / WEIGHTS_FILE).stat().st_size
                print(f"  its LoRA adapter alone ({size / 1024:,.0f} KiB): {out / ADAPTER_DIR}")

    def after_predict(self) -> None:
        """Write the translations in the data's order, gathered from every rank once."""
        predictions = [pair for batch in self.trainer.predict_loop.predictions for pair in batch]
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, predictions)
            predictions = [pair for part in gathered for pair in part]
        run_dir = run_directory(self.trainer)
        if not self.trainer.is_global_zero or not predictions:
            return
        rows = sorted(dict(predictions).items())  # repeated rows (evened-out ranks) count once
        out = run_dir / "predictions.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        # One line per row, always: a hypothesis holding a line break must not become two.
        out.write_text("".join(f"{one_line(str(text))}\n" for _, text in rows), encoding="utf-8")
        print(f"{len(rows)} translations written to {out}")


RESUMABLE = ("optimizer", "decoding", "label_smoothing", "nonfinite_patience", "tbptt_steps",
             "gradient_clip_val")  # fmt: skip
"""Settings of seqkit's LightningModules that a run resumed with --ckpt_path takes from the
command line."""


def run_directory(trainer: L.Trainer) -> Path:
    """This run's own directory, for its exported model and predictions: where its
    checkpoints go (a resumed run's `best_model_path` may still be an earlier run's), else its
    CSV or TensorBoard logger's versioned directory, else one under `default_root_dir` named
    by its logger's version (e.g. a W&B run id), never the current directory."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath).parent
    if isinstance(trainer.logger, CSVLogger | TensorBoardLogger):
        return Path(trainer.log_dir)
    version = getattr(trainer.logger, "version", None)
    name = f"version_{version}" if version is not None else time.strftime("run-%Y%m%d-%H%M%S")
    return Path(trainer.default_root_dir) / name


def last_checkpoint(root: Path) -> Path:
    """The newest `last.ckpt` (or Lightning's `last-vN.ckpt`) of the runs under `root`
    (`ROOT/LOGGER/version_N/checkpoints/`), which `--ckpt_path last` resumes: Lightning alone
    looks in the new run's own, empty, folder and starts over.

    Raises:
        ConfigError: naming the folders searched, when there is none.
    """
    pattern = "*/version_*/checkpoints/last*.ckpt"
    found = [p for p in root.glob(pattern) if p.is_file()]
    if not found:
        hint = "give the checkpoint's path, or save one with ModelCheckpoint(save_last=True)"
        raise ConfigError(f"--ckpt_path last: no last.ckpt in {root / pattern}; {hint}")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    print(f"resuming from {newest}", file=sys.stderr)
    return newest


def _raised_by_seqkit(err: BaseException) -> bool:
    """Whether the innermost frame of `err`'s traceback is seqkit's own code."""
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE)


PACKAGE = Path(__file__).resolve().parents[1]
"""The seqkit package's directory."""


def _first_cause(err: BaseException) -> BaseException:
    """The exception that started a chain: what a model or data class said was wrong."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    return err


def cli_main(args: list[str] | None = None, run: bool = True) -> SeqkitCLI:
    """LightningCLI over every seqkit LightningModule and LightningDataModule (by class_path)."""
    # The docstring under each config field becomes its --help text (and a YAML comment).
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
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


def load_checkpoint(path: str | Path) -> Seq2Seq | Classifier | LanguageModel:
    """A Lightning checkpoint of Seq2Seq, Classifier or LanguageModel, read without unpickling code
    (weights_only: a file that holds code is refused with a ValueError naming it); the class
    is the one the checkpoint names, any model family."""
    from seqkit.average import read_checkpoint

    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    # By the class path LightningCLI saved, else by a setting only that class has.
    name = str(hparams.get("_class_path", "")).rpartition(".")[2]
    cls = {"Classifier": Classifier, "LanguageModel": LanguageModel,
           "TextToImage": TextToImage}.get(name, Seq2Seq)  # fmt: skip
    if not name and "tbptt_steps" in hparams:
        cls = LanguageModel
    # LightningCLI's instantiator would parse the saved `config` dict against the signature's
    # union, as its default's type (TransformerConfig), refusing an RNN's fields: the
    # modules build a config from a plain dict themselves (`config_from_dict`).
    hparams.pop("_instantiator", None)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return cls.load_from_checkpoint(buffer, map_location="cpu", weights_only=True)


def pretrained(
    module: Seq2Seq | Classifier | LanguageModel,
) -> Translator | Labeler | TextGenerator:
    """The inference object of a LightningModule, which writes its model directory."""
    if isinstance(module, TextToImage):
        return module.generator
    if isinstance(module, LanguageModel):
        return module.generator
    return module.translator if isinstance(module, Seq2Seq) else module.labeler
