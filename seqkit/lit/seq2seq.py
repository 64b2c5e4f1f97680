"""Seq2Seq: trains, scores and runs any seqkit encoder–decoder on translation data."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import load_model, save_model
from torch import Tensor
from torchmetrics import MeanMetric

from seqkit.card import model_card
from seqkit.data.batching import TokenBatchSampler, pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import beam_search, default_max_len, greedy
from seqkit.lit.loss import label_smoothed_nll
from seqkit.lit.optim import OptimizerConfig, configure_adamw
from seqkit.metrics import translation_scores
from seqkit.models import (
    ModelConfig,
    TransformerConfig,
    build_model,
    config_from_dict,
    read_model_config,
)
from seqkit.models import config_to_dict as model_config_to_dict
from seqkit.models.patches import check_source_sizes, source_mask, source_sizes_known


@dataclass(frozen=True)
class DecodingConfig:
    """How test, predict and translate decode; validation always decodes greedily."""

    beam_size: int = 5
    """Beam width; 1 is greedy search."""
    alpha: float = 0.6
    """GNMT length penalty exponent; 0 ranks hypotheses by raw log-probability."""
    max_len: int | None = None
    """Longest output in tokens; None allows 1.5 × the longest source + 10."""


FREEZABLE = {
    "embeddings": ("src_embed.", "tgt_embed.", "pos_embed."),
    "encoder": ("encoder.", "encoder_norm."),
}
DROPOUTS = ("dropout", "attention_dropout", "activation_dropout")


def _fine_tuning_config(pretrained: ModelConfig, given: ModelConfig, origin: str) -> ModelConfig:
    """The pretrained config, with the dropout rates `given` sets; anything else is an error."""
    changes = {
        f.name: getattr(given, f.name)
        for f in fields(given)
        if getattr(given, f.name) != f.default and not f.name.endswith("vocab_size")
    }
    if type(given) is type(pretrained):
        changes = {k: v for k, v in changes.items() if v != getattr(pretrained, k)}
    wrong = {k: v for k, v in changes.items() if k not in DROPOUTS}
    if wrong or (changes and type(given) is not type(pretrained)):
        raise ValueError(
            f"model.init_from={origin} fixes the architecture ({type(pretrained).__name__} "
            f"in its config.json); model.config may only change {', '.join(DROPOUTS)}, "
            f"got {wrong or changes}"
        )
    return replace(pretrained, **changes)


def _data_provenance(hparams, name: str) -> dict:
    """What a model card says about the training data."""
    keys = ("path", "src_lang", "tgt_lang", "splits", "vocab_size", "joint_vocab")
    return {"class": name, **{k: hparams[k] for k in keys if k in hparams}}


def _as(cls: type, value):
    """Configs arrive as dataclasses (Python, CLI) or as dicts (checkpoints)."""
    return cls(**value) if isinstance(value, dict) else value


class Seq2Seq(L.LightningModule):
    """Sequence-to-sequence training with label-smoothed cross-entropy, AdamW and warm-up,
    validation sacreBLEU/chrF from greedy decoding and beam search at test time.

    Args:
        config: the model; vocabulary sizes left at 0 come from the data module.
        optimizer: AdamW and its learning-rate schedule.
        decoding: beam search settings for test, predict and `translate`.
        label_smoothing: mass spread uniformly over the vocabulary (Szegedy et al., 2016).
        init_from: a model directory (`save_pretrained`, `seqkit export`) to fine-tune: its
            architecture, weights and tokenizer are used, and the data module reuses that
            tokenizer. `config` may then only change dropout rates.
        freeze: parts left untrained: "embeddings" (every token and position embedding,
            and the output projection when tied to one) and/or "encoder" (its layers).
    """

    def __init__(
        self,
        config: ModelConfig = TransformerConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        decoding: DecodingConfig = DecodingConfig(),
        label_smoothing: float = 0.1,
        init_from: str | None = None,
        freeze: list[Literal["embeddings", "encoder"]] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = config_from_dict(config)
        pretrained = None
        if init_from is not None:
            pretrained = Seq2Seq.from_pretrained(init_from)
            config = _fine_tuning_config(pretrained.config, config, init_from)
        unknown = set(freeze or ()) - set(FREEZABLE)
        if unknown:
            raise ValueError(f"freeze: unknown part(s) {sorted(unknown)}; choose from {FREEZABLE}")
        self.config = config
        self.optim_config = _as(OptimizerConfig, optimizer)
        self.decoding = _as(DecodingConfig, decoding)
        self.label_smoothing = label_smoothing
        self.init_from, self.freeze = init_from, list(freeze or ())
        self.save_hyperparameters()  # keeps the CLI's class path, for `--ckpt_path`
        self._update_hparams()
        self.net = build_model(config) if source_sizes_known(config) else None
        self.tokenizers: Tokenizers | None = None
        # An image source's height and normalization, for `predict` (see DigitStripData).
        self.image_source: dict | None = None
        # Where the weights come from, for the model card: data, recipe, steps, metrics.
        self.provenance: dict = {"init_from": init_from} if init_from else {}
        if pretrained is not None:
            self.net.load_state_dict(pretrained.net.state_dict())
            self.tokenizers = pretrained.tokenizers
            self.image_source = pretrained.image_source
        self._freeze()
        self.eval_loss, self.eval_nll = MeanMetric(), MeanMetric()
        self._outputs: list[tuple[int, str, str]] = []

    def _update_hparams(self) -> None:
        self.hparams.update(self._plain_hparams())
        # Loggers (W&B, TensorBoard) record this snapshot: fields, not a dataclass repr.
        self._hparams_initial = copy.deepcopy(self._hparams)

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
        }

    def _freeze(self) -> None:
        if self.net is None:
            return
        frozen = tuple(prefix for part in self.freeze for prefix in FREEZABLE[part])
        for name, param in self.net.named_parameters():
            if name.startswith(frozen):
                param.requires_grad_(False)

    # -- pairing with the data ----------------------------------------------------------
    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if getattr(data, "tokenizers", None) is not None:
            self._use_tokenizers(data.tokenizers, "the data module")
        if getattr(data, "image_source", None) is not None:
            self._use_image_source(data.image_source)
        limit, longest = getattr(self.config, "max_positions", 0), getattr(data, "max_length", 0)
        if limit and longest and longest > limit:
            raise ValueError(
                f"data.max_length={longest} exceeds model.config.max_positions={limit}: "
                "lower the first or raise the second"
            )

    def _use_tokenizers(self, tokenizers: Tokenizers, origin: str) -> None:
        if (
            self.tokenizers is not None
            and self.tokenizers.fingerprint() != tokenizers.fingerprint()
        ):
            raise ValueError(
                f"the tokenizer from {origin} is not the one this model was trained with; "
                "reuse the model's tokenizer (TranslationData(tokenizer=MODEL_DIR)) or train anew"
            )
        self.tokenizers = tokenizers

    def _use_image_source(self, source: dict) -> None:
        """Read images as the data module cuts them; keep what `predict` needs."""
        sizes = {"src_patch_size": source["patch_size"], "src_channels": source["channels"]}
        self._follow(sizes, "the data has")
        self.image_source = {key: source[key] for key in ("height", "mean", "std")}

    def _follow(self, sizes: dict[str, int], origin: str) -> None:
        """Fill config sizes left at 0 from the data; any other difference is an error."""
        for key, size in sizes.items():
            if getattr(self.config, key) not in (0, size):
                raise ValueError(f"model.config.{key}={getattr(self.config, key)} but {origin} "
                                 f"{size}; set it to 0 to follow the data")  # fmt: skip
        self.config = replace(self.config, **sizes)
        self._update_hparams()

    def configure_model(self) -> None:
        """Build the network once the data says how large the vocabularies are."""
        if self.tokenizers is not None:
            sizes = {"tgt_vocab_size": self.tokenizers.tgt_vocab_size}
            if not self.config.src_patch_size:  # an image source has no vocabulary
                sizes["src_vocab_size"] = self.tokenizers.src_vocab_size
            self._follow(sizes, "the tokenizer's vocabulary size is")
        if self.net is None:
            check_source_sizes(self.config)
            self.net = build_model(self.config)
            self._freeze()

    def on_fit_start(self) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if data is not None:
            self.provenance["data"] = _data_provenance(data.hparams, type(data).__name__)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizers is not None:
            checkpoint["tokenizers"] = self.tokenizers.to_dict()
        checkpoint["image_source"] = self.image_source
        checkpoint["provenance"] = {**self.provenance, "steps": self.trainer.global_step}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizers" in checkpoint:
            self._use_tokenizers(Tokenizers.from_dict(checkpoint["tokenizers"]), "the checkpoint")
        self.provenance = dict(checkpoint.get("provenance", {}))
        self.image_source = checkpoint.get("image_source") or self.image_source
        data = checkpoint.get("datamodule_hyper_parameters")
        if "data" not in self.provenance and data:  # written before provenance was kept
            name = str(data.get("_class_path", "")).rsplit(".", 1)[-1]
            self.provenance["data"] = _data_provenance(data, name or "unknown")
        self.provenance.setdefault("steps", checkpoint.get("global_step"))

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
            self.log("train/loss", loss, batch_size=n_tokens, prog_bar=True)
            self.log("train/ppl", nll.exp(), batch_size=n_tokens)
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n_tokens)
            return loss
        # Token-weighted means, summed over ranks by torchmetrics at the end of the epoch.
        self.eval_loss.update(loss.detach(), n_tokens)
        self.eval_nll.update(nll, n_tokens)
        hyps = self.generate(src, beam_size=1 if stage == "val" else None, src_mask=src_mask)
        self._outputs += zip(batch["index"].tolist(), hyps, batch["tgt_text"], strict=True)
        return loss

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

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
        by_index = {index: (hyp, ref) for index, hyp, ref in outputs}
        hyps, refs = zip(*(by_index[i] for i in sorted(by_index)), strict=True)
        scores = translation_scores(list(hyps), list(refs))
        # Every rank holds the same values: sync_dist only tells Lightning so.
        self.log(f"{stage}/loss", self.eval_loss.compute(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/ppl", self.eval_nll.compute().exp(), sync_dist=True)
        self.eval_loss.reset()
        self.eval_nll.reset()
        for key in ("bleu", "chrf", "exact_match"):
            self.log(f"{stage}/{key}", scores[key], prog_bar=key == "bleu", sync_dist=True)
        return scores

    # -- decoding -----------------------------------------------------------------------
    def generate(
        self, src: Tensor, beam_size: int | None = None, src_mask: Tensor | None = None
    ) -> list[str]:
        """Detokenized translations of a padded batch of source ids (B, S), or of image
        patches (B, S, P) with their `src_mask` (B, S)."""
        beam_size = beam_size or self.decoding.beam_size
        src_mask = source_mask(src) if src_mask is None else src_mask
        max_len = self.decoding.max_len or default_max_len(src_mask)
        max_len = min(max_len, getattr(self.config, "max_positions", max_len))
        if beam_size == 1:
            ids = greedy(self.net, src, src_mask, max_len=max_len)
        else:
            hyps = beam_search(
                self.net,
                src,
                src_mask,
                beam_size=beam_size,
                max_len=max_len,
                alpha=self.decoding.alpha,
            )
            ids = [h[0].tokens for h in hyps]
        return self.tokenizers.decode_target(ids)

    def predict_step(self, batch: dict, batch_idx: int) -> list[tuple[int, str]]:
        """(row index, translation) pairs: batches come sorted by length, not in file order."""
        hyps = self.generate(batch["src"], src_mask=batch.get("src_mask"))
        return list(zip(batch["index"].tolist(), hyps, strict=True))

    @torch.inference_mode()
    def translate(
        self,
        texts: list[str],
        beam_size: int | None = None,
        max_tokens: int = 4096,
        progress: bool = False,
    ) -> list[str]:
        """Translate plain sentences; empty lines stay empty. Batches by token count."""
        from tqdm.auto import tqdm

        if self.tokenizers is None:
            raise ValueError("this model has no tokenizer: load it with Seq2Seq.from_pretrained")
        if self.config.src_patch_size:
            raise ValueError("this model reads images, not text: use model.predict(images)")
        was_training = self.training
        self.eval()
        limit = getattr(self.config, "max_positions", None)
        ids = self.tokenizers.encode_source(texts)
        ids = [x[: limit - 1] + x[-1:] if limit and len(x) > limit else x for x in ids]
        out = [""] * len(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        batches = TokenBatchSampler([len(ids[i]) for i in todo], max_tokens, shuffle=False)
        with tqdm(total=len(todo), disable=not progress, unit="sent", leave=False) as bar:
            for batch in batches:
                rows = [todo[j] for j in batch]
                src = pad([ids[i] for i in rows]).to(self.device)
                for i, hyp in zip(rows, self.generate(src, beam_size), strict=True):
                    out[i] = hyp
                bar.update(len(rows))
        self.train(was_training)
        return out

    @torch.inference_mode()
    def predict(self, images, beam_size: int | None = None, batch_size: int = 64) -> list[str]:
        """The text of each image, for a model whose source is images (trained on
        `DigitStripData`): file paths, arrays or tensors as `load_images` reads them, of any
        width; each is scaled to the training height and normalized as in training."""
        from seqkit.data.strips import source_batches

        if not self.config.src_patch_size or self.image_source is None:
            raise ValueError("this model reads text: use model.translate(texts)")
        was_training = self.training
        self.eval()
        out: list[str] = []
        for src, src_mask in source_batches(images, self.config, self.image_source, batch_size):
            out += self.generate(src.to(self.device), beam_size, src_mask.to(self.device))
        self.train(was_training)
        return out

    # -- Hugging Face-style directories -------------------------------------------------
    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write config.json, model.safetensors, the tokenizer file(s) and a README.md model
        card into `directory`. `metrics` (e.g. test scores) go into the card and config."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = model_config_to_dict(self.config)
        provenance = {**self.provenance, **({"metrics": metrics} if metrics else {})}
        meta = {"config": config, "decoding": asdict(self.decoding), "provenance": provenance}
        if self.image_source is not None:
            meta["image_source"] = self.image_source
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_model(self.net, str(directory / "model.safetensors"))
        self.tokenizers.save(directory)
        (directory / "README.md").write_text(model_card(config, self.net, provenance))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> Seq2Seq:
        """Load a directory written by `save_pretrained` or `seqkit export`; never unpickles."""
        directory = Path(directory)
        meta, config = read_model_config(directory)
        model = cls(config=config, decoding=DecodingConfig(**meta.get("decoding", {})))
        load_model(model.net, str(directory / "model.safetensors"), device=map_location)
        model.tokenizers = Tokenizers.load(directory)
        model.provenance = meta.get("provenance", {})
        model.image_source = meta.get("image_source")
        return model.eval()


def load_checkpoint(path: str | Path) -> Seq2Seq:
    """A Lightning checkpoint of Seq2Seq, read without unpickling code (weights_only)."""
    return Seq2Seq.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
