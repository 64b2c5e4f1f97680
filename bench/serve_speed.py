"""Serving speed: `seqkit serve` answering concurrent single-sentence clients, against
in-process `Translator.translate_stream` (what `seqkit translate` does) on the same lines.

    python bench/serve_speed.py --model DIR [--lines 1000] [--src FILE] [--clients 32]

The lines are `--src`'s first `--lines` (.gz allowed), or English number words drawn by seed.
In-process: one `translate_stream` over all of them, after loading and a warm-up. Server: a
`seqkit serve` subprocess on a free loopback port, warmed up, then `--clients` threads each
sending one sentence per request (httpx, keep-alive) until every line is done; the clients run
on the same machine, as they would beside a local server. Both rates exclude model loading.
Checks that both give the same translations (exit status 1 if not), prints sentences/s of
both and how many decodes the server's batcher ran; the last line is server / in-process.
"""

from __future__ import annotations

import argparse
import itertools
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from num2words import num2words

from seqkit.textio import iter_lines
from seqkit.translator import Translator

ROOT = Path(__file__).resolve().parents[1]


def read_lines(path: str, n: int) -> list[str]:
    """The first `n` lines of `path`, read as `seqkit translate` reads them."""
    return list(itertools.islice(iter_lines(path), n))


def number_words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [num2words(rng.randrange(1_000_000)) for _ in range(n)]


def in_process(model: str, lines: list[str], device: str) -> tuple[list[str], float]:
    """The translations of `lines` and the seconds `translate_stream` took over all of them."""
    translator = Translator.from_pretrained(model, device=device)
    translator.translate(lines[:8])  # warm-up
    start = time.perf_counter()
    out = [t.text for t in translator.translate_stream(lines)]
    return out, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = ["--model", args.model, "--port", str(port), "--device", args.device,
            "--max-wait-ms", str(args.max_wait_ms),
            "--max-batch-sentences", str(args.max_batch_sentences)]  # fmt: skip
    code = f"from seqkit.serve import main; main({argv!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    log.seek(0)
    sys.exit(f"the server did not start:\n{log.read().decode(errors='replace')[-3000:]}")


def served(url: str, lines: list[str], clients: int) -> tuple[list[str], float]:
    """The server's translations of `lines`, `clients` threads each sending one line per
    request, and the seconds until the last answer."""
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(lines)):
        todo.put(i)
    out: list[str | None] = [None] * len(lines)
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=600) as http:
            while not errors:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                response = http.post(f"{url}/translate", json={"texts": [lines[i]]})
                if response.status_code != 200:
                    errors.append(f"line {i + 1}: HTTP {response.status_code} {response.text}")
                    return
                out[i] = response.json()["translations"][0]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        sys.exit(f"the server failed: {errors[0]}")
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (seqkit export)")
    parser.add_argument("--src", help="source lines (.gz allowed); default: number words")
    parser.add_argument("--lines", type=int, default=1000, help="how many lines")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="seqkit serve's")
    parser.add_argument("--max-batch-sentences", type=int, default=64, help="seqkit serve's")
    args = parser.parse_args()
    lines = read_lines(args.src, args.lines) if args.src else number_words(args.lines)
    print(f"{len(lines)} lines from {args.src or 'number words'}; model {args.model}; "
          f"{os.cpu_count()} CPUs", flush=True)  # fmt: skip

    expected, local_s = in_process(args.model, lines, args.device)
    local = len(lines) / local_s
    print(f"in-process translate_stream: {local_s:.2f} s, {local:.1f} sentences/s", flush=True)

    with tempfile.TemporaryFile() as log:  # uvicorn's access log: one line per request
        proc, url = start_server(args, log)
        try:
            served(url, lines[:64], args.clients)  # warm-up
            before = httpx.get(f"{url}/health").json()
            answers, server_s = served(url, lines, args.clients)
            after = httpx.get(f"{url}/health").json()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    server = len(lines) / server_s
    requests = after["requests"] - before["requests"]
    decodes = after["decodes"] - before["decodes"]
    print(f"server, {args.clients} clients: {server_s:.2f} s, {server:.1f} sentences/s "
          f"({requests} requests in {decodes} decodes, "
          f"{requests / max(decodes, 1):.1f} per decode)")  # fmt: skip
    differ = [i for i, (a, b) in enumerate(zip(answers, expected, strict=True)) if a != b]
    for i in differ[:3]:
        print(f"line {i + 1} differs: {lines[i]!r}: server {answers[i]!r}, "
              f"in-process {expected[i]!r}")  # fmt: skip
    print(f"same translations: {len(lines) - len(differ)}/{len(lines)}")
    print(f"server / in-process: {server / local:.2f}")
    if differ:
        sys.exit(1)


if __name__ == "__main__":
    main()
