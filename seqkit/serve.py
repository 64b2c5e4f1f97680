"""`seqkit serve`: an HTTP API over a `Translator` (FastAPI + uvicorn).

    seqkit serve --model DIR [--host 127.0.0.1] [--port 8000]
    curl -s localhost:8000/translate -H 'content-type: application/json' \\
        -d '{"texts": ["twenty-one"], "beam_size": 5, "n_best": 1}'

Requests that arrive together are decoded together: one `Batcher` gathers them for up to
`max_wait_ms` (or `max_batch_sentences` sentences), groups them by decoding settings and runs
one decode at a time on a worker thread (the one that loaded the model, see
`serving_thread`), so the event loop keeps accepting requests. Each sentence has its own
length limit (`length_limits`), so its translation does not depend on its batch-mates: it
equals `translator.translate([text])`.

FastAPI and uvicorn (the `serve` extra) are imported inside functions, so that importing this
module needs neither. Like `Translator`, it never loads Lightning, `datasets` or scikit-learn.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run
# time, and the request model they name is built inside `create_app` (its limits are options).
import argparse
import asyncio
import sys
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when used: `seqkit serve` without the extra fails at once
    from fastapi import FastAPI

    from seqkit.decoding import DecodingConfig
    from seqkit.translator import Translation, Translator

NEEDS_EXTRA = 'seqkit serve needs the serve extra: pip install "seqkit[serve]"'
DECODING_FIELDS = ("beam_size", "n_best", "alpha", "min_len", "max_len")


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches requests and what it accepts."""

    max_batch_sentences: int = 64
    """Stop gathering requests into one decode once they hold this many sentences (a single
    larger request is still decoded whole, batched by `max_tokens`)."""
    max_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to join it."""
    max_texts_per_request: int = 256
    """Most texts in one request (more: 422)."""
    max_text_chars: int = 10_000
    """Most characters in one text (more: 422); also the largest `max_len` a request may ask."""
    max_tokens: int = 4096
    """Source tokens per decoding batch, padding included (as `seqkit translate --max-tokens`)."""
    max_beam_size: int = 64
    """Widest beam a request may ask (more: 422): one decode runs at a time, so one request
    must not hold the server for long."""

    def __post_init__(self) -> None:
        for name in ("max_batch_sentences", "max_texts_per_request", "max_text_chars",
                     "max_tokens", "max_beam_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body that can hold the largest valid request: JSON writes a
        character in at most 6 bytes (`\\uXXXX`), plus room for the other fields."""
        return 6 * self.max_texts_per_request * (self.max_text_chars + 8) + 65_536


@dataclass
class _Job:
    texts: list[str]
    settings: Hashable  # the decoding settings (and target language) of its texts
    future: asyncio.Future


class Batcher:
    """Gathers concurrent requests into few decodes: one worker task takes the first waiting
    request, lets others join for up to `max_wait_s` or until `max_sentences` sentences, then
    decodes each group with identical settings (a `DecodingConfig`, or with the target
    language too) in one `decode(texts, settings)` call, run in a worker thread, and gives
    each request its own slice, in order. One decode runs at a time (torch already uses
    every core), always on the same thread: `executor`'s, by default a thread of its own.
    PyTorch's OpenMP threads serve the thread that runs its parallel operators; operators
    from a second thread start a second team, the runtime then holds more threads than cores
    and every operator waits for sleeping threads (`serving_thread`)."""

    def __init__(
        self,
        decode: Callable[[list[str], Hashable], list["Translation"]],
        *,
        max_sentences: int = 64,
        max_wait_s: float = 0.005,
        executor: Executor | None = None,
    ) -> None:
        self.decode = decode
        self.max_sentences = max_sentences
        self.max_wait_s = max_wait_s
        self._owns_executor = executor is None
        self.executor = executor or serving_thread()
        self.requests = self.sentences = self.decodes = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def translate(self, texts: list[str], settings: Hashable) -> list["Translation"]:
        """The translations of `texts`, decoded with whatever requests arrive meanwhile."""
        if self._worker is None:  # created here: the queue belongs to the running loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        self.requests += 1
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(texts, settings, future))
        return await future

    async def close(self) -> None:
        """Stop decoding. An executor the batcher made is shut down, so that its thread, and
        the OpenMP team PyTorch keeps for that thread, end with the server rather than slow
        the rest of the process (`serving_thread`); a later request gets a new one."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._owns_executor:
            self.executor.shutdown(wait=False)
            self.executor = serving_thread()  # starts no thread until it is used

    async def _run(self) -> None:
        while True:
            jobs = await self._gather()
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                if not job.future.done():  # a client that went away is not decoded for
                    groups.setdefault(job.settings, []).append(job)
            for settings, group in groups.items():
                await self._decode(settings, group)

    async def _gather(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        size = len(jobs[0].texts)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_sentences:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), timeout))
            except asyncio.TimeoutError:  # not TimeoutError: Python 3.10 raises another class
                break
            size += len(jobs[-1].texts)
        return jobs

    async def _decode(self, settings: Hashable, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        self.decodes += 1
        self.sentences += len(texts)
        try:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self.executor, self.decode, texts, settings)
        except Exception as err:  # the requests fail, the server goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(out[start : start + len(job.texts)])
            start += len(job.texts)


def serving_thread() -> ThreadPoolExecutor:
    """An executor of one thread, for loading a model and decoding with it.

    Load on it as well as decode: PyTorch's OpenMP runtime gives its threads to the thread
    that first runs a parallel operator (loading a model copies tensors in parallel), and a
    second thread's operators start a second team. The runtime then manages more threads than
    there are cores and stops spinning between parallel regions, so every operator waits for
    sleeping threads: decoding on a thread other than the loading one ran 1.5x slower (2
    cores, batches of 20 sentences, a d_model 256 Transformer).
    """
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqkit-decode")


def _request_model(config: ServeConfig) -> type:
    """The pydantic model of a /translate body, with `config`'s limits; only types and sizes
    are checked here, the decoding values by `DecodingConfig` itself (one set of rules)."""
    from typing import Annotated

    from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

    Text = Annotated[StrictStr, Field(max_length=config.max_text_chars)]

    class TranslateRequest(BaseModel):
        """Texts to translate; a decoding field left out takes the model's own setting."""

        model_config = ConfigDict(extra="forbid")
        texts: list[Text] = Field(max_length=config.max_texts_per_request)
        beam_size: StrictInt | None = Field(None, le=config.max_beam_size)
        n_best: StrictInt | None = None
        alpha: StrictFloat | None = Field(None, allow_inf_nan=False)  # takes 1 as 1.0
        min_len: StrictInt | None = Field(None, le=config.max_text_chars)
        max_len: StrictInt | None = Field(None, le=config.max_text_chars)
        tgt_lang: StrictStr | None = Field(None, max_length=64)  # a multilingual model's

    return TranslateRequest


def _error(field: str, message: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": ["body", field], "msg": message, "type": kind}


def _install_errors(app: "FastAPI") -> None:
    """422 bodies as FastAPI writes them, `{"detail": [{"loc", "msg", "type"}]}`, less the
    `input` it echoes (up to a whole oversized request)."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def invalid(request, exc: RequestValidationError) -> JSONResponse:
        detail = []
        for e in exc.errors():
            msg = e["msg"]
            if e["type"] == "json_invalid":
                msg += f": {e.get('ctx', {}).get('error', '')}"
            detail.append({"loc": list(e["loc"]), "msg": msg, "type": e["type"]})
        return JSONResponse({"detail": detail}, status_code=422)

    async def failed(request, exc: Exception) -> JSONResponse:
        # The kind of failure only: the message may hold paths or data of the server.
        return JSONResponse({"detail": f"translation failed ({type(exc).__name__})"},
                            status_code=500)  # fmt: skip

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, failed)


class _BodyLimit:
    """ASGI middleware refusing a POST body over `limit` bytes (413) or of unannounced length
    (411) before it is read: pydantic's limits only apply once the whole body is parsed."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            from fastapi.responses import JSONResponse

            length = dict(scope["headers"]).get(b"content-length", b"")
            refusal = None
            if not length.isdigit():
                refusal = JSONResponse({"detail": "Content-Length required"}, status_code=411)
            elif int(length) > self.limit:
                detail = f"request body over {self.limit} bytes"
                refusal = JSONResponse({"detail": detail}, status_code=413)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    translator: "Translator",
    config: ServeConfig = ServeConfig(),
    *,
    name: str | None = None,
    executor: Executor | None = None,
) -> "FastAPI":
    """The FastAPI app: POST /translate and GET /health (named `name`, else the model type).
    Decodes run on `executor`: the `serving_thread` that loaded `translator` (default: a new
    one).

    Raises:
        ValueError: for a model that reads images.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from seqkit.decoding import DecodingError
    from seqkit.models import model_type

    if translator.image_source is not None:
        raise ValueError("this model reads images; seqkit serve translates text")
    kind = model_type(translator.config)

    def decode(
        texts: list[str], settings: tuple["DecodingConfig", str | None]
    ) -> list["Translation"]:
        decoding, tgt_lang = settings
        stream = translator.translate_stream(
            texts, decoding, max_tokens=config.max_tokens, tgt_lang=tgt_lang
        )
        return list(stream)

    batcher = Batcher(decode, max_sentences=config.max_batch_sentences,
                      max_wait_s=config.max_wait_ms / 1000, executor=executor)  # fmt: skip

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()

    app = FastAPI(title="seqkit serve", lifespan=lifespan)
    app.state.batcher = batcher
    _install_errors(app)
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)
    TranslateRequest = _request_model(config)

    @app.post("/translate")
    async def translate(body: TranslateRequest):  # no return type: it would be a response_model
        """One entry per text, in order: its best translation, or with n_best > 1 its n-best
        list `[{"text", "score"}]`, best first. A multilingual model needs `tgt_lang`."""
        asked = {k: v for k in DECODING_FIELDS if (v := getattr(body, k)) is not None}
        try:
            decoding = replace(translator.decoding, **asked)
        except DecodingError as err:
            raise RequestValidationError([_error(err.field, str(err))]) from None
        try:
            translator.tag_id(body.tgt_lang)
        except ValueError as err:
            raise RequestValidationError([_error("tgt_lang", str(err))]) from None
        settings = (decoding, body.tgt_lang)
        out = await batcher.translate(body.texts, settings) if body.texts else []
        # JSON escapes line breaks, so texts go out exactly as decoded (no `one_line`): the
        # answer equals `translator.translate`, whatever the hypothesis holds.
        if decoding.n_best == 1:
            return {"translations": [t.text for t in out]}
        nbest = [[{"text": h.text, "score": h.score} for h in t.hypotheses] for t in out]
        return {"translations": nbest}

    @app.get("/health")
    async def health():
        """Liveness, the model (with a multilingual one's target languages), and how many
        requests and sentences took how many decodes."""
        return {"status": "ok", "model": name or kind, "model_type": kind,
                "target_languages": list(translator.target_languages),
                "requests": batcher.requests, "sentences": batcher.sentences,
                "decodes": batcher.decodes}  # fmt: skip

    return app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="seqkit serve",
        description="Serve a translation model over HTTP: POST /translate "
        '{"texts": [...], "beam_size": 5, "n_best": 1}, GET /health.',
    )
    defaults = ServeConfig()
    add = parser.add_argument
    add("--model", required=True, metavar="DIR", help="model directory (seqkit export)")
    add("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    add("--port", type=int, default=8000, help="port, 0 to 65535; 0: any free one (default: "
        "%(default)s)")  # fmt: skip
    add("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add("--max-batch-sentences", type=int, metavar="N", default=defaults.max_batch_sentences,
        help="sentences gathered into one decode (default: %(default)s)")  # fmt: skip
    add("--max-wait-ms", type=float, metavar="MS", default=defaults.max_wait_ms,
        help="how long a request waits for others to join it (default: %(default)s)")  # fmt: skip
    add("--max-texts-per-request", type=int, metavar="N", default=defaults.max_texts_per_request,
        help="texts one request may hold (default: %(default)s)")  # fmt: skip
    add("--max-text-chars", type=int, metavar="N", default=defaults.max_text_chars,
        help="characters one text may hold (default: %(default)s)")  # fmt: skip
    add("--max-tokens", type=int, metavar="N", default=defaults.max_tokens,
        help="source tokens per decoding batch (default: %(default)s)")  # fmt: skip
    add("--max-beam-size", type=int, metavar="N", default=defaults.max_beam_size,
        help="widest beam a request may ask (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:  # uvicorn would listen on another port (modulo 65536)
        parser.error(f"argument --port: must be between 0 and 65535, got {args.port}")
    try:
        config = ServeConfig(
            max_batch_sentences=args.max_batch_sentences,
            max_wait_ms=args.max_wait_ms,
            max_texts_per_request=args.max_texts_per_request,
            max_text_chars=args.max_text_chars,
            max_tokens=args.max_tokens,
            max_beam_size=args.max_beam_size,
        )
    except ValueError as err:
        parser.error(str(err))
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        print(NEEDS_EXTRA, file=sys.stderr)
        raise SystemExit(2) from None
    from seqkit.translator import Translator

    decoder = serving_thread()  # loads the model and decodes: see `serving_thread`
    try:
        try:  # the loader's errors name the file at fault
            translator = decoder.submit(
                Translator.from_pretrained, args.model, device=args.device
            ).result()
        except (FileNotFoundError, ValueError) as err:
            sys.exit(f"seqkit serve: {err}")
        if translator.image_source is not None:
            sys.exit(f"seqkit serve: {args.model} reads images; seqkit serve translates text")
        name = Path(args.model).resolve().name
        app = create_app(translator, config, name=name, executor=decoder)
        uvicorn.run(app, host=args.host, port=args.port)
    finally:  # the thread and its OpenMP team end with the server (see `Batcher.close`)
        decoder.shutdown()


if __name__ == "__main__":  # python -m seqkit.serve, as `seqkit serve`
    main(sys.argv[1:])
