"""`seqkit fit` killed with SIGKILL between checkpoints and in the middle of writing one, and
resumed from last.ckpt each time, ends with exactly the weights of a run never interrupted;
a kill during a save leaves the previous last.ckpt whole."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from seqkit.cli import main
from seqkit.lit.checkpoint_io import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 10, 2  # 8 batches an epoch: the runs cross an epoch's end
TINY = [
    "--model.init_args.config.d_model=16", "--model.init_args.config.n_heads=2",
    "--model.init_args.config.n_encoder_layers=1", "--model.init_args.config.n_decoder_layers=1",
    "--model.init_args.config.d_ff=32", "--model.init_args.optimizer.warmup_steps=4",
    "--model.init_args.decoding.beam_size=1", "--model.init_args.decoding.max_len=8",
    "--data.n_train=64", "--data.n_val=4", "--data.n_test=4", "--data.vocab_size=280",
    "--data.max_tokens=300", "--data.num_workers=0",
]  # fmt: skip
# (where the run is stopped and killed, the global step last.ckpt holds after the kill)
KILLS = [
    ({"at": "step", "step": 3}, 2),  # before the batch at step 3, mid-epoch
    ({"at": "open", "step": 4}, 2),  # the save at step 4 has just opened its file
    ({"at": "rename", "step": 8}, 6),  # the save at step 8 is about to rename it into place
]
TIMEOUT = 120  # seconds a run may take before the test gives up on it
# The runs are forked from a server that has imported what `seqkit fit` imports, once: a
# fresh process would take ~7 s more each.
CONTEXT = multiprocessing.get_context("forkserver")
CONTEXT.set_forkserver_preload(
    ["seqkit.cli", "seqkit.lit.cli", "seqkit.callbacks", "seqkit.data", "datasets", "sacrebleu"]
)
_stopped = None  # in a child: the Event that tells the test it stopped at its KillPoint


class KillPoint(L.Callback):
    """Stops the run for the test to kill it: before the batch at global step `step` ("step"),
    or in the checkpoint save at `step`, just after it opens a file in the checkpoint
    directory for writing ("open": a writer that writes in place has just truncated its
    target) or just before it renames a file into that directory ("rename": the file is
    written). An audit hook sees the open and the rename; at the open it sets a profile hook,
    which stops at the next call, once the file is open. (A writer that opens no file in the
    directory never stops at "open": the run ends, and the test says so.)"""

    def __init__(self, step: int, at: Literal["step", "open", "rename"] = "step") -> None:
        self.step, self.at = step, at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.at == "step" and trainer.global_step == self.step:
            _stop()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.at != "step" and trainer.global_step == self.step:
            directory = os.path.abspath(trainer.checkpoint_callback.dirpath)
            sys.addaudithook(lambda event, args: self._audit(directory, event, args))

    def _audit(self, directory: str, event: str, args: tuple) -> None:
        if self.at == "open" and event == "open" and _in(directory, args[0]):
            if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
                sys.setprofile(lambda frame, event, arg: event in ("call", "c_call") and _stop())
        elif self.at == "rename" and event == "os.rename" and _in(directory, args[1]):
            _stop()  # os.rename and os.replace


def _in(directory: str, path: object) -> bool:
    return isinstance(path, str | os.PathLike) and (
        os.path.dirname(os.path.abspath(path)) == directory
    )


def _stop() -> None:
    _stopped.set()
    time.sleep(TIMEOUT)  # the test kills this process


def _fit(args: list[str], log: Path, stopped, temp_dir: str | None) -> None:
    """A child process: `seqkit fit ARGS`, its output into `log`."""
    global _stopped
    _stopped = stopped
    tempfile.tempdir = temp_dir
    torch.set_num_threads(1)  # every run alike, and fast beside other work on a small machine
    with open(log, "w") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    main(["fit", *args])


def other_filesystem(path: Path) -> str | None:
    """A temporary directory on another filesystem than `path`, if there is one (/dev/shm), as
    on a cluster node whose /tmp is local: there Lightning's own write is not atomic."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != path.stat().st_dev:
        return str(shm)
    return None


def start(args: list[str], log: Path) -> tuple[multiprocessing.Process, Any]:
    """`seqkit fit ARGS` started in a child process, its output into `log`; and the Event it
    sets when it stops at a KillPoint."""
    stopped = CONTEXT.Event()
    child = CONTEXT.Process(target=_fit, args=(args, log, stopped, other_filesystem(log.parent)))
    child.start()
    return child, stopped


def finish(child: multiprocessing.Process, stopped: Any, log: Path) -> int:
    """The exit code of a child started by `start`, killed with SIGKILL (-SIGKILL) once it
    stops at a KillPoint."""
    deadline = time.monotonic() + TIMEOUT
    while child.is_alive() and not stopped.wait(0.05):
        if time.monotonic() > deadline:
            os.kill(child.pid, signal.SIGKILL)
            pytest.fail(f"seqkit fit still running after {TIMEOUT} s\n{log.read_text()}")
    if stopped.is_set():
        os.kill(child.pid, signal.SIGKILL)
    child.join()
    return child.exitcode


def fit_args(tmp: Path, run: str, *extra: str) -> list[str]:
    """The embedded default recipe made tiny and deterministic, checkpointing (last.ckpt only)
    every EVERY steps into tmp/run/checkpoints."""
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(tmp / run / "checkpoints"), "save_top_k": 0, "save_last": True,
        "every_n_train_steps": EVERY}}  # fmt: skip
    return [
        "--config", str(ROOT / "recipes/transformer-numbers.yaml"), *TINY,
        f"--data.cache_dir={tmp / 'cache'}", f"--trainer.callbacks=[{json.dumps(checkpoint)}]",
        f"--trainer.max_steps={STEPS}", "--trainer.max_time=null", "--seed_everything=1",
        "--trainer.accelerator=cpu", "--trainer.deterministic=true", "--trainer.logger=false",
        "--trainer.limit_val_batches=0", "--trainer.limit_test_batches=1",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp / run}", *extra,
    ]  # fmt: skip


def saved_step(last: Path) -> int:
    """The global step of the checkpoint `last`, which must be whole."""
    try:
        return torch.load(last, weights_only=True)["global_step"]
    except Exception as err:
        pytest.fail(f"{last} ({last.stat().st_size} bytes) does not load: {err!r}")


def test_fit_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    # The uninterrupted run goes alongside (its data cache too: written atomically).
    reference_log, log = tmp_path / "reference.log", tmp_path / "killed.log"
    reference = start(fit_args(tmp_path, "reference"), reference_log)
    last = tmp_path / "killed/checkpoints/last.ckpt"
    resume = []
    for kill, saved in KILLS:
        point = json.dumps({"class_path": f"{__name__}.KillPoint", "init_args": kill})
        args = fit_args(tmp_path, "killed", *resume, f"--trainer.callbacks+={point}")
        code = finish(*start(args, log), log)
        assert code == -signal.SIGKILL, f"{kill} never reached: exit code {code}\n{log.read_text()}"
        assert saved_step(last) == saved, kill  # whole: the save before the kill
        assert [p.name for p in last.parent.glob("*.ckpt")] == ["last.ckpt"]
        resume = [f"--ckpt_path={last}"]
    code = finish(*start(fit_args(tmp_path, "killed", *resume), log), log)
    assert code == 0, log.read_text()
    assert [p.name for p in last.parent.iterdir()] == ["last.ckpt"]  # no temporary file left
    assert finish(*reference, reference_log) == 0, reference_log.read_text()

    expected = torch.load(tmp_path / "reference/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == expected["global_step"] == STEPS
    assert expected["epoch"] == 1  # the runs crossed an epoch's end
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=key)
    exported = load_file(tmp_path / "killed/model/model.safetensors")
    torch.testing.assert_close(
        exported, load_file(tmp_path / "reference/model/model.safetensors"), rtol=0, atol=0
    )


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    class Unwritable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    io, last = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    (tmp_path / f".last.ckpt.{os.getpid() + 1}.tmp").write_bytes(b"left by a killed save")
    io.save_checkpoint({"global_step": 1}, last)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"global_step": 2, "bad": Unwritable()}, last)
    assert saved_step(last) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
