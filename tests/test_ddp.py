"""Two-process DDP on CPU (gloo): ranks split the data, and gathered scores equal one process's.

`ddp_fit.py` fits, validates and tests a tiny model under `strategy="ddp"` in a subprocess
(Lightning re-runs the command as rank 1, which pytest cannot host); the same checkpoint is
then scored here in one process.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_fit import LONG, MAX_EPOCHS, MEDIUM, SHORT, make_data, make_trainer, write_data
from tiny_models import one_thread

from seqkit.data.batching import TokenBatchSampler
from seqkit.lit.cli import load_checkpoint

SCRIPT = Path(__file__).with_name("ddp_fit.py")
TIMEOUT_S = 240  # ~25 s on two busy cores; a hung collective fails the tests instead of CI

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp(root: Path) -> list[dict]:
    """Run ddp_fit.py on `root`; kill both ranks (one process group) if it outlives TIMEOUT_S."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "RANK")}
    env |= {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    env.pop("WORLD_SIZE", None)
    log = root / "ddp.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(SCRIPT), str(root)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # rank 1 is rank 0's child: kill the group
            proc.wait()
            pytest.fail(f"DDP run hung for {TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
    assert code == 0, log.read_text()[-4000:]
    return [json.loads((root / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]


def score_in_one_process(root: Path) -> dict[str, dict[str, float]]:
    """Validate and test the DDP run's checkpoint with devices=1, on one thread as the ranks."""
    model, data = load_checkpoint(root / "out" / "model.ckpt"), make_data(root)
    trainer = make_trainer(root, [], devices=1)
    with one_thread():  # thread count can change the last bit of a sum, then an argmax
        trainer.validate(model, data, verbose=False)
        metrics = {"validate": dict(trainer.callback_metrics)}
        trainer.test(model, data, verbose=False)
        metrics["test"] = dict(trainer.callback_metrics)
    return {stage: {k: float(v) for k, v in m.items()} for stage, m in metrics.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    write_data(root)
    ranks = run_ddp(root)
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    data = make_data(root)
    data.setup()
    return {"ranks": ranks, "data": data, "single": score_in_one_process(root)}


def batches_of(run: dict, stage: str, epoch: int | None = None) -> list[list[dict]]:
    """Per rank, the batches it got in `stage` (train: in `epoch`)."""
    return [
        [b for b in rank["batches"][stage] if epoch is None or b["epoch"] == epoch]
        for rank in run["ranks"]
    ]


def check_sharding(per_rank: list[list[dict]], n_examples: int, n_batches: int) -> None:
    """Equal batch counts; the batches partition the set, except for padding copies."""
    assert [len(batches) for batches in per_rank] == [-(-n_batches // 2)] * 2
    every = [b for batches in per_rank for b in batches]
    fresh = [b["index"] for b in every if not b["repeat"]]
    # Apart from the batches marked as repeats, each example is seen once, on one rank.
    assert sorted(i for batch in fresh for i in batch) == list(range(n_examples))
    assert len(fresh) == n_batches
    ranks = [{i for b in batches if not b["repeat"] for i in b["index"]} for batches in per_rank]
    assert not ranks[0] & ranks[1]
    # The repeats are exactly the padding, and each one copies a batch of this epoch.
    repeats = [b["index"] for b in every if b["repeat"]]
    assert len(repeats) == len(every) - n_batches
    assert all(batch in fresh for batch in repeats)


def test_ranks_split_every_training_epoch(run):
    train = run["data"].datasets["train"]
    n_batches = TokenBatchSampler(train["length"], run["data"].max_tokens).num_batches
    assert n_batches % 2 == 1, "the data must need a padding batch to test it"
    orders = []
    for epoch in range(MAX_EPOCHS):
        per_rank = batches_of(run, "train", epoch)
        check_sharding(per_rank, len(train), n_batches)
        orders.append([b["index"] for b in per_rank[0]])
    assert orders[0] != orders[1], "Lightning must call set_epoch: each epoch reshuffles"


def test_validation_scores_under_ddp_equal_one_process(run):
    val = run["data"].datasets["val"]
    per_rank = batches_of(run, "val")
    n_batches = TokenBatchSampler(val["length"], run["data"].eval_max_tokens).num_batches
    check_sharding(per_rank, len(val), n_batches)
    assert any(b["repeat"] for b in per_rank[1]), "the data must need a padding batch"
    ddp = [rank["validate"] for rank in run["ranks"]]
    single = run["single"]["validate"]
    assert single["val/bleu"] > 0, "an untrained model would make this 0 == 0"
    for key in ("val/bleu", "val/chrf", "val/exact_match"):
        assert ddp[0][key] == ddp[1][key] == single[key], key
    # Loss and perplexity must count the padding batch's sentences once, like one process.
    for key in ("val/loss", "val/ppl"):
        assert ddp[0][key] == pytest.approx(single[key], rel=1e-5), key
        assert ddp[1][key] == ddp[0][key], key


def test_beam_search_under_ddp_with_uneven_lengths_equals_one_process(run):
    test = run["data"].datasets["test"]
    lengths = test["length"]
    per_rank = batches_of(run, "test")
    check_sharding(per_rank, len(test), 3)
    # Rank 0 decodes the short and the long batch, rank 1 only the medium one (and skips a
    # repeat): the ranks reach the gather at very different times, after unequal step counts.
    sizes = [[len(b["index"]) for b in batches if not b["repeat"]] for batches in per_rank]
    assert sizes == [[SHORT, LONG], [MEDIUM]]
    longest = [max(lengths[i] for i in b["index"]) for b in per_rank[0]]
    assert longest[1] > 5 * longest[0]
    ddp = [rank["test"] for rank in run["ranks"]]
    single = run["single"]["test"]
    assert single["test/chrf"] > 0
    for key in ("test/bleu", "test/chrf", "test/exact_match"):
        assert ddp[0][key] == ddp[1][key] == single[key], key
    for key in ("test/loss", "test/ppl"):
        assert ddp[0][key] == pytest.approx(single[key], rel=1e-5), key
