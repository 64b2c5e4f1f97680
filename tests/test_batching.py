"""Token-budget batching: budget respected, coverage per epoch, sharding, order, collation."""

import itertools

import datasets
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from seqkit.data.batching import TokenBatchDataset, TokenBatchSampler, collate
from seqkit.data.tokenizer import BOS, EOS, PAD

MAX_TOKENS = 64


@pytest.fixture
def lengths() -> list[int]:
    return np.random.default_rng(0).integers(1, MAX_TOKENS + 1, size=500).tolist()


def epoch(sampler: TokenBatchSampler, number: int = 0) -> list[list[int]]:
    sampler.set_epoch(number)
    return list(sampler)


def test_is_a_distributed_sampler(lengths: list[int]) -> None:
    # Lightning leaves a DistributedSampler in place under DDP instead of replacing it.
    assert isinstance(TokenBatchSampler(lengths, MAX_TOKENS), DistributedSampler)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_respect_the_budget_and_cover_each_index_once(lengths, shuffle: bool) -> None:
    sampler = TokenBatchSampler(lengths, MAX_TOKENS, shuffle=shuffle)
    batches = epoch(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= MAX_TOKENS
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))


def test_batches_are_filled_greedily(lengths: list[int]) -> None:
    # No batch could take the next-longer example: otherwise batches are needlessly small.
    batches = epoch(TokenBatchSampler(lengths, MAX_TOKENS, shuffle=False))
    for batch, following in itertools.pairwise(batches):
        longest = max(lengths[i] for i in [*batch, following[0]])
        assert (len(batch) + 1) * longest > MAX_TOKENS


def test_an_overlong_example_forms_its_own_batch() -> None:
    batches = epoch(TokenBatchSampler([3, 100, 4, 5], max_tokens=16, shuffle=False))
    assert [1] in batches
    assert sorted(i for batch in batches for i in batch) == [0, 1, 2, 3]


def test_unshuffled_batches_are_sorted_and_fixed(lengths: list[int]) -> None:
    sampler = TokenBatchSampler(lengths, MAX_TOKENS, shuffle=False)
    order = [lengths[i] for batch in epoch(sampler, 0) for i in batch]
    assert order == sorted(lengths)
    assert epoch(sampler, 0) == epoch(sampler, 3)


def test_epochs_and_seeds_change_the_order_deterministically(lengths: list[int]) -> None:
    first = TokenBatchSampler(lengths, MAX_TOKENS, seed=1)
    second = TokenBatchSampler(lengths, MAX_TOKENS, seed=1)
    assert epoch(first, 0) == epoch(second, 0)
    assert epoch(first, 1) == epoch(second, 1)
    assert epoch(first, 0) != epoch(first, 1)
    assert epoch(first, 0) != epoch(TokenBatchSampler(lengths, MAX_TOKENS, seed=2), 0)


def test_shuffling_varies_batch_contents_among_equal_lengths() -> None:
    sampler = TokenBatchSampler([4] * 64, max_tokens=16)
    contents = [sorted(map(sorted, epoch(sampler, number))) for number in range(2)]
    assert contents[0] != contents[1]


def shards(lengths: list[int], replicas: int, **kwargs) -> list[list[list[int]]]:
    samplers = [
        TokenBatchSampler(lengths, MAX_TOKENS, num_replicas=replicas, rank=rank, **kwargs)
        for rank in range(replicas)
    ]
    for sampler in samplers:
        sampler.set_epoch(5)
    return [list(sampler) for sampler in samplers]


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_are_disjoint_and_cover_everything(shuffle: bool) -> None:
    lengths = [16] * 48  # 4 per batch: 12 batches, 4 per rank
    per_rank = shards(lengths, 3, shuffle=shuffle)
    assert [len(batches) for batches in per_rank] == [4, 4, 4]
    indices = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(indices) == list(range(48))


@pytest.mark.parametrize("replicas", [2, 3, 7, 40])
def test_ranks_get_equal_batch_counts(lengths: list[int], replicas: int) -> None:
    total = len(TokenBatchSampler(lengths, MAX_TOKENS))
    per_rank = shards(lengths, replicas)
    counts = {len(batches) for batches in per_rank}
    assert counts == {-(-total // replicas)}
    sampler = TokenBatchSampler(lengths, MAX_TOKENS, num_replicas=replicas, rank=replicas - 1)
    assert len(sampler) == counts.pop()
    # Everything is covered; repeats come only from the padding batches.
    batches = [tuple(batch) for rank_batches in per_rank for batch in rank_batches]
    assert sorted({i for batch in batches for i in batch}) == list(range(len(lengths)))
    assert len(set(batches)) == total


def test_empty_dataset_gives_no_batches() -> None:
    sampler = TokenBatchSampler([], MAX_TOKENS, num_replicas=2, rank=1)
    assert len(sampler) == 0 and list(sampler) == []


def test_rejects_a_non_positive_budget() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        TokenBatchSampler([1, 2], 0)


@pytest.fixture
def rows() -> dict[str, list]:
    return {
        "src_ids": [[5, 6, 7, EOS], [8, EOS]],
        "tgt_ids": [[9, EOS], [10, 11, 12, 13, EOS]],
        "index": [4, 0],
        "source": ["a b c", "d"],
        "target": ["x", "y z w v"],
    }


def test_collate_places_bos_eos_and_pad(rows: dict[str, list]) -> None:
    batch = collate(rows)
    assert batch["src"].tolist() == [[5, 6, 7, EOS], [8, EOS, PAD, PAD]]
    assert batch["tgt_in"].tolist() == [[BOS, 9, PAD, PAD, PAD], [BOS, 10, 11, 12, 13]]
    assert batch["tgt_out"].tolist() == [[9, EOS, PAD, PAD, PAD], [10, 11, 12, 13, EOS]]
    assert batch["index"].tolist() == [4, 0]
    assert all(batch[key].dtype == torch.long for key in ("src", "tgt_in", "tgt_out", "index"))
    assert batch["src_text"] == rows["source"] and batch["tgt_text"] == rows["target"]


def test_dataloader_yields_one_collated_batch_per_index_list(rows: dict[str, list]) -> None:
    columns = {key: values * 10 for key, values in rows.items()}
    data = datasets.Dataset.from_dict({**columns, "index": list(range(20))})
    lengths = [max(len(s), len(t)) for s, t in zip(data["src_ids"], data["tgt_ids"], strict=True)]
    sampler = TokenBatchSampler(lengths, max_tokens=12, seed=3)
    loader = DataLoader(
        TokenBatchDataset(data), batch_size=None, sampler=sampler, collate_fn=collate
    )
    batches = list(loader)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert batch["src"].numel() <= 12 and batch["tgt_out"].numel() <= 12
        for row, index in enumerate(batch["index"].tolist()):
            assert batch["tgt_text"][row] == data[index]["target"]
