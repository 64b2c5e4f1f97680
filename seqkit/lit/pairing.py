"""What the sequence LightningModules (`Seq2Seq`, `LanguageModel`, `TextToImage`) share: they
take their tokenizer and sizes from the data module, record where their data came from, and
keep both in their checkpoints."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L

from seqkit.card import checkpoint_provenance, data_provenance
from seqkit.lit.optim import OptimizerConfig, rescale_learning_rate
from seqkit.lit.precision import warn_if_slow_bf16


class PairsWithData(L.LightningModule):
    """A LightningModule paired with a data module that hands over what the network needs
    (`data.model_inputs()`, e.g. tokenizers and the longest sequence) in `setup`.

    A subclass implements `use_inputs(inputs)` (check and keep them), `configure_model()`
    (build the network once sizes are known) and `_log_scores(stage)` (log and reset the
    evaluation metrics), and has `provenance` (a dict) and `optim_config`.
    """

    provenance: dict[str, Any]
    optim_config: OptimizerConfig

    def use_inputs(self, inputs: Any) -> None:
        raise NotImplementedError

    def _log_scores(self, stage: str) -> Any:
        raise NotImplementedError

    def _set_hparams(self, values: dict[str, Any]) -> None:
        """Replace hyperparameters (e.g. the config with sizes taken from the data), also as
        the loggers' initial ones."""
        self.hparams.update(values)
        self._hparams_initial = copy.deepcopy(self._hparams)

    def setup(self, stage: str) -> None:
        data = getattr(self.trainer, "datamodule", None)
        if hasattr(data, "model_inputs"):
            self.use_inputs(data.model_inputs())

    def on_fit_start(self) -> None:
        warn_if_slow_bf16(self.trainer.precision, self.device)
        data = getattr(self.trainer, "datamodule", None)
        if data is not None:
            self.provenance["data"] = data_provenance(data.hparams, type(data).__name__)

    def _save_provenance(self, checkpoint: dict) -> None:
        checkpoint["provenance"] = {**self.provenance, "steps": self.trainer.global_step}

    def _finish_loading(self, checkpoint: dict) -> None:
        """After the inputs are restored: build the network, take the provenance, and rescale
        the saved schedule to this run's learning rate (`rescale_learning_rate`)."""
        self.configure_model()
        self.provenance = checkpoint_provenance(checkpoint)
        rescale_learning_rate(checkpoint, self.optim_config.lr)

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
