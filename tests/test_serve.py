"""seqkit serve: a real server in a subprocess on a loopback port, a real HTTP client, answers
equal to in-process translation, batching of concurrent requests, and errors that name the field."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from num2words import num2words
from tiny_models import one_thread

from seqkit.decoding import DecodingConfig
from seqkit.serve import NEEDS_EXTRA, Batcher, main
from seqkit.translator import Scored, Translation, Translator

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
MAX_TEXTS, MAX_CHARS = 8, 200  # small limits, so that oversized requests are cheap to send
LINES = [num2words(n) for n in range(1, 3000, 97)] + ["", "twenty\none"]  # 33 lines


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained Transformer: garbage, but deterministic, translations."""
    from seqkit.data.tokenizer import Tokenizers
    from seqkit.models import TransformerConfig, build_model

    pairs = [(num2words(n, lang="en"), num2words(n, lang="de")) for n in range(0, 400, 3)]
    tok = Tokenizers.train([e for e, _ in pairs], [d for _, d in pairs], vocab_size=300)
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size,
                            d_model=32, n_heads=4, n_encoder_layers=1, n_decoder_layers=1,
                            d_ff=64, dropout=0.0)  # fmt: skip
    net = build_model(cfg).eval()
    with torch.no_grad():  # a fresh model writes one text for every source; scaled, it varies
        for p in net.parameters():
            p.mul_(10 if p.dim() > 1 else 1)
    directory = tmp_path_factory.mktemp("serve") / "tiny-model"
    Translator(net, tok, DecodingConfig(beam_size=2, max_len=12)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def translator(model_dir) -> Translator:
    return Translator.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def alone(translator) -> dict[str, list[str]]:
    """Each line of LINES translated on its own, in process, on one thread like the server."""
    with one_thread():
        return {line: translator.translate([line]) for line in LINES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The base URL of `seqkit serve` run in a subprocess; it is killed at teardown."""
    port = free_port()
    argv = ["--model", str(model_dir), "--port", str(port), "--max-wait-ms", "20",
            "--max-texts-per-request", str(MAX_TEXTS),
            "--max-text-chars", str(MAX_CHARS)]  # fmt: skip
    code = f"from seqkit.serve import main; main({argv!r})"
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    # One torch thread: on a loaded 2-core machine, threads waiting on each other make every
    # small decoding step many times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:  # a file, not a pipe that nobody reads and that fills up
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                stdout=out, stderr=out)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_concurrent_requests_are_batched_and_answer_as_in_process(server, alone):
    before = httpx.get(f"{server}/health").json()
    start = threading.Barrier(len(LINES))  # the requests leave together

    def ask(client: httpx.Client, line: str) -> list[str]:
        start.wait(timeout=30)
        response = client.post(f"{server}/translate", json={"texts": [line]}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["translations"]

    limits = httpx.Limits(max_connections=len(LINES))
    with httpx.Client(limits=limits) as client, ThreadPoolExecutor(len(LINES)) as pool:
        answers = list(pool.map(lambda line: ask(client, line), LINES))
    after = httpx.get(f"{server}/health").json()
    assert answers == [alone[line] for line in LINES]
    assert len({a[0] for a in answers}) > len(LINES) // 2  # the model does not ignore its source
    assert after["requests"] - before["requests"] == len(LINES)
    assert after["decodes"] - before["decodes"] < len(LINES) // 2


def test_several_texts_and_n_best_lists_best_first(server, translator):
    texts = LINES[:3]
    response = httpx.post(f"{server}/translate", json={"texts": texts, "n_best": 2})
    assert response.status_code == 200, response.text
    nbest = response.json()["translations"]
    decoding = replace(translator.decoding, n_best=2)
    for entries, expected in zip(nbest, translator.translate_stream(texts, decoding), strict=True):
        assert [e["text"] for e in entries] == [h.text for h in expected.hypotheses]
        scores = [h.score for h in expected.hypotheses]
        assert [e["score"] for e in entries] == pytest.approx(scores, abs=1e-4)
        assert entries[0]["score"] >= entries[1]["score"]
    greedy = httpx.post(f"{server}/translate", json={"texts": texts, "beam_size": 1, "alpha": 1})
    expected = translator.translate(texts, replace(translator.decoding, beam_size=1, alpha=1.0))
    assert greedy.json() == {"translations": expected}
    assert httpx.post(f"{server}/translate", json={"texts": []}).json() == {"translations": []}


def test_health_names_the_model(server, model_dir):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok"
    assert health["model"] == model_dir.name
    assert health["model_type"] == "transformer"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"texts": ["one"], "beam_size": 0}, "beam_size", "decoding.beam_size: must be at least 1"),
        ({"texts": ["one"], "n_best": 3}, "n_best", "between 1 and beam_size=2"),
        ({"texts": ["one"], "beam_size": 4, "n_best": 5}, "n_best", "beam_size=4"),
        ({"texts": ["one", 2]}, "texts", "valid string"),
        ({"texts": "one"}, "texts", "valid list"),
        ({"texts": ["one"] * (MAX_TEXTS + 1)}, "texts", f"at most {MAX_TEXTS} items"),
        ({"texts": ["x" * (MAX_CHARS + 1)]}, "texts", f"at most {MAX_CHARS} characters"),
        ({"texts": ["one"], "beams": 2}, "beams", "Extra inputs"),
        ({"texts": ["one"], "beam_size": "2"}, "beam_size", "valid integer"),
        ({"texts": ["one"], "max_len": MAX_CHARS + 1}, "max_len", f"or equal to {MAX_CHARS}"),
        ({"texts": ["one"], "min_len": MAX_CHARS + 1}, "min_len", f"or equal to {MAX_CHARS}"),
        ({"texts": ["one"], "beam_size": 65}, "beam_size", "less than or equal to 64"),
        ({"texts": ["one"], "alpha": 1e308}, "alpha", "decoding.alpha: must be between 0 and 50"),
        ({}, "texts", "Field required"),
    ],
)
def test_bad_requests_get_422_naming_the_field(server, body, field, words):
    response = httpx.post(f"{server}/translate", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:2] == ["body", field]
    assert words in error["msg"]
    assert "input" not in error  # an oversized request is not echoed back
    assert httpx.post(f"{server}/translate", json={"texts": ["one"]}).status_code == 200


def test_invalid_json_and_oversized_bodies_are_refused(server):
    post = httpx.post
    headers = {"content-type": "application/json"}
    invalid = post(f"{server}/translate", content=b'{"texts": [', headers=headers)
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["type"] == "json_invalid"
    huge = post(f"{server}/translate", content=b" " * 100_000, headers=headers)
    assert huge.status_code == 413
    assert "request body over" in huge.json()["detail"]
    chunked = post(f"{server}/translate", content=iter([b'{"texts": []}']), headers=headers)
    assert chunked.status_code == 411
    assert httpx.get(f"{server}/health").json()["status"] == "ok"


def fake_decode(calls: list):
    """A decode that records its calls and translates a text to itself, upper-cased."""

    def decode(texts: list[str], decoding: DecodingConfig) -> list[Translation]:
        calls.append((list(texts), decoding))
        if "boom" in texts:
            raise RuntimeError("boom")
        return [Translation([Scored(t.upper(), 0.0)]) for t in texts]

    return decode


def test_batcher_decodes_concurrent_requests_together_grouped_by_decoding():
    calls = []
    greedy = DecodingConfig(beam_size=1)

    async def run():
        batcher = Batcher(fake_decode(calls), max_sentences=100, max_wait_s=0.05)
        requests = [([f"a{i}", f"b{i}"], greedy if i % 3 == 0 else DecodingConfig())
                    for i in range(9)]  # fmt: skip
        out = await asyncio.gather(*(batcher.translate(t, d) for t, d in requests))
        await batcher.close()
        return requests, out, batcher

    requests, out, batcher = asyncio.run(run())
    assert [[t.text for t in o] for o in out] == [[t.upper() for t in r] for r, _ in requests]
    assert sorted(c[1].beam_size for c in calls) == [1, 5]  # one decode per decoding config
    assert (batcher.requests, batcher.sentences, batcher.decodes) == (9, 18, 2)
    assert calls[0][0] == ["a0", "b0", "a3", "b3", "a6", "b6"]  # in arrival order


def test_batcher_caps_a_batch_and_survives_a_failed_decode():
    calls = []

    async def run():
        batcher = Batcher(fake_decode(calls), max_sentences=4, max_wait_s=0.05)
        texts = [["boom"], *([f"t{i}"] for i in range(9))]
        out = await asyncio.gather(*(batcher.translate(t, DecodingConfig()) for t in texts),
                                   return_exceptions=True)  # fmt: skip
        after = await batcher.translate(["later"], DecodingConfig())
        await batcher.close()
        return out, after

    out, after = asyncio.run(run())
    assert [len(texts) for texts, _ in calls[:3]] == [4, 4, 2]
    assert all(isinstance(o, RuntimeError) for o in out[:4])  # the batch with "boom"
    assert [o[0].text for o in out[4:]] == [f"T{i}" for i in range(3, 9)]
    assert after[0].text == "LATER"


def decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("seqkit-decode")]


def test_a_batchers_own_decode_thread_ends_when_it_closes_and_comes_back_when_needed():
    """The thread that decoded holds an OpenMP team of PyTorch's: alive after its server, it
    would slow every later operator of the process (a test module after this one: 3x)."""

    before = decode_threads()

    def new_threads() -> list[threading.Thread]:
        return [t for t in decode_threads() if t not in before]

    async def run():
        batcher = Batcher(fake_decode([]), max_wait_s=0.0)
        for _ in range(2):  # an app's lifespan can start again
            assert (await batcher.translate(["a"], DecodingConfig()))[0].text == "A"
            assert len(new_threads()) >= 1
            await batcher.close()
        return batcher

    batcher = asyncio.run(run())  # kept, as an app keeps its batcher (`app.state`)
    deadline = time.monotonic() + 10
    while new_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert new_threads() == [], batcher


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ})  # fmt: skip


def test_serving_loads_neither_lightning_nor_datasets_nor_sklearn(model_dir):
    code = f"""if True:
        import sys
        import seqkit.serve
        assert not {{"fastapi", "uvicorn"}} & set(sys.modules), "imported at import time"
        from seqkit.serve import create_app
        from seqkit.translator import Translator
        create_app(Translator.from_pretrained({str(model_dir)!r}))
        print(sorted({{"lightning", "datasets", "sklearn"}} & set(sys.modules)))
    """
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_the_serve_extra_main_says_what_to_install(model_dir):
    code = f"""if True:
        import sys
        sys.modules["uvicorn"] = None  # as if it were not installed
        from seqkit.serve import main
        main(["--model", {str(model_dir)!r}])
    """
    result = run_python(code)
    assert result.returncode == 2
    assert result.stderr == NEEDS_EXTRA + "\n"


def test_main_names_a_missing_model_directory_and_a_bad_option(tmp_path, capsys):
    with pytest.raises(SystemExit, match=f"seqkit serve: {tmp_path / 'nowhere'}"):
        main(["--model", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path), "--max-batch-sentences", "0"])
    assert exit_.value.code == 2
    assert "max_batch_sentences must be at least 1" in capsys.readouterr().err
    for port in ("99999", "-1"):  # uvicorn took 99999 and listened on 34463
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(tmp_path), "--port", port])
        assert exit_.value.code == 2
        message = f"argument --port: must be between 0 and 65535, got {port}"
        assert message in capsys.readouterr().err


def test_main_loads_the_model_on_the_thread_that_decodes(model_dir, monkeypatch):
    """PyTorch's OpenMP threads serve the thread that first runs a parallel operator (loading
    copies tensors); decoding on another thread starts a second team, and every operator then
    waits for sleeping threads (1.5x slower): `seqkit serve` loads and decodes on one thread."""
    import uvicorn
    from fastapi.testclient import TestClient

    threads: dict[str, set[int]] = {"load": set(), "decode": set()}
    load, stream = Translator.from_pretrained.__func__, Translator.translate_stream

    def recording_load(cls, *args, **kwargs):
        threads["load"].add(threading.get_ident())
        return load(cls, *args, **kwargs)

    def recording_stream(self, *args, **kwargs):
        threads["decode"].add(threading.get_ident())
        return stream(self, *args, **kwargs)

    def serve(app, **options):
        with TestClient(app) as client:
            for text in LINES[:4]:
                assert client.post("/translate", json={"texts": [text]}).status_code == 200

    monkeypatch.setattr(Translator, "from_pretrained", classmethod(recording_load))
    monkeypatch.setattr(Translator, "translate_stream", recording_stream)
    monkeypatch.setattr(uvicorn, "run", serve)
    main(["--model", str(model_dir)])
    assert len(threads["decode"]) == 1
    assert threads["load"] == threads["decode"] != {threading.main_thread().ident}
    # ... and that thread ends with the server (see the batcher's test above).
    alive = {t.ident for t in threading.enumerate()}
    assert not threads["decode"] & alive
