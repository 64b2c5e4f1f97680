"""`seqkit fit` as the bench scripts run it: in a subprocess, exactly as a user types it (a
helper module, not a benchmark)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_fit(options: list[str], run_dir: Path, name: str = "") -> tuple[Path, float, str]:
    """Run `seqkit fit OPTIONS` from the repository root with `run_dir` as the trainer's root
    directory and no progress bar; write its output and wall time to RUN_DIR/fit.log (the
    last line "wall time N s"). Returns the exported model directory, the wall seconds and
    the output. Exits naming the log (and `name`, e.g. a table row) when fitting fails."""
    command = [sys.executable, "-m", "seqkit.cli", "fit", *options,
               f"--trainer.default_root_dir={run_dir}",
               "--trainer.enable_progress_bar=false"]  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    log = run_dir / "fit.log"
    log.write_text(f"{result.stdout}{result.stderr}\nwall time {wall:.0f} s\n")
    found = re.search(r"model written to (\S+)", result.stdout)
    if result.returncode or not found:
        what = f"seqkit fit ({name})" if name else "seqkit fit"
        sys.exit(f"{what} failed, see {log}:\n{result.stderr[-2000:]}")
    return Path(found.group(1)), wall, result.stdout
