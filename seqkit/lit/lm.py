"""LanguageModel: trains any seqkit language model on a token stream, with truncated BPTT for
the recurrent ones; inference and model directories belong to `TextGenerator`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, replace

from torch import Tensor, nn
from torch.utils._pytree import tree_map
from torchmetrics import SumMetric

from seqkit.data.inputs import ModelInputs
from seqkit.data.tokenizer import Tokenizers
from seqkit.generator import TextGenerator
from seqkit.lit.loss import label_smoothed_nll
from seqkit.lit.nonfinite import NonFiniteGuard
from seqkit.lit.optim import OptimizerConfig, as_config, configure_adamw
from seqkit.lit.pairing import PairsWithData
from seqkit.models import (
    LMConfig,
    RNNLMConfig,
    TransformerLMConfig,
    build_model,
    config_from_dict,
)
from seqkit.models import config_to_dict as model_config_to_dict


class LanguageModel(PairsWithData):
    """Next-token prediction with cross-entropy and AdamW; validation and test report
    perplexity per token (`ppl`), per character of text (`ppl_char`, comparable across
    tokenizers) and bits per character (`bpc`), over non-overlapping windows each read afresh.

    Args:
        config: the network (`TransformerLMConfig` or `RNNLMConfig`); a vocabulary size of 0
            comes from the data module.
        optimizer: AdamW and its learning-rate schedule (counted in optimizer steps).
        tbptt_steps: truncated backpropagation through time (Williams & Peng, 1990), for the
            recurrent models: each training window is read in chunks of this many steps, the
            hidden state carried from chunk to chunk and detached, one optimizer step per
            chunk (what Lightning 1.x called `truncated_bptt_steps`). 0: backpropagate
            through the whole window, one step per window.
        gradient_clip_val: clip the gradient's norm to this before every step (None: don't).
            Set here, not on the Trainer: the chunked steps are taken by this module.
        nonfinite_patience: a chunk whose loss is NaN or infinite is skipped and counted;
            this many in a row stop training with an error.

    Raises:
        ValueError: for `tbptt_steps` with a Transformer (it has no state to carry) or with
            a `context` window (each window is read afresh).
    """

    def __init__(
        self,
        config: TransformerLMConfig | RNNLMConfig = TransformerLMConfig(),  # noqa: B008 (frozen)
        optimizer: OptimizerConfig = OptimizerConfig(),
        tbptt_steps: int = 0,
        gradient_clip_val: float | None = 1.0,
        nonfinite_patience: int = 10,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = config_from_dict(config, union=LMConfig)
        if tbptt_steps < 0:
            raise ValueError(f"tbptt_steps={tbptt_steps}: must be 0 (off) or positive")
        if tbptt_steps and isinstance(config, TransformerLMConfig):
            raise ValueError(
                "tbptt_steps carries a recurrent state from chunk to chunk; the Transformer "
                "has none (use model.config.context for a window)"
            )
        if tbptt_steps and config.context:
            raise ValueError(
                f"tbptt_steps={tbptt_steps} with context={config.context}: a windowed model "
                "reads every window afresh, it carries no state"
            )
        self.automatic_optimization = False  # a window may take several optimizer steps
        self.config = config
        self.optim_config = as_config(OptimizerConfig, optimizer)
        self.tbptt_steps, self.gradient_clip_val = tbptt_steps, gradient_clip_val
        self.guard = NonFiniteGuard(nonfinite_patience)
        self.save_hyperparameters()
        self._update_hparams()
        self.tokenizers: Tokenizers | None = None
        self.max_length = 0
        self.provenance: dict = {}
        self.net = build_model(config) if config.vocab_size else None
        self.nll, self.tokens, self.chars = SumMetric(), SumMetric(), SumMetric()

    def _update_hparams(self) -> None:
        self._set_hparams({
            "config": model_config_to_dict(self.config),
            "optimizer": asdict(self.optim_config),
            "tbptt_steps": self.tbptt_steps,
            "gradient_clip_val": self.gradient_clip_val,
            "nonfinite_patience": self.guard.patience,
        })  # fmt: skip

    @property
    def generator(self) -> TextGenerator:
        """This module's network and tokenizer, ready to score and generate text."""
        if self.net is None or self.tokenizers is None:
            raise ValueError("this model has no network or tokenizer yet: fit it first")
        return TextGenerator(self.net, self.tokenizers, self.provenance)

    # -- pairing with the data ----------------------------------------------------------------
    def use_inputs(self, inputs: ModelInputs) -> None:
        """Take the tokenizer and window length a data module hands over.

        Raises:
            ValueError: for another tokenizer than the model's, or windows longer than a
                Transformer's positions.
        """
        old = self.tokenizers
        if old is not None and old.fingerprint() != inputs.tokenizers.fingerprint():
            raise ValueError("the data module's tokenizer is not the one this model was "
                             "trained with; reuse it (data.tokenizer=MODEL_DIR)")  # fmt: skip
        self.tokenizers, self.max_length = inputs.tokenizers, inputs.max_length
        limit = getattr(self.config, "max_positions", 0)
        if limit and not self.config.context and inputs.max_length > limit:
            raise ValueError(
                f"data.seq_len={inputs.max_length} exceeds model.config.max_positions={limit}: "
                "lower the first or raise the second"
            )

    def configure_model(self) -> None:
        if self.tokenizers is not None:
            size = self.tokenizers.tgt_vocab_size
            if self.config.vocab_size not in (0, size):
                raise ValueError(
                    f"model.config.vocab_size={self.config.vocab_size} but the tokenizer has "
                    f"{size} tokens; set it to 0 to follow the data"
                )
            self.config = replace(self.config, vocab_size=size)
            self._update_hparams()
        if self.net is None and self.config.vocab_size:
            self.net = build_model(self.config)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.tokenizers is not None:
            checkpoint["tokenizers"] = self.tokenizers.to_dict()
        self._save_provenance(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizers" in checkpoint:
            self.use_inputs(ModelInputs(Tokenizers.from_dict(checkpoint["tokenizers"])))
        self._finish_loading(checkpoint)

    # -- training -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        trainer = self.trainer
        steps = trainer.max_steps
        if steps < 0:  # by epochs: batches, times the chunks of each window
            chunks = math.ceil(self.max_length / self.tbptt_steps) if self.tbptt_steps else 1
            steps = trainer.estimated_stepping_batches * chunks
        return configure_adamw(self.net, self.optim_config, steps)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        """One optimizer step per chunk of `tbptt_steps` (or per window)."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        nll_sum, n_sum = 0.0, 0
        for loss, nll, n in tbptt_chunks(
            self.net, batch["input"], batch["target"], self.tbptt_steps
        ):
            if not n or not self.guard.usable(self, loss):
                continue
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.gradient_clip_val is not None:
                self.clip_gradients(optimizer, self.gradient_clip_val, "norm")
            optimizer.step()
            scheduler.step()
            nll_sum, n_sum = nll_sum + float(nll) * n, n_sum + n
        if n_sum:
            self.log("train/loss", nll_sum / n_sum, batch_size=n_sum, prog_bar=True)
            self.log("train/ppl", math.exp(nll_sum / n_sum), batch_size=n_sum)
            self.log("train/lr", scheduler.get_last_lr()[0], batch_size=n_sum)

    # -- evaluation -----------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch)

    def _score(self, batch: dict) -> None:
        _, nll, n = label_smoothed_nll(self.net(batch["input"]), batch["target"], 0.0)
        self.nll.update(nll * n)
        self.tokens.update(n)
        self.chars.update(batch["chars"].sum())

    def _log_scores(self, stage: str) -> None:
        nll, tokens, chars = self.nll.compute(), self.tokens.compute(), self.chars.compute()
        for metric in (self.nll, self.tokens, self.chars):
            metric.reset()
        # Summed over ranks by torchmetrics: every rank holds the same values.
        self.log(f"{stage}/loss", nll / tokens, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/ppl", (nll / tokens).exp(), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/ppl_char", (nll / chars).exp(), sync_dist=True)
        self.log(f"{stage}/bpc", nll / chars / math.log(2), sync_dist=True)


def tbptt_chunks(
    net: nn.Module, inputs: Tensor, targets: Tensor, k: int
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Truncated BPTT over windows `inputs` → `targets` (B, T): per chunk of `k` steps, the
    loss (mean cross-entropy), its detached value and the count of its non-PAD targets. The
    hidden state goes on from chunk to chunk, detached, so no gradient crosses into the
    previous chunk; the caller may step the optimizer between chunks. `k` 0: one chunk, from
    a fresh state (full BPTT over the window)."""
    k = k or inputs.shape[1]
    state = net.init_state(len(inputs)) if k < inputs.shape[1] else None
    for start in range(0, inputs.shape[1], k):
        logits, state = net.decode(inputs[:, start : start + k], state)
        yield label_smoothed_nll(logits, targets[:, start : start + k], 0.0)
        if state is not None:
            state = tree_map(Tensor.detach, state)
