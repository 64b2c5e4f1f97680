"""Callbacks that make training measurable."""

from __future__ import annotations

import time

import lightning as L

from seqkit.tokens import PAD


class TokensPerSecond(L.Callback):
    """Logs training throughput in real (non-padding) source + target tokens per second.

    `train/tokens_per_sec` covers the steps since the last log; at the end of fitting the
    run's totals are printed, so that benchmarks and users read one comparable figure.
    """

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self._window_tokens = 0
        self._window_start = 0.0
        self._step_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.perf_counter()
        if not self._window_start:
            self._window_start = self._step_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        tokens = int((batch["src"] != PAD).sum() + (batch["tgt_out"] != PAD).sum())
        self.tokens += tokens
        self.seconds += now - self._step_start
        self._window_tokens += tokens
        if trainer.global_step % trainer.log_every_n_steps == 0:
            rate = self._window_tokens / max(now - self._window_start, 1e-9)
            pl_module.log("train/tokens_per_sec", rate * trainer.world_size)
            self._window_tokens, self._window_start = 0, now

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.seconds:
            rate = self.tokens / self.seconds * trainer.world_size
            print(
                f"trained on {self.tokens * trainer.world_size:,} tokens in "
                f"{self.seconds:.0f} s of steps: {rate:,.0f} tokens/s"
            )
