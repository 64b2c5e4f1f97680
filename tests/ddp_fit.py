"""Fit, validate and test a tiny Seq2Seq under 2-process DDP on CPU (gloo); for test_ddp.py.

Run as `python tests/ddp_fit.py ROOT` after `write_data(ROOT)`. Lightning's "ddp" strategy
re-runs this command as rank 1 (inside pytest it would re-run the pytest selection), so the
test starts it as a subprocess. Each rank writes ROOT/out/rank{R}.json: per stage the
`index` list and `repeat` flag of every batch it got (train with its epoch), and the
metrics after `validate` and after `test`; ROOT/out/model.ckpt is the trained model.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import lightning as L

from seqkit import OptimizerConfig, Seq2Seq, TransformerConfig
from seqkit.data.numbers import number_pairs
from seqkit.data.translation import TranslationData
from seqkit.lit.seq2seq import DecodingConfig

MAX_EPOCHS = 8
TINY = TransformerConfig(
    d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.0,
    share_embeddings=True, max_positions=128,
)  # fmt: skip
SHORT, MEDIUM, LONG = 8, 2, 1  # test sentences of 1, 4 and 9 numbers: three test batches


def write_data(root: Path) -> None:
    """ROOT/data/{train,val,test}.tsv of English and German number words.

    The model translates German to English, whose several words per number give BLEU
    n-grams to match (German number words are single words). Train and val are single
    numbers below 1000; test mixes single numbers with lists of 4 and of 9 numbers, so that
    its three batches differ greatly in length and one rank gets the short and the long
    batch, the other the medium one and a repeated batch.
    """
    numbers = random.Random(0).sample(range(1000), 400)
    lists = [[n] for n in numbers[320 : 320 + SHORT]]
    lists += [numbers[340 + 4 * i : 344 + 4 * i] for i in range(MEDIUM)]
    lists += [numbers[360 + 9 * i : 369 + 9 * i] for i in range(LONG)]
    splits = {"train": [[n] for n in numbers[:280]], "val": [[n] for n in numbers[280:307]]}
    splits["test"] = lists
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        lines = ["en\tde"]
        for row in rows:
            english, german = number_pairs(row)
            lines.append(f"{', '.join(english)}\t{', '.join(german)}")
        (root / "data" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_data(root: Path) -> TranslationData:
    return TranslationData(
        path=str(root / "data"), src_lang="de", tgt_lang="en",
        splits={"train": "train", "val": "val", "test": "test"},
        vocab_size=300, max_tokens=200, eval_max_tokens=120, max_length=120,
        cache_dir=str(root / "cache"),
    )  # fmt: skip


def make_model() -> Seq2Seq:
    return Seq2Seq(
        TINY,
        OptimizerConfig(lr=5e-3, warmup_steps=20),
        DecodingConfig(beam_size=3),
        label_smoothing=0.0,
    )


def make_trainer(
    root: Path, callbacks: list[L.Callback], devices: int, strategy: str = "auto"
) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", max_epochs=MAX_EPOCHS, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=MAX_EPOCHS, gradient_clip_val=1.0, default_root_dir=root,
        callbacks=callbacks, devices=devices, strategy=strategy,
    )  # fmt: skip


class RecordBatches(L.Callback):
    """Keeps the `index` list and `repeat` flag of every batch this rank is given."""

    def __init__(self) -> None:
        self.batches: dict[str, list[dict]] = {"train": [], "val": [], "test": []}

    def _record(self, stage: str, batch: dict, **extra) -> None:
        entry = {"index": batch["index"].tolist(), "repeat": bool(batch.get("repeat", False))}
        self.batches[stage].append(entry | extra)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._record("train", batch, epoch=trainer.current_epoch)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "validate":  # not the validation inside `fit`
            self._record("val", batch)

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        self._record("test", batch)


def scalars(metrics: dict) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()}


def main(root: Path) -> None:
    L.seed_everything(0, verbose=False)
    out = root / "out"
    record = RecordBatches()
    trainer = make_trainer(root, [record], devices=2, strategy="ddp")
    data = make_data(root)
    trainer.fit(make_model(), data)
    trainer.save_checkpoint(out / "model.ckpt")
    result = {"world_size": trainer.world_size}
    trainer.validate(make_model(), data, ckpt_path=out / "model.ckpt", verbose=False)
    result["validate"] = scalars(trainer.callback_metrics)
    trainer.test(make_model(), data, ckpt_path=out / "model.ckpt", verbose=False)
    result["test"] = scalars(trainer.callback_metrics)
    result["batches"] = record.batches
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
