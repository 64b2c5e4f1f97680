"""Resuming an interrupted fit continues it exactly: the same batches in the same order, the same
steps and learning rates, the same final weights, whether the checkpoint falls mid-epoch or at
an epoch's end, with gradient accumulation and with worker processes."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import datasets
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from seqkit import NumberWordsData, OptimizerConfig, Seq2Seq, TransformerConfig
from seqkit.data.batching import (
    Layout,
    Repeat,
    ResumableLoader,
    TokenBatchDataset,
    TokenBatchSampler,
)

TINY = TransformerConfig(
    d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32, dropout=0.0,
    share_embeddings=True, max_positions=64,
)  # fmt: skip
EPOCHS = 3


def make_data(cache: Path, num_workers: int = 0, max_tokens: int = 200) -> NumberWordsData:
    """120 training pairs, in 9 batches of `max_tokens` 200."""
    return NumberWordsData(
        n_train=120, n_val=4, n_test=4, high=999, vocab_size=280, max_tokens=max_tokens,
        max_length=32, num_workers=num_workers, cache_dir=str(cache),
    )  # fmt: skip


class Crash(Exception):
    """Stands for whatever stopped the interrupted run."""


class Record(L.Callback):
    """Each trained batch as (global step, epoch, batch index, example indices, learning
    rate); raises Crash before the batch at global step `crash`."""

    def __init__(self, crash: int | None = None) -> None:
        self.crash = crash
        self.batches: list[tuple] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.crash:
            raise Crash
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        entry = (trainer.current_epoch, batch_idx, batch["index"].tolist())
        self.batches.append((trainer.global_step, *entry, lr))


def fit(
    root: Path,
    data: NumberWordsData,
    callbacks: list,
    ckpt_path: Path | None = None,
    **trainer_args,
) -> tuple[L.Trainer, Seq2Seq]:
    L.seed_everything(0, verbose=False)
    optimizer = OptimizerConfig(lr=3e-3, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    model = Seq2Seq(TINY, optimizer, label_smoothing=0.0)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1, gradient_clip_val=1.0,
        default_root_dir=root, callbacks=callbacks, **trainer_args,
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model


def check_resumed_run_continues(
    root: Path, data: NumberWordsData, every: dict, crash: int, **trainer_args
) -> list[tuple]:
    """Fit uninterrupted; fit with checkpoints (`every`: ModelCheckpoint arguments) until the
    Crash at step `crash`; resume from last.ckpt. Returns the batches the resumed run trained."""
    reference = Record()
    expected, expected_model = fit(root / "reference", data, [reference], **trainer_args)
    checkpoint = ModelCheckpoint(root / "checkpoints", save_last=True, **every)
    with pytest.raises(Crash):
        fit(root / "interrupted", data, [Record(crash), checkpoint], **trainer_args)
    last = root / "checkpoints" / "last.ckpt"
    saved_step = torch.load(last, weights_only=True)["global_step"]
    assert 0 < saved_step < crash, "the crash must lose work done after the checkpoint"
    resumed = Record()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, model = fit(root / "resumed", data, [resumed], last, **trainer_args)
    done = [b for b in reference.batches if b[0] < saved_step]
    # Batch by batch: global step, epoch, batch index, examples and learning rate continue.
    assert resumed.batches[0][0] == saved_step
    assert done + resumed.batches == reference.batches
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert trainer.global_step == expected.global_step
    for (name, value), reference_value in zip(
        model.state_dict().items(), expected_model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(value, reference_value, msg=name)
    return resumed.batches


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume-cache")


@pytest.mark.parametrize(
    ("accumulate", "workers", "epoch", "step"),
    [(1, 0, 1, 4), (1, 0, 2, 0), (2, 1, 1, 2)],
    ids=["mid-epoch", "epoch-end", "accumulate-workers"],
)
def test_a_resumed_run_trains_as_if_never_interrupted(
    tmp_path, cache, accumulate: int, workers: int, epoch: int, step: int
) -> None:
    # A checkpoint every `saved` steps (as by every_n_train_steps); the run crashes two later.
    data = make_data(cache, workers)
    data.setup()
    steps_per_epoch = math.ceil(len(data.train_dataloader()) / accumulate)
    saved = epoch * steps_per_epoch + step
    every = {"every_n_train_steps": saved, "save_top_k": -1}
    resumed = check_resumed_run_continues(
        tmp_path, data, every, crash=saved + 2, max_epochs=EPOCHS,
        accumulate_grad_batches=accumulate,
    )  # fmt: skip
    first_epoch, first_batch = resumed[0][1:3]
    assert (first_epoch, first_batch > 0) == (epoch, step > 0)  # mid-epoch, or a new epoch


def test_a_run_resumes_mid_epoch_from_a_validation_checkpoint(tmp_path, cache) -> None:
    # As the recipes: max_steps, validation every few steps, last.ckpt written after it.
    data = make_data(cache)
    resumed = check_resumed_run_continues(
        tmp_path, data, {}, crash=23, max_steps=30, val_check_interval=4,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    assert resumed[0][2] > 0  # the checkpoint is mid-epoch


LENGTHS = list(range(1, 60))


def token_data() -> TokenBatchDataset:
    rows = {"src_ids": [[5] * n for n in LENGTHS], "tgt_ids": [[6] * n for n in LENGTHS]}
    texts = {"source": ["s"] * len(LENGTHS), "target": ["t"] * len(LENGTHS)}
    columns = {**rows, **texts, "index": list(range(len(LENGTHS)))}
    return TokenBatchDataset(datasets.Dataset.from_dict(columns))


def sampler_for(rank: int = 0, replicas: int = 1) -> TokenBatchSampler:
    return TokenBatchSampler(LENGTHS, max_tokens=64, num_replicas=replicas, rank=rank)


def epoch_of(sampler: TokenBatchSampler, epoch: int) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def indices(loader: ResumableLoader) -> list[list[int]]:
    return [batch["index"].tolist() for batch in loader]


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_starts_its_own_shard_at_the_trainers_position(rank: int) -> None:
    position = (3, 2)  # epoch 3, two batches trained (on every rank)
    loader = ResumableLoader(token_data(), sampler_for(rank, 2), lambda: position)
    epoch_3 = epoch_of(sampler_for(rank, 2), 3)
    assert indices(loader) == epoch_3[2:]
    assert len(loader) == len(epoch_3)  # Lightning counts the skipped batches as done
    position = (4, 0)  # the next epoch is whole
    assert indices(loader) == epoch_of(sampler_for(rank, 2), 4)


def test_when_not_training_the_loader_gives_the_whole_epoch_of_set_epoch() -> None:
    sampler = sampler_for()
    loader = ResumableLoader(token_data(), sampler, lambda: None)
    sampler.start = 5  # left over from a resumed epoch
    sampler.set_epoch(4)
    assert indices(loader) == epoch_of(sampler_for(), 4)


# --- resuming with another batching -----------------------------------------------------------


@pytest.mark.parametrize(
    "layouts",
    [[(64, 1), (128, 1)], [(128, 1), (64, 1)], [(64, 1), (64, 3)], [(64, 3), (256, 2), (64, 1)]],
)
def test_an_epoch_begun_under_other_layouts_ends_with_each_row_once(layouts) -> None:
    # Each (max_tokens, ranks) layout trains two batches on every rank, then the run resumes
    # under the next; the last finishes the epoch.
    done, rows, earlier = 0, [], []
    for i, (max_tokens, replicas) in enumerate(layouts):
        samplers = [
            TokenBatchSampler(LENGTHS, max_tokens, seed=3, num_replicas=replicas, rank=rank)
            for rank in range(replicas)
        ]
        shards = []
        for sampler in samplers:
            if earlier:
                sampler.resume(5, earlier, done)
            sampler.set_position(5, done)
            shards.append(list(sampler))
            assert done + len(shards[-1]) <= len(sampler)  # else Lightning ends the epoch early
        k = len(shards[0]) if i == len(layouts) - 1 else 2
        trained = [b for shard in shards for b in shard[:k] if not isinstance(b, Repeat)]
        rows += [row for batch in trained for row in batch]
        earlier.append(Layout(max_tokens, replicas, done))
        done += k
    assert sorted(rows) == list(range(len(LENGTHS)))


class Seen(L.Callback):
    """Appends each trained batch's (epoch, example indices, repeat) to `root`/rank{R}.jsonl:
    the ranks of ddp_spawn run in other processes."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        entry = [trainer.current_epoch, batch["index"].tolist(), batch["repeat"]]
        with (self.root / f"rank{trainer.global_rank}.jsonl").open("a") as out:
            out.write(json.dumps(entry) + "\n")


def seen(root: Path) -> list[tuple[int, list[int], bool]]:
    return [tuple(json.loads(line)) for f in root.glob("rank*.jsonl") for line in f.open()]


def rows_per_epoch(batches: list[tuple[int, list[int], bool]]) -> dict[int, list[int]]:
    """Each epoch's trained rows, sorted, leaving out batches repeated to even out ranks."""
    rows: dict[int, list[int]] = {}
    for epoch, indices, repeat in batches:
        if not repeat:
            rows.setdefault(epoch, []).extend(indices)
    return {epoch: sorted(indices) for epoch, indices in rows.items()}


@pytest.mark.parametrize(
    ("before", "after", "every"),
    [
        ((200, 1), (100, 1), {"every_n_train_steps": 3}),
        ((100, 1), (400, 1), {"every_n_train_steps": 5}),
        ((200, 1), (400, 1), {}),  # the checkpoint is written after validation
        ((200, 1), (200, 2), {"every_n_train_steps": 3}),
        ((200, 2), (100, 1), {"every_n_train_steps": 2}),
    ],
    ids=["smaller-batches", "larger-batches", "validation-checkpoint", "1-to-2", "2-to-1"],
)
def test_a_run_resumed_with_another_batching_trains_each_row_once_an_epoch(
    tmp_path, cache, before: tuple[int, int], after: tuple[int, int], every: dict
) -> None:
    # (max_tokens, processes) of the interrupted run and of the resumed one.
    steps = every.get("every_n_train_steps", 4)
    runs = {}
    for name, (max_tokens, devices), ckpt_path, args in [
        ("interrupted", before, None, {"max_steps": steps}),
        ("resumed", after, tmp_path / "checkpoints" / "last.ckpt", {"max_epochs": 2}),
    ]:
        runs[name] = tmp_path / name
        runs[name].mkdir()
        data = make_data(cache, max_tokens=max_tokens)
        checkpoint = ModelCheckpoint(tmp_path / "checkpoints", save_last=True, **every)
        strategy = {"strategy": "ddp_spawn", "devices": 2} if devices > 1 else {}
        fit(
            runs[name], data, [Seen(runs[name]), checkpoint], ckpt_path,
            val_check_interval=steps, check_val_every_n_epoch=None, **strategy, **args,
        )  # fmt: skip
    interrupted = seen(runs["interrupted"])
    assert {epoch for epoch, *_ in interrupted} == {0}, "the interruption is mid-epoch"
    data = make_data(cache)
    data.setup()
    everything = sorted(data.datasets["train"]["index"])
    assert rows_per_epoch(interrupted + seen(runs["resumed"])) == {0: everything, 1: everything}
