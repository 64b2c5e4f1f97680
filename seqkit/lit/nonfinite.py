"""Training steps whose loss is NaN or infinite are skipped and counted; too many in a row
stop training with a clear error, leaving the checkpoints saved so far as they are."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from torch import Tensor

from seqkit.errors import TrainingError

# Lightning warns about every skipped step; seqkit counts them in train/skipped_steps instead.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")


class NonFiniteGuard:
    """Decides, on every rank alike, whether a training step's loss may be used.

    Args:
        patience: non-finite losses in a row after which training stops (TrainingError).
    """

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"nonfinite_patience must be at least 1, got {patience}")
        self.patience = patience
        self.skipped = 0
        self.in_a_row = 0

    def usable(self, module: L.LightningModule, loss: Tensor) -> bool:
        """True for a finite loss; else counts the step (logged as `train/skipped_steps`),
        and the caller returns None so that Lightning skips its backward and optimizer step.
        Under DDP every rank skips if any rank's loss is not finite, so none waits.

        Raises:
            TrainingError: after `patience` non-finite losses in a row.
        """
        finite = bool(torch.isfinite(loss.detach()).all())
        if module.trainer.world_size > 1:
            finite = module.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.in_a_row = 0
            return True
        self.skipped += 1
        self.in_a_row += 1
        module.log("train/skipped_steps", float(self.skipped), rank_zero_only=True)
        if self.in_a_row >= self.patience:
            raise TrainingError(
                f"{self.in_a_row} training steps in a row had a non-finite loss (NaN or inf), "
                f"the last at step {module.trainer.global_step}; stopped. Checkpoints saved so "
                "far are kept: resume from one with a lower optimizer.lr or "
                "--trainer.gradient_clip_val"
            )
        return False
