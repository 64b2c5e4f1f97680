"""PyTorch's float matrix products with MKL's reproducibility mode off and on (`seqkit.cpu`).

    python bench/mkl_mode.py [--rounds 5]

The products of the d_model 256 Multi30k Transformer (3+3 layers, FFN 1,024, vocabulary
8,000), as `F.linear` runs them, at the row counts of its work: one greedy step of 50 sentences
(50 rows), one beam-5 step (250 rows) and one training batch (1,700 target tokens). Each
setting runs in fresh processes (MKL reads `MKL_CBWR` once, at its first call), alternating
off/on for `--rounds` rounds, 2 threads; the median counts. The ratios (off time / on time) are
printed last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

THREADS = 2
ROWS = {"greedy step": 50, "beam-5 step": 250, "training batch": 1700}
# (out, in) of every decoder product in one step: per layer the self-attention's query and
# key/value projections and output, the cross-attention's query and output, the feed-forward
# pair; then the output projection.
LAYER = [(256, 256), (512, 256), (256, 256), (256, 256), (256, 256), (1024, 256), (256, 1024)]
SHAPES = LAYER * 3 + [(8000, 256)]


def measure(rows: int) -> float:
    """Milliseconds for the products of one step at `rows` rows (median of 9 timings)."""
    import time

    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    weights = [(torch.randn(n, k) * 0.05, torch.randn(n)) for n, k in SHAPES]
    inputs = {k: torch.randn(rows, k) for k in (256, 1024)}

    def step() -> None:
        for w, b in weights:
            torch.nn.functional.linear(inputs[w.shape[1]], w, b)

    for _ in range(3):
        step()
    repeats = max(2, 1000 // rows)
    times = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        times.append((time.perf_counter() - start) / repeats * 1000)
    return statistics.median(times)


def run(rows: int, mode: str) -> float:
    """`measure(rows)` in a fresh process with `MKL_CBWR` set to `mode` ("" is off)."""
    env = {**os.environ, "MKL_CBWR": mode}
    code = f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import mkl_mode; "
    code += f"print(mkl_mode.measure({rows}))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return float(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, rows in ROWS.items():
            for mode in ("", "AUTO"):
                times.setdefault((name, mode), []).append(run(rows, mode))
    print(f"{'products of one':16s} {'rows':>5s} {'CNR off ms (range)':>20s} "
          f"{'CNR AUTO ms (range)':>20s}")  # fmt: skip
    ratios = {}
    for name, rows in ROWS.items():
        cells = []
        for mode in ("", "AUTO"):
            t = times[name, mode]
            cells.append(f"{statistics.median(t):7.2f} ({min(t):.1f}-{max(t):.1f})")
        off, on = (statistics.median(times[name, mode]) for mode in ("", "AUTO"))
        ratios[name] = off / on
        print(f"{name:16s} {rows:5d} {cells[0]:>20s} {cells[1]:>20s}")
    print("speed-up with MKL_CBWR=AUTO: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
