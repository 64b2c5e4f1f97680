"""Token-budget batches: a length-bucketing sampler, a batch-fetching dataset, `collate`, a
training loader that a run resumed mid-epoch continues, and `token_loader`, which builds a
DataModule's loaders from them."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from seqkit.tokens import BOS, PAD

if TYPE_CHECKING:
    import datasets

Batch = dict[str, Any]


class Repeat(list):
    """A batch a sampler repeats only so that every rank gets as many batches: evaluation
    skips it, training uses it like any other."""


class TokenBatchSampler(DistributedSampler):
    """Yields lists of indices whose padded size `len(batch) * max(length)` is <= `max_tokens`.

    Examples are sorted by length (ties in a seeded random order when shuffling) and cut
    greedily into batches, whose order is then shuffled by `seed + epoch`. With
    `shuffle=False` the batches come sorted by length in a fixed order (for evaluation).
    Each rank takes every `num_replicas`-th batch; the batch list is padded by repeating
    batches from its start, as `Repeat` lists, so that every rank gets `len(self)` batches
    and none waits. `start` skips this rank's first batches (for a run resumed mid-epoch); `len`
    stays the full count.

    A subclass of DistributedSampler so that Lightning keeps it under DDP (rather than
    wrapping it) and calls `set_epoch`; it needs no process group.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        # The parent only needs len(dataset); explicit replicas/rank avoid a process group.
        super().__init__(
            lengths,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=False,
        )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.max_tokens = max_tokens
        # Batch boundaries depend only on the sorted lengths, not on how ties are ordered,
        # so the count is the same every epoch.
        self.num_batches = len(_cut(np.sort(self.lengths), max_tokens))
        self.batches_per_rank = -(-self.num_batches // num_replicas)
        self.start = 0  # the first of this rank's batches that an iteration yields

    def batches(self) -> list[list[int]]:
        """All batches of this epoch, before sharding."""
        rng = np.random.default_rng(self.seed + self.epoch)
        if self.shuffle:
            order = rng.permutation(len(self.lengths))
            order = order[np.argsort(self.lengths[order], kind="stable")]
        else:
            order = np.argsort(self.lengths, kind="stable")
        sizes = _cut(self.lengths[order], self.max_tokens)
        bounds = np.cumsum([0, *sizes])
        batches = [order[a:b].tolist() for a, b in itertools.pairwise(bounds)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        batches = self.batches()
        total = self.batches_per_rank * self.num_replicas
        if batches:
            repeats = [Repeat(b) for b in batches] * -(-total // len(batches))
            batches = (batches + repeats)[:total]
        return iter(batches[self.rank :: self.num_replicas][self.start :])

    def __len__(self) -> int:
        return self.batches_per_rank


def _cut(sorted_lengths: np.ndarray, max_tokens: int) -> list[int]:
    """Greedy batch sizes over ascending lengths, so the last length is the batch maximum."""
    sizes: list[int] = []
    size = 0
    for length in sorted_lengths.tolist():
        if size and (size + 1) * length > max_tokens:
            sizes.append(size)
            size = 0
        size += 1  # a single example longer than max_tokens still forms a batch of one
    if size:
        sizes.append(size)
    return sizes


class TokenBatchDataset(Dataset):
    """A tokenized split whose `__getitem__` takes a list of indices and returns their rows.

    For `DataLoader(..., batch_size=None, sampler=TokenBatchSampler(...), collate_fn=collate)`:
    one call per batch, and Hugging Face fetches many rows at once.
    """

    def __init__(self, data: datasets.Dataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices: list[int]) -> dict[str, Any]:
        return {**self.data[list(indices)], "repeat": isinstance(indices, Repeat)}


def pad(sequences: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, max length) LongTensor, right-padded with PAD."""
    tensors = [torch.as_tensor(seq, dtype=torch.long) for seq in sequences]
    return torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=PAD)


def collate(rows: Mapping[str, Sequence[Any]]) -> Batch:
    """The batch dict from columns `src_ids`, `tgt_ids` (both ending in EOS), `index`,
    `source` and `target`.

    Returns `src` (B, S), `tgt_in` = BOS + target without its EOS (B, T), `tgt_out` =
    target with EOS (B, T), all PAD-padded; `index` (B,); raw `src_text` and `tgt_text`;
    `repeat`, True for a batch repeated only to even out ranks.
    """
    return {
        "src": pad(rows["src_ids"]),
        "tgt_in": pad([[BOS, *ids[:-1]] for ids in rows["tgt_ids"]]),
        "tgt_out": pad(rows["tgt_ids"]),
        "index": torch.as_tensor(rows["index"], dtype=torch.long),
        "src_text": list(rows["source"]),
        "tgt_text": list(rows["target"]),
        "repeat": bool(rows.get("repeat", False)),
    }


def trainer_position(trainer: Any) -> tuple[int, int] | None:
    """The epoch and how many of its batches `trainer` has had, restored from the checkpoint
    when resuming; None when not training (what `ResumableLoader` needs as `position`)."""
    if trainer is None or not trainer.training:
        return None
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready


class ResumableLoader(DataLoader):
    """A training DataLoader of token batches that begins each epoch where the trainer stands:
    `position()` gives the trainer's epoch and how many of its batches it has had, or None when
    not training. That is 0 batches in a new epoch; in a run resumed mid-epoch it is the count
    the checkpoint holds, so the run trains on the rest of that epoch in the interrupted order
    (under DDP each rank skips as many of its own batches).

    The trainer's count, not this loader's: the loader's runs ahead by what workers prefetch,
    and Lightning restores a loader's `load_state_dict` state only if it sets up the data after
    restoring, which `estimated_stepping_batches` prevents (Lightning issue #20550).
    """

    sampler: TokenBatchSampler

    def __init__(
        self,
        dataset: Dataset,
        sampler: TokenBatchSampler,
        position: Callable[[], tuple[int, int] | None],
        num_workers: int = 0,
        collate_fn: Callable[[Any], Batch] = collate,
    ) -> None:
        """`dataset[indices]` returns what `collate_fn` turns into a batch."""
        super().__init__(
            dataset,
            batch_size=None,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )
        self.position = position

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        # Lazy, so the position is read at the first batch: Lightning calls `iter` before it
        # restores its progress. The epoch is the trainer's too: Lightning's `set_epoch` comes
        # late (an eager resume got epoch 0's order) and, resuming a max_steps run from an
        # epoch's end, is one ahead.
        epoch, self.sampler.start = self.position() or (self.sampler.epoch, 0)
        self.sampler.set_epoch(epoch)
        yield from super().__iter__()

    # The position is in the trainer's progress, which checkpoints hold; these two only make
    # Lightning see a resumable loader, so that it does not warn that resuming mid-epoch is not.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def token_loader(
    module: Any,
    dataset: Dataset,
    lengths: Sequence[int],
    max_tokens: int,
    train: bool,
    collate_fn: Callable[[Any], Batch] = collate,
) -> DataLoader:
    """A DataModule's loader of `dataset` in batches of at most `max_tokens` tokens (padding
    included), each rank of `module.trainer` taking its share. For training the batches are
    shuffled by `module.seed` and epoch, and a run resumed mid-epoch goes on where it stopped
    (`ResumableLoader`); otherwise they come in length order. `module.num_workers` workers."""
    trainer = module.trainer
    sampler = TokenBatchSampler(
        lengths,
        max_tokens,
        shuffle=train,
        seed=module.seed,
        num_replicas=trainer.world_size if trainer is not None else 1,
        rank=trainer.global_rank if trainer is not None else 0,
    )
    if train:
        position = lambda: trainer_position(module.trainer)  # noqa: E731
        return ResumableLoader(dataset, sampler, position, module.num_workers, collate_fn)
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=module.num_workers,
        persistent_workers=module.num_workers > 0,
    )
