"""A training step whose loss is NaN or infinite is skipped and counted, leaving the weights
as they were; too many in a row stop training with a clear error."""

import lightning as L
import pytest
import torch

import seqkit.lit.seq2seq as seq2seq_module
from seqkit import NumberWordsData, OptimizerConfig, Seq2Seq, TransformerConfig
from seqkit.errors import TrainingError

TINY = TransformerConfig(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1,
                         d_ff=64, dropout=0.0)  # fmt: skip


def fit(tmp_path, monkeypatch, bad_steps, patience=10, max_steps=6):
    """Train, turning the loss of the training calls in `bad_steps` (0-based) into NaN."""
    real = seq2seq_module.label_smoothed_nll
    calls = []

    def poisoned(logits, target, smoothing):
        loss, nll, n = real(logits, target, smoothing)
        if loss.requires_grad:  # a training step, not evaluation
            calls.append(len(calls))
            if calls[-1] in bad_steps:
                loss = loss * float("nan")
        return loss, nll, n

    monkeypatch.setattr(seq2seq_module, "label_smoothed_nll", poisoned)
    weights = []

    class Snapshot(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            weights.append([p.detach().clone() for p in module.net.parameters()])

    L.seed_everything(0)
    data = NumberWordsData(n_train=200, n_val=10, n_test=10, high=999, vocab_size=280,
                           max_tokens=256, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    model = Seq2Seq(TINY, OptimizerConfig(warmup_steps=1), nonfinite_patience=patience)
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[Snapshot()])  # fmt: skip
    trainer.fit(model, data)
    return model, trainer, weights


def test_a_nan_loss_is_skipped_counted_and_leaves_the_weights_alone(tmp_path, monkeypatch):
    model, trainer, weights = fit(tmp_path, monkeypatch, bad_steps={2})
    assert model.guard.skipped == 1 and trainer.global_step == 6  # 7 batches for 6 steps
    unchanged = [torch.equal(a, b) for a, b in zip(weights[2], weights[3], strict=True)]
    assert all(unchanged)  # the NaN step neither stepped the optimizer nor poisoned a weight
    assert not all(torch.equal(a, b) for a, b in zip(weights[1], weights[2], strict=True))
    assert all(torch.isfinite(p).all() for p in model.net.parameters())


def test_non_finite_losses_in_a_row_stop_training_with_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(TrainingError, match="3 training steps in a row had a non-finite loss"):
        fit(tmp_path, monkeypatch, bad_steps=set(range(1, 100)), patience=3)
