"""Token-budget batches: a length-bucketing sampler, a batch-fetching dataset, `collate`, a
training loader that a run resumed mid-epoch continues (with the same or another batching, see
`ResumableBatches`), and `token_loader`, which builds a DataModule's loaders from them."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Layout:
    """How a stretch of a training epoch was batched: by `max_tokens` on `num_replicas` ranks,
    from the trainer's batch `start` of that epoch on (each rank has had as many)."""

    max_tokens: int
    num_replicas: int
    start: int = 0


class TokenBatchSampler(DistributedSampler):
    """Yields lists of indices whose padded size `len(batch) * max(length)` is <= `max_tokens`.

    Examples are sorted by length (ties in a seeded random order when shuffling) and cut
    greedily into batches, whose order is then shuffled by `seed + epoch`. With
    `shuffle=False` the batches come sorted by length in a fixed order (for evaluation).
    Each rank takes every `num_replicas`-th batch; the batch list is padded by repeating
    batches from its start, as `Repeat` lists, so that every rank gets `len(self)` batches
    and none waits. `start` skips this rank's first batches (for a run resumed mid-epoch); `len`
    stays the full count.

    An epoch begun under other layouts (`resume`: another `max_tokens` or number of ranks)
    is finished on the rows those layouts had not reached, batched by this sampler's own.

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
        # The epoch begun under other layouts, and those layouts, oldest first.
        self.resumed_epoch: int | None = None
        self.earlier: list[Layout] = []
        self.layout = Layout(max_tokens, num_replicas)

    def resume(self, epoch: int, earlier: list[Layout], start: int) -> None:
        """Finish `epoch`, begun under the `earlier` layouts, from the trainer's batch `start`
        of it on: on the rows they had not reached, each exactly once."""
        self.resumed_epoch, self.earlier = epoch, earlier
        self.layout = Layout(self.max_tokens, self.num_replicas, start)
        self.set_epoch(epoch)
        rows = self._rows_left()
        if not len(rows):  # the epoch was finished
            self.resumed_epoch, self.earlier = None, []
            self.layout = Layout(self.max_tokens, self.num_replicas)
            return
        rest = -(-len(self._batches(rows)) // self.num_replicas)
        # Lightning counts an epoch's batches once; more than are yielded ends it early.
        self.batches_per_rank = max(self.batches_per_rank, start + rest)

    def set_position(self, epoch: int, done: int) -> None:
        """Begin iterating `epoch` after the trainer's first `done` batches of it."""
        self.set_epoch(epoch)
        self.start = done - (self.layout.start if epoch == self.resumed_epoch else 0)

    def batches(self) -> list[list[int]]:
        """All batches of this epoch, before sharding."""
        return self._batches(self._rows_left() if self.epoch == self.resumed_epoch else None)

    def _batches(self, rows: np.ndarray | None, max_tokens: int | None = None) -> list[list[int]]:
        """This epoch's batches of `rows` (default: all), cut by `max_tokens`."""
        rng = np.random.default_rng(self.seed + self.epoch)
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        if rows is not None:
            order = order[np.isin(order, rows)]
        order = order[np.argsort(self.lengths[order], kind="stable")]
        sizes = _cut(self.lengths[order], max_tokens or self.max_tokens)
        bounds = np.cumsum([0, *sizes])
        batches = [order[a:b].tolist() for a, b in itertools.pairwise(bounds)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rows_left(self) -> np.ndarray:
        """The rows of this epoch that the earlier layouts did not reach."""
        rows = np.arange(len(self.lengths))
        ends = [layout.start for layout in self.earlier[1:]] + [self.layout.start]
        for layout, end in zip(self.earlier, ends, strict=True):
            batches = _even(self._batches(rows, layout.max_tokens), layout.num_replicas)
            # Rank r's shard is batches[r::n], so its first k batches are among the first k*n.
            taken = batches[: (end - layout.start) * layout.num_replicas]
            rows = np.setdiff1d(rows, [i for batch in taken for i in batch])
        return rows

    def __iter__(self) -> Iterator[list[int]]:  # type: ignore[override]
        batches = _even(self.batches(), self.num_replicas)
        return iter(batches[self.rank :: self.num_replicas][self.start :])

    def __len__(self) -> int:
        return self.batches_per_rank


def _even(batches: list[list[int]], num_replicas: int) -> list[list[int]]:
    """`batches` padded to a multiple of `num_replicas` by repeating them from the start."""
    total = -(-len(batches) // num_replicas) * num_replicas
    if not batches:
        return batches
    repeats = [Repeat(b) for b in batches] * -(-total // len(batches))
    return (batches + repeats)[:total]


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
        position = self.position()
        if position is None:
            self.sampler.start = 0
        else:
            self.sampler.set_position(*position)
        yield from super().__iter__()

    # The position is in the trainer's progress, which checkpoints hold; these two only make
    # Lightning see a resumable loader, so that it does not warn that resuming mid-epoch is not.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ResumableBatches:
    """DataModule mixin: checkpoints keep how the epoch in progress was batched (`state_dict`),
    so that a run resumed with another `max_tokens` or number of processes trains on exactly
    the rows that epoch has not had, each once, instead of skipping as many batches as were
    done (`TokenBatchSampler.resume`). `token_loader` hands it the training sampler."""

    trainer: Any
    _train_sampler: TokenBatchSampler | None = None
    _resumed: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # type: ignore[misc]
        sampler, trainer = self._train_sampler, self.trainer
        if sampler is not None and trainer is not None and trainer.state.fn == "fit":
            epoch = trainer.current_epoch
            layouts = [*sampler.earlier] if epoch == sampler.resumed_epoch else []
            state["batches"] = {
                "epoch": epoch,
                # What the trainer restores as the epoch's batch count.
                "done": trainer.fit_loop.epoch_loop.batch_progress.current.processed,
                "layouts": [asdict(layout) for layout in [*layouts, sampler.layout]],
                "rows": len(sampler.lengths),
                "seed": sampler.seed,
            }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        self._resumed = state.get("batches")

    def _use_train_sampler(self, sampler: TokenBatchSampler) -> None:
        self._train_sampler, resumed = sampler, self._resumed
        if resumed is None:
            return
        layouts = [Layout(**layout) for layout in resumed["layouts"]]
        if (resumed["rows"], resumed["seed"]) != (len(sampler.lengths), sampler.seed):
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                f"--ckpt_path: the checkpoint's epoch {resumed['epoch']} was batched from "
                f"{resumed['rows']} training rows with seed {resumed['seed']}, this run has "
                f"{len(sampler.lengths)} with seed {sampler.seed}: the rest of that epoch "
                "continues by batch count, so some rows may be skipped or repeated"
            )
        elif layouts[-1] != Layout(sampler.max_tokens, sampler.num_replicas, layouts[-1].start):
            sampler.resume(resumed["epoch"], layouts, resumed["done"])
        elif len(layouts) > 1:
            sampler.resume(resumed["epoch"], layouts[:-1], layouts[-1].start)


def whole_batch(batch: Batch) -> Batch:
    """A collate function for datasets that build whole batches (`dataset[indices]` or
    `__getitems__`): the batch as it is."""
    return batch


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
    (`ResumableLoader`; `module` is a `ResumableBatches`); otherwise they come in length
    order. `module.num_workers` workers."""
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
        module._use_train_sampler(sampler)
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
