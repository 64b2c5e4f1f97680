"""Seq2Seq: trains and scores any seqkit encoder–decoder; inference and model directories
belong to `Translator`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MeanMetric

from seqkit import lora as adapters
from seqkit.data.inputs import ModelInputs
from seqkit.data.tags import target_languages
from seqkit.data.tokenizer import Tokenizers
from seqkit.data.vocab_extension import extends
from seqkit.decoding import DecodingConfig
from seqkit.lit import finetune
from seqkit.lit.loss import check_label_smoothing, label_smoothed_nll
from seqkit.lit.nonfinite import NonFiniteGuard
from seqkit.lit.optim import (
    OptimizerConfig,
    as_config,
    configure_adamw,
)
from seqkit.lit.pairing import PairsWithData
from seqkit.lora import LoraConfig
from seqkit.metrics import translation_scores
from seqkit.models import (
    ModelConfig,
    TransformerConfig,
    build_model,
    config_from_dict,
    split_legacy_source,
)
from seqkit.models import config_to_dict as model_config_to_dict
from seqkit.models.patches import ImageSource
from seqkit.models.source import check_source_sizes, source_sizes_known
from seqkit.translator import Translator


class Seq2Seq(PairsWithData):
    """Sequence-to-sequence training with label-smoothed cross-entropy, AdamW and warm-up,
    validation sacreBLEU/chrF from greedy decoding and beam search at test time.

    Args:
        config: the model; vocabulary sizes left at 0 come from the data module.
        optimizer: AdamW and its learning-rate schedule.
        decoding: how test and predict decode (validation: greedily, `as_greedy`).
        label_smoothing: mass spread uniformly over the vocabulary (Szegedy et al., 2016).
        init_from: a model directory (`save_pretrained`, `seqkit export`) to fine-tune: its
            architecture, weights and tokenizer are used; the data module must encode with
            that tokenizer (`seqkit fit` hands it over). `config` may then only change
            dropout rates.
        freeze: parts left untrained: "embeddings" (every token and position embedding,
            and the output projection when tied to one) and/or "encoder" (its layers).
        nonfinite_patience: a training step whose loss is NaN or infinite is skipped and
            counted; this many in a row stop training with an error.
        lora: LoRA adapters (Hu et al., 2021) on the network's nn.Linear layers, for
            fine-tuning `init_from` (not with `freeze`): only the adapters train; the
            exported model directory holds the merged weights and the adapter alone in
            its `adapter/` directory (`seqkit.lora`). Needs `pip install 'seqkit[lora]'`.
    """

    def __init__(
        self,
        config: ModelConfig = TransformerConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        decoding: DecodingConfig = DecodingConfig(),
        label_smoothing: float = 0.1,
        init_from: str | None = None,
        freeze: list[Literal["embeddings", "encoder"]] | None = None,
        nonfinite_patience: int = 10,
        lora: LoraConfig | None = None,
    ) -> None:
        super().__init__()
        self._legacy_source: dict = {}  # sizes older checkpoints kept in the config
        if isinstance(config, dict):
            self._legacy_source = split_legacy_source(config)[1]
            config = config_from_dict(config)
        finetune.check_freezable(list(freeze or ()))
        self.lora = as_config(LoraConfig, lora) if lora is not None else None
        adapters.check_options(self.lora, init_from, list(freeze or ()))
        pretrained = Translator.from_pretrained(init_from) if init_from is not None else None
        if pretrained is not None:
            config = finetune.fine_tuning_config(pretrained.config, config, init_from)
        self.config = config
        self.optim_config = as_config(OptimizerConfig, optimizer)
        self.decoding = as_config(DecodingConfig, decoding)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.guard = NonFiniteGuard(nonfinite_patience)
        self.init_from, self.freeze = init_from, list(freeze or ())
        self.save_hyperparameters()  # keeps the CLI's class path, for `--ckpt_path`
        self._update_hparams()
        self.tokenizers: Tokenizers | None = None
        self.image_source: ImageSource | None = None
        # Where the weights come from, for the model card: data, recipe, steps, metrics.
        self.provenance: dict = {"init_from": init_from} if init_from else {}
        self.net = build_model(config) if source_sizes_known(config) else None
        if pretrained is not None:
            self.tokenizers, self.image_source = pretrained.tokenizers, pretrained.image_source
            self.net = pretrained.net.train()
            if self.lora is not None:  # only the adapters train from here on
                self.net = adapters.apply_lora(self.net, self.lora)
                rank_zero_info(adapters.summary(self.net, self.lora))
        if self.net is not None:
            finetune.freeze(self.net, self.freeze)
        self.eval_loss, self.eval_nll = MeanMetric(), MeanMetric()
        self._outputs: list[tuple[int, str, str, int]] = []  # index, hyp, ref, first src id

    def _update_hparams(self) -> None:
        # Loggers (W&B, TensorBoard) record this snapshot: fields, not a dataclass repr.
        self._set_hparams(self._plain_hparams())

    def _plain_hparams(self) -> dict:
        """Plain data only, so checkpoints load with `torch.load(weights_only=True)`."""
        return {
            "config": model_config_to_dict(self.config),
            "optimizer": asdict(self.optim_config),
            "decoding": asdict(self.decoding),
            "label_smoothing": self.label_smoothing,
            # The checkpoint holds the weights and the config: loading it must not need the
            # directory the run started from.
            "init_from": None,
            "freeze": self.freeze,
            "lora": None,  # as init_from: on_load_checkpoint adapts the net from checkpoint["lora"]
            "nonfinite_patience": self.guard.patience,
        }

    @property
    def translator(self) -> Translator:
        """This module's network, tokenizers, decoding and image source, ready to decode."""
        if self.net is None or self.tokenizers is None:
            raise ValueError("this model has no network or tokenizer yet: fit it first")
        return Translator(self.net, self.tokenizers, self.decoding, self.image_source,
                          self.provenance)  # fmt: skip

    # -- pairing with the data: the data module hands over, the model takes ----------------
    def use_inputs(self, inputs: ModelInputs) -> None:
        """Take the tokenizer, image source and longest sequence a data module hands over.

        A tokenizer that extends the model's (`TranslationData(extend_vocab=N)`: the old
        tokens at their ids, more after them) grows the network's embeddings and output
        projection to match (`finetune.grow_vocabularies`) and the config's vocabulary sizes.

        Raises:
            ValueError: when they contradict this model (another tokenizer or image source,
                sequences longer than its positions).
        """
        old = self.tokenizers
        if old is not None and old.fingerprint() != inputs.tokenizers.fingerprint():
            if not extends(inputs.tokenizers, old):
                raise ValueError(
                    "the data module's tokenizer is not the one this model was trained with, "
                    "nor an extension of it; reuse the model's tokenizer (TranslationData("
                    "tokenizer=MODEL_DIR), extend_vocab=N to extend it) or train anew"
                )
            if getattr(self, "lora", None) is not None:
                raise ValueError("data.extend_vocab adds embedding rows that must train, but "
                                 "LoRA trains only its adapters: drop one of the two")  # fmt: skip
            if self.net is not None:
                finetune.grow_vocabularies(self.net, old, inputs.tokenizers)
            sizes = {"tgt_vocab_size": inputs.tokenizers.tgt_vocab_size}
            if self.image_source is None:
                sizes["src_vocab_size"] = inputs.tokenizers.src_vocab_size
            self.config = replace(self.config, **sizes)
            self._update_hparams()
        old, new = self.image_source, inputs.image_source
        if old and new and (old.patch_size, old.channels) != (new.patch_size, new.channels):
            raise ValueError(f"the data cuts {new} but the model reads {old}")
        self.tokenizers = inputs.tokenizers
        self.image_source = inputs.image_source or self.image_source
        limit = getattr(self.config, "max_positions", 0)
        if limit and inputs.max_length > limit:
            raise ValueError(
                f"data.max_length={inputs.max_length} exceeds model.config.max_positions="
                f"{limit}: lower the first or raise the second"
            )

    def configure_model(self) -> None:
        """Build the network once the data says how large the vocabularies are."""
        if self.tokenizers is not None:
            sizes = {"tgt_vocab_size": self.tokenizers.tgt_vocab_size}
            if self.image_source is None:  # an image source has no vocabulary
                sizes["src_vocab_size"] = self.tokenizers.src_vocab_size
            for key, size in sizes.items():
                if getattr(self.config, key) not in (0, size):
                    raise ValueError(f"model.config.{key}={getattr(self.config, key)} but the "
                                     f"tokenizer's vocabulary size is {size}; set it to 0 to "
                                     "follow the data")  # fmt: skip
            self.config = replace(self.config, **sizes)
            self._update_hparams()
        if self.net is None and source_sizes_known(self.config, self.image_source):
            self.net = build_model(self.config, self.image_source)
            finetune.freeze(self.net, self.freeze)
        elif self.net is None and self._trainer is not None:
            check_source_sizes(self.config)  # raises: fitting needs the sizes

    def on_fit_start(self) -> None:
        super().on_fit_start()
        data = getattr(self.trainer, "datamodule", None)
        if hasattr(data, "tokens_per_word") and "train" in getattr(data, "splits", {}):
            if self.init_from:  # what the model's tokenizer does to the new data
                finetune.report_fertility(self.init_from, data)
            # This model's own rate, for whoever fine-tunes it next (config.json provenance).
            self.provenance["tokens_per_word"] = data.tokens_per_word()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizers is not None:
            checkpoint["tokenizers"] = self.tokenizers.to_dict()
        source = self.image_source
        checkpoint["image_source"] = source.to_dict() if source is not None else None
        self._save_provenance(checkpoint)
        checkpoint["lora"] = adapters.to_dict(self.lora) if self.lora is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizers" in checkpoint:
            tokenizers = Tokenizers.from_dict(checkpoint["tokenizers"])
            self.use_inputs(ModelInputs(tokenizers, self.image_source))
        if checkpoint.get("image_source"):  # older checkpoints: sizes in the config
            data = {**self._legacy_source, **checkpoint["image_source"]}
            self.image_source = ImageSource.from_dict(data, "checkpoint image_source")
        self._finish_loading(checkpoint)
        if checkpoint.get("lora") and self.net is not None and not adapters.is_adapted(self.net):
            self.lora = as_config(LoraConfig, checkpoint["lora"])  # the same adapters, to fill
            self.net = adapters.apply_lora(self.net, self.lora)

    # -- training and evaluation ----------------------------------------------------------
    def configure_optimizers(self) -> dict:
        return configure_adamw(self.net, self.optim_config, self.trainer.estimated_stepping_batches)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def _step(self, batch: dict, stage: str) -> Tensor | None:
        if stage != "train" and batch.get("repeat"):
            return None  # a copy that only evens out ranks: count every sentence once
        src, src_mask = batch["src"], batch.get("src_mask")  # a mask comes with image patches
        logits = self.net(src, batch["tgt_in"], src_mask)
        loss, nll, n_tokens = label_smoothed_nll(logits, batch["tgt_out"], self.label_smoothing)
        if stage == "train":
            if not self.guard.usable(self, loss):
                return None  # Lightning skips this step's backward and optimizer step
            self.log("train/loss", loss, batch_size=n_tokens, prog_bar=True)
            self.log("train/ppl", nll.exp(), batch_size=n_tokens)
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n_tokens)
            return loss
        # Token-weighted means, summed over ranks by torchmetrics at the end of the epoch.
        self.eval_loss.update(loss.detach(), n_tokens)
        self.eval_nll.update(nll, n_tokens)
        decoding = self.decoding.as_greedy() if stage == "val" else self.decoding
        hyps = [t.text for t in self.translator.generate(src, src_mask, decoding)]
        # A multilingual model's sources start with their target language's tag.
        firsts = [-1] * len(hyps) if src.is_floating_point() else src[:, 0].tolist()
        self._outputs += zip(batch["index"].tolist(), hyps, batch["tgt_text"], firsts, strict=True)
        return loss

    def on_test_epoch_end(self) -> None:
        scores = self._log_scores("test")
        rank_zero_info(f"sacreBLEU {scores['bleu_signature']}\nchrF {scores['chrf_signature']}")

    def _log_scores(self, stage: str) -> dict:
        outputs = self._outputs
        self._outputs = []
        if self.trainer.world_size > 1:  # every rank scores the whole set
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = [o for part in gathered for o in part]
        # Distributed samplers repeat a few sentences to even out ranks: count each once.
        by_index = {index: (hyp, ref, first) for index, hyp, ref, first in outputs}
        hyps, refs, firsts = zip(*(by_index[i] for i in sorted(by_index)), strict=True)
        scores = translation_scores(list(hyps), list(refs))
        # Every rank holds the same values: sync_dist only tells Lightning so.
        self.log(f"{stage}/loss", self.eval_loss.compute(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/ppl", self.eval_nll.compute().exp(), sync_dist=True)
        self.eval_loss.reset()
        self.eval_nll.reset()
        for key in ("bleu", "chrf", "exact_match"):
            self.log(f"{stage}/{key}", scores[key], prog_bar=key == "bleu", sync_dist=True)
        self._log_directions(stage, hyps, refs, firsts)
        return scores

    def _log_directions(
        self, stage: str, hyps: Sequence[str], refs: Sequence[str], firsts: Sequence[int]
    ) -> None:
        """`{stage}/bleu_LANG` and `{stage}/chrf_LANG` for each target language of a
        multilingual model, its sentences told by the tag in front of their sources."""
        for lang, tag in target_languages(self.tokenizers).items():
            rows = [i for i, first in enumerate(firsts) if first == tag]
            if rows:
                part = translation_scores([hyps[i] for i in rows], [refs[i] for i in rows])
                for key in ("bleu", "chrf"):
                    self.log(f"{stage}/{key}_{lang}", part[key], sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[int, str]]:
        """(row index, translation) pairs: batches come sorted by length, not in file order."""
        translations = self.translator.generate(batch["src"], batch.get("src_mask"))
        return [(i, t.text) for i, t in zip(batch["index"].tolist(), translations, strict=True)]
