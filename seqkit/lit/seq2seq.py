"""Seq2Seq: trains, scores and runs any seqkit encoder–decoder on translation data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from safetensors.torch import load_model, save_model
from torch import Tensor
from torchmetrics import MeanMetric

from seqkit.data.batching import TokenBatchSampler, pad
from seqkit.data.tokenizer import Tokenizers
from seqkit.decoding import beam_search, default_max_len, greedy
from seqkit.lit.optim import OptimizerConfig, configure_adamw
from seqkit.metrics import translation_scores
from seqkit.models import ModelConfig, TransformerConfig, build_model, config_from_dict
from seqkit.models import config_to_dict as model_config_to_dict
from seqkit.tokens import PAD


@dataclass(frozen=True)
class DecodingConfig:
    """How test, predict and translate decode; validation always decodes greedily."""

    beam_size: int = 5
    """Beam width; 1 is greedy search."""
    alpha: float = 0.6
    """GNMT length penalty exponent; 0 ranks hypotheses by raw log-probability."""
    max_len: int | None = None
    """Longest output in tokens; None allows 1.5 × the longest source + 10."""


def _as(cls: type, value):
    """Configs arrive as dataclasses (Python, CLI) or as dicts (checkpoints)."""
    return cls(**value) if isinstance(value, dict) else value


def label_smoothed_nll(
    logits: Tensor, target: Tensor, smoothing: float, ignore_index: int = PAD
) -> tuple[Tensor, Tensor, int]:
    """Mean label-smoothed loss and mean NLL over non-padding tokens, and their count.

    Works on the whole (B*T, V) matrix with a mask on the (B*T,) rows: selecting the
    non-padding rows first would copy the largest tensor of the step and scatter it back.
    """
    logp = logits.float().log_softmax(-1).flatten(0, 1)  # (B*T, V)
    target = target.flatten()
    keep = target != ignore_index
    n_tokens = int(keep.sum())
    nll = F.nll_loss(logp, target, ignore_index=ignore_index, reduction="sum") / n_tokens
    if not smoothing:
        return nll, nll.detach(), n_tokens
    uniform = -(logp.sum(-1) * keep).sum() / (n_tokens * logp.shape[-1])
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach(), n_tokens


class Seq2Seq(L.LightningModule):
    """Sequence-to-sequence training with label-smoothed cross-entropy, AdamW and warm-up,
    validation sacreBLEU/chrF from greedy decoding and beam search at test time.

    Args:
        config: the model; vocabulary sizes left at 0 come from the data module.
        optimizer: AdamW and its learning-rate schedule.
        decoding: beam search settings for test, predict and `translate`.
        label_smoothing: mass spread uniformly over the vocabulary (Szegedy et al., 2016).
    """

    def __init__(
        self,
        config: ModelConfig = TransformerConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        decoding: DecodingConfig = DecodingConfig(),
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = config_from_dict(config)
        self.config = config
        self.optim_config = _as(OptimizerConfig, optimizer)
        self.decoding = _as(DecodingConfig, decoding)
        self.label_smoothing = label_smoothing
        self.save_hyperparameters()  # keeps the CLI's class path, for `--ckpt_path`
        self.hparams.update(self._plain_hparams())
        self.net = build_model(config) if config.src_vocab_size and config.tgt_vocab_size else None
        self.tokenizers: Tokenizers | None = None
        self.val_nll, self.test_nll = MeanMetric(), MeanMetric()
        self._outputs: list[tuple[int, str, str]] = []

    def _plain_hparams(self) -> dict:
        """Plain data only, so checkpoints load with `torch.load(weights_only=True)`."""
        return {
            "config": model_config_to_dict(self.config),
            "optimizer": asdict(self.optim_config),
            "decoding": asdict(self.decoding),
            "label_smoothing": self.label_smoothing,
        }

    # -- pairing with the data ----------------------------------------------------------
    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if getattr(data, "tokenizers", None) is not None:
            self._use_tokenizers(data.tokenizers, "the data module")
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

    def configure_model(self) -> None:
        """Build the network once the data says how large the vocabularies are."""
        if self.tokenizers is not None:
            sizes = {
                "src_vocab_size": self.tokenizers.src_vocab_size,
                "tgt_vocab_size": self.tokenizers.tgt_vocab_size,
            }
            for key, size in sizes.items():
                if getattr(self.config, key) not in (0, size):
                    raise ValueError(
                        f"model.config.{key}={getattr(self.config, key)} but the "
                        f"tokenizer has {size} tokens; set it to 0 to follow the data"
                    )
            self.config = replace(self.config, **sizes)
            self.hparams["config"] = model_config_to_dict(self.config)
        if self.net is None:
            if not self.config.src_vocab_size:
                raise ValueError(
                    "vocabulary sizes unknown: give them in the config or fit with data"
                )
            self.net = build_model(self.config)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizers is not None:
            checkpoint["tokenizers"] = self.tokenizers.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizers" in checkpoint:
            self._use_tokenizers(Tokenizers.from_dict(checkpoint["tokenizers"]), "the checkpoint")

    # -- training and evaluation ----------------------------------------------------------
    def configure_optimizers(self) -> dict:
        return configure_adamw(self.net, self.optim_config, self.trainer.estimated_stepping_batches)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def _step(self, batch: dict, stage: str) -> Tensor:
        logits = self.net(batch["src"], batch["tgt_in"])
        loss, nll, n_tokens = label_smoothed_nll(logits, batch["tgt_out"], self.label_smoothing)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            batch_size=n_tokens,
            prog_bar=True,
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=not on_step,
        )
        if stage == "train":
            self.log("train/ppl", nll.exp(), batch_size=n_tokens)
            self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=n_tokens)
            return loss
        getattr(self, f"{stage}_nll").update(nll, n_tokens)
        hyps = self.generate(batch["src"], beam_size=1 if stage == "val" else None)
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
        metric = getattr(self, f"{stage}_nll")
        self.log(f"{stage}/ppl", metric.compute().exp())
        metric.reset()
        for key in ("bleu", "chrf", "exact_match"):
            self.log(f"{stage}/{key}", scores[key], prog_bar=key == "bleu")
        return scores

    # -- decoding -----------------------------------------------------------------------
    def generate(self, src: Tensor, beam_size: int | None = None) -> list[str]:
        """Detokenized translations of a padded batch of source ids (B, S)."""
        beam_size = beam_size or self.decoding.beam_size
        src_mask = src != PAD
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
        return list(zip(batch["index"].tolist(), self.generate(batch["src"]), strict=True))

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

    # -- Hugging Face-style directories -------------------------------------------------
    def save_pretrained(self, directory: str | Path, metrics: dict | None = None) -> Path:
        """Write config.json, model.safetensors and the tokenizer file(s) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": model_config_to_dict(self.config), "decoding": asdict(self.decoding)}
        if metrics:
            meta["metrics"] = metrics
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        save_model(self.net, str(directory / "model.safetensors"))
        self.tokenizers.save(directory)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> Seq2Seq:
        """Load a directory written by `save_pretrained` or `seqkit export`; never unpickles."""
        directory = Path(directory)
        path = directory / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; is {directory} a seqkit model directory?")
        try:
            meta = json.loads(path.read_text())
            config = config_from_dict(meta["config"], str(path))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a seqkit model config ({err})") from None
        model = cls(config=config, decoding=DecodingConfig(**meta.get("decoding", {})))
        load_model(model.net, str(directory / "model.safetensors"), device=map_location)
        model.tokenizers = Tokenizers.load(directory)
        return model.eval()


def load_checkpoint(path: str | Path) -> Seq2Seq:
    """A Lightning checkpoint of Seq2Seq, read without unpickling code (weights_only)."""
    return Seq2Seq.load_from_checkpoint(str(path), map_location="cpu", weights_only=True)
