"""Trainer options users reach for work with Seq2Seq: bf16 mixed precision, gradient
accumulation, early stopping on validation BLEU."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping

from seqkit import NumberWordsData, OptimizerConfig, Seq2Seq, TransformerConfig

TINY = TransformerConfig(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                         d_ff=64, dropout=0.0)  # fmt: skip


def run(tmp_path, **trainer_options) -> tuple[Seq2Seq, L.Trainer]:
    L.seed_everything(0)
    data = NumberWordsData(n_train=200, n_val=8, n_test=4, high=999, vocab_size=300,
                           max_tokens=256, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    model = Seq2Seq(TINY, OptimizerConfig(lr=1e-3, warmup_steps=2))
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0,
                   default_root_dir=tmp_path)  # fmt: skip
    trainer = L.Trainer(**(options | trainer_options))
    trainer.fit(model, data)
    return model, trainer


def test_bf16_mixed_precision_trains_and_decodes(tmp_path):
    model, trainer = run(tmp_path, precision="bf16-mixed", max_epochs=1, limit_train_batches=3,
                         limit_val_batches=1)  # fmt: skip
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert "val/bleu" in trainer.callback_metrics
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    batches = []

    class Count(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            batches.append(batch_idx)

    _, trainer = run(tmp_path, accumulate_grad_batches=4, max_epochs=1, limit_val_batches=0,
                     callbacks=[Count()])  # fmt: skip
    assert len(batches) >= 8
    assert trainer.global_step == -(-len(batches) // 4)
    # The schedule's length is in optimizer steps too.
    assert trainer.estimated_stepping_batches == trainer.global_step


def test_early_stopping_on_validation_bleu(tmp_path):
    # min_delta no run can reach: training stops after `patience` validations without progress.
    stop = EarlyStopping(monitor="val/bleu", mode="max", patience=1, min_delta=1000.0)
    _, trainer = run(tmp_path, max_epochs=20, limit_train_batches=2, callbacks=[stop])
    assert stop.stopped_epoch > 0
    assert trainer.current_epoch < 20


def test_bf16_warns_only_on_a_cpu_without_bf16_kernels(monkeypatch):
    import warnings

    from seqkit.lit import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="32-true"):
        precision.warn_if_slow_bf16("bf16-mixed", torch.device("cpu"))
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_slow_bf16("bf16-mixed", torch.device("cpu"))
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.warn_if_slow_bf16("32-true", torch.device("cpu"))
