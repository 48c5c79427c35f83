"""`nmt serve`: translation over HTTP (FastAPI, served by uvicorn), with dynamic batching.

Needs the `serve` extra (`pip install 'nmt[serve]'`); nothing else in nmt imports this module.

A request puts its lines on the scheduler's queue (nmt.serving.batcher) and waits; one
decoding thread gathers concurrent requests into batches, decodes short requests between the
steps of long ones, and answers each request with its own lines, so the event loop stays free
to take requests and answer /health. A request has a deadline (the server's --timeout, or a
smaller one of its own), is dropped when its client hangs up, and is refused with 503 and
Retry-After when the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import signal
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from nmt.errors import NmtError

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException
except ImportError:
    raise NmtError(
        "nmt serve needs FastAPI and uvicorn; install them with: pip install 'nmt[serve]'"
    ) from None

from nmt import __version__, config
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.records import Translation
from nmt.decoding.translator import Translator, lone_surrogate
from nmt.serving.access import Access
from nmt.serving.batcher import (
    Batching,
    DeadlineExceeded,
    Options,
    Overloaded,
    Scheduler,
    decode_with,
)
from nmt.serving.libretranslate import LibreTranslateRoutes, add_routes, content_type
from nmt.serving.schema import (
    DECODE_FIELDS,
    MAX_LENGTH_PENALTY,
    ErrorBody,
    Health,
    ModelList,
    RequestError,
    TranslateRequest,
    TranslateResponse,
)

log = logging.getLogger("nmt")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for: more lines, longer lines, more characters or a larger body
    are refused with 413, a larger beam_size or nbest with 422; each answer names the limit.
    `timeout` is the longest a request may take (seconds; a request may ask for less)."""

    max_lines: int = 256  # lines per request
    max_line_chars: int = 2000  # characters per line
    max_request_chars: int = 100_000  # characters of all lines of a request
    max_body_bytes: int = 1 << 20  # the request body (1 MiB)
    max_beam_size: int = 16  # beam_size and nbest
    timeout: float = 120.0  # seconds

    def validate(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value < 1:
                raise NmtError(f"--{name.replace('_', '-')} must be at least 1, not {value}")


@dataclass
class ServedModel:
    name: str
    translator: Translator
    info: dict[str, Any]  # what GET /models says about it


def load_models(
    specs: Sequence[str | Path],
    device: str = "auto",
    precision: str = "auto",
    quantize: str = "none",
    compile: bool = False,
    shortlist: bool = False,
) -> list[ServedModel]:
    """Load each run folder or checkpoint, given as `PATH` (named after the folder, or the
    file's stem) or `NAME=PATH`. With `compile`, each model translates a sentence alone and
    two together before serving, so that the compiler's minute is spent before the server
    answers, not inside the first requests."""
    served: list[ServedModel] = []
    for spec in specs:
        name, path = _name_and_path(spec)
        if any(m.name == name for m in served):
            raise NmtError(f"two models are named '{name}'; name them yourself with NAME=PATH")
        translator = Translator.load(
            path,
            device=device,
            precision=precision,
            quantize=quantize,
            compile=compile,
            shortlist=shortlist,
        )
        if compile:
            log.info(f"{name}: compiling the decoding step before serving (--compile)")
            translator.translate(["A warm-up."])
            translator.translate(["A warm-up.", "Two sentences warm up the batched shapes."])
        served.append(ServedModel(name, translator, _describe(name, path, translator)))
    if not served:
        raise NmtError("no model to serve; give a run folder or a checkpoint")
    return served


def _name_and_path(spec: str | Path) -> tuple[str, Path]:
    text = str(spec)
    name, sep, rest = text.partition("=")
    if sep and name and rest and not Path(text).exists():
        return name, Path(rest)
    path = Path(text)
    return (path.resolve().name if path.is_dir() else path.stem), path


def _describe(name: str, path: Path, translator: Translator) -> dict[str, Any]:
    info = translator.info
    recipe = info.get("recipe")
    return {
        "name": name,
        "path": str(path),
        "checkpoint": info.get("checkpoint"),
        "step": info.get("step"),
        "source_language": info.get("src_lang", recipe.data.src_lang if recipe else None),
        "target_language": info.get("tgt_lang", recipe.data.tgt_lang if recipe else None),
        "parameters": info.get("parameters"),
        "attention": (
            {site: recipe.model.attention_at(site) for site in config.ATTENTION_SITES}
            if recipe
            else None
        ),
        "decode": dataclasses.asdict(translator.decode),
        "device": str(translator.device),
        "precision": translator.precision,
    }


class BodyLimit:
    """ASGI middleware: reads each request's body before the app does and refuses one over
    `max_bytes` with 413, and a JSON body that is not UTF-8, nests too deeply or holds a number
    too long to convert with 422 naming the problem (FastAPI would answer 400 "There was an
    error parsing the body"). An oversized body is still read to its end (and dropped), so the
    client reads the answer instead of a reset connection."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client has gone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= self.max_bytes:
                chunks.append(chunk)
            more = message.get("more_body", False)
        if size > self.max_bytes:
            error = RequestError(
                413,
                f"the request body has {size} bytes; the limit (max_body_bytes) is "
                f"{self.max_bytes}",
                "max_body_bytes",
                self.max_bytes,
            )
            await error.response()(scope, receive, send)
            return
        body, replayed = b"".join(chunks), False
        scope = {**scope, "nmt.body": body}  # for LibreTranslateRoutes
        is_json = content_type(scope) == "application/json"
        problem = _json_problem(body) if is_json else None
        if problem is not None:
            await RequestError(422, problem).response()(scope, receive, send)
            return

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class CloseWhenStopping:
    """ASGI middleware: once the server is stopping, every answer carries Connection: close,
    so that a client sends its next request on a new connection (to another server) instead of
    on one about to close. uvicorn's h11 server closes such connections after the answer without
    saying so, and clients that reused them got resets."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: dict) -> None:
            if message["type"] == "http.response.start" and self.service.stopping:
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"
                ]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


def _json_problem(body: bytes) -> str | None:
    """What makes a JSON body unreadable beyond a syntax error (which FastAPI names itself)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return (
            f"the body is not UTF-8 (byte {e.start + 1} is 0x{body[e.start]:02x}); "
            "send JSON encoded as UTF-8"
        )
    try:
        json.loads(text)
    except RecursionError:
        return "the body nests JSON arrays or objects too deeply"
    except json.JSONDecodeError:
        return None
    except ValueError as e:  # Python's limit on the digits of an integer it converts
        if "digits" in str(e):
            return "a number in the body has too many digits"
        return f"the body is not valid JSON ({str(e).splitlines()[0][:100]})"
    return None


class Service:
    """The served models, their batchers, the limits and the counters behind the endpoints."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        limits: Limits,
        batching: Batching,
        access: Access | None = None,
    ) -> None:
        self.models = {m.name: m for m in models}
        self.limits = limits
        self.access = access or Access()
        self.batching = batching
        self.scheduler = Scheduler(batching)
        self.in_flight = 0
        self.stopping = False  # set on SIGTERM / SIGINT: answers from then on close

    def stop(self) -> None:
        self.stopping = True

    def authorize(self, raw: Request, key: str | None = None) -> None:
        """Refuse a request without an accepted API key (401, 403) or over its rate (429).
        The key comes from `key` (a form field) or the headers: Authorization: Bearer KEY, or
        X-API-Key."""
        if key is None:
            scheme, _, token = raw.headers.get("authorization", "").partition(" ")
            key = token.strip() if scheme.lower() == "bearer" else raw.headers.get("x-api-key")
        client = raw.client.host if raw.client else "unknown"
        refused = self.access.check(key, client)
        if refused is None:
            return
        status, message, wait = refused
        headers = {"Retry-After": str(wait)} if wait else None
        if status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        raise RequestError(status, message, headers=headers)

    def ready(self) -> tuple[bool, str]:
        """Whether a request sent now would be taken: not when stopping or the queue is full."""
        if self.stopping:
            return False, "stopping"
        if self.scheduler.waiting_lines >= self.batching.max_queue_lines:
            return False, "the queue is full"
        return True, "ready"

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "models": list(self.models),
            "in_flight": self.in_flight,
            "waiting_lines": self.scheduler.waiting_lines,
            "batches": self.scheduler.batches,
            "lines": self.scheduler.lines,
            "interleaved": self.scheduler.interleaved,
            "expired": self.scheduler.expired,
            "cancelled": self.scheduler.cancelled,
        }

    def describe(self) -> dict[str, Any]:
        limits = {**dataclasses.asdict(self.limits), "max_length_penalty": MAX_LENGTH_PENALTY}
        return {"models": [m.info for m in self.models.values()], "limits": limits}

    async def translate(
        self, request: TranslateRequest, gone: Callable[[], Any] | None = None
    ) -> dict[str, Any]:
        """Answer `request`; `gone` (async) tells whether its client has hung up, which drops
        it."""
        self.in_flight += 1
        try:
            return await self._translate(request, gone)
        finally:
            self.in_flight -= 1

    async def _translate(
        self, request: TranslateRequest, gone: Callable[[], Any] | None
    ) -> dict[str, Any]:
        model = self._model(request.model)
        self._check(request, model)
        timeout = min(request.timeout or self.limits.timeout, self.limits.timeout)
        results: list[list[Translation]] = []
        pieces: list[list[str] | None] | None = None
        if request.text:
            # Off the event loop (SentencePiece encodes from any thread): a large request takes
            # some milliseconds.
            tokens, pieces = await asyncio.to_thread(
                _measure,
                model.translator.src_tok,
                request.text,
                request.alignment or request.attention,
            )
            options = _options(request)
            budget = self.batching.batch_tokens or model.translator.decode.batch_tokens
            decode = partial(decode_with, model.translator)
            waiting = asyncio.ensure_future(
                self.scheduler.submit(
                    model.name,
                    decode,
                    budget,
                    request.text,
                    tokens,
                    options,
                    timeout,
                    request.prefixes,
                    request.constraints,
                )  # fmt: skip
            )
            results = await self._wait(waiting, gone, timeout)
        response: dict[str, Any] = {
            "model": model.name,
            "translations": [best[0].text for best in results],
        }
        cut = [i for i, best in enumerate(results) if best[0].truncated]
        if cut:
            response["truncated"] = cut
        if request.nbest > 1 or request.scores or request.alignment or request.attention:
            response["nbest"] = [[_hypothesis(t) for t in best] for best in results]
        if request.alignment or request.attention:
            response["source_tokens"] = pieces or []
        return response

    async def _wait(
        self, waiting: asyncio.Future, gone: Callable[[], Any] | None, timeout: float
    ) -> list[list[Translation]]:
        """The scheduler's answer, checking every quarter second whether the client is still
        there (if it is not, the request is dropped)."""
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=0.25)
                if done:
                    return waiting.result()
                if gone is not None and await gone():
                    waiting.cancel()
                    raise RequestError(499, "the client closed the connection")
        except Overloaded as e:
            raise RequestError(
                503,
                f"the server is busy ({e.waiting} lines are waiting); retry in {e.retry_after} s",
                "max_queue_lines",
                self.batching.max_queue_lines,
                headers={"Retry-After": str(e.retry_after)},
            ) from None
        except DeadlineExceeded:
            raise RequestError(
                504, f"the translation took longer than its deadline ({timeout:g} s)"
            ) from None
        except NmtError as e:  # what the request asked for cannot be decoded
            raise RequestError(422, str(e)) from None
        except (RequestError, asyncio.CancelledError):
            waiting.cancel()
            raise
        except Exception:
            # Logged with its traceback by the scheduler; the other requests go on.
            raise RequestError(500, "translation failed; the server log says why") from None

    def _model(self, name: str | None) -> ServedModel:
        if name is None:
            if len(self.models) == 1:
                return next(iter(self.models.values()))
            raise RequestError(
                422, f"several models are served ({', '.join(self.models)}); name one in 'model'"
            )
        if name not in self.models:
            raise RequestError(404, f"unknown model '{name}'; served: {', '.join(self.models)}")
        return self.models[name]

    def _check(self, request: TranslateRequest, model: ServedModel) -> None:
        limits = self.limits
        if len(request.text) > limits.max_lines:
            raise RequestError(
                413,
                f"the request has {len(request.text)} lines; the limit (max_lines) is "
                f"{limits.max_lines}",
                "max_lines",
                limits.max_lines,
            )
        for i, line in enumerate(request.text):
            surrogate = lone_surrogate(line)
            if surrogate is not None:
                raise RequestError(
                    422,
                    f"text[{i}] holds a lone surrogate (U+{ord(surrogate):04X}), which is not "
                    "Unicode text; send valid UTF-8 or a surrogate pair",
                )
            if len(line) > limits.max_line_chars:
                raise RequestError(
                    413,
                    f"text[{i}] has {len(line)} characters; the limit (max_line_chars) is "
                    f"{limits.max_line_chars}",
                    "max_line_chars",
                    limits.max_line_chars,
                )
        chars = sum(len(line) for line in request.text)
        if chars > limits.max_request_chars:
            raise RequestError(
                413,
                f"the request has {chars} characters; the limit (max_request_chars) is "
                f"{limits.max_request_chars}",
                "max_request_chars",
                limits.max_request_chars,
            )
        if request.timeout is not None and request.timeout > limits.timeout:
            raise RequestError(
                422,
                f"timeout {request.timeout:g} is over the server's limit (timeout) of "
                f"{limits.timeout:g} s",
                "timeout",
                limits.timeout,
            )
        for name in ("beam_size", "nbest"):
            value = getattr(request, name)
            if value is not None and value > limits.max_beam_size:
                shown = f"{name} {value}" if value < 10**9 else name  # no echo of 400 digits
                raise RequestError(
                    422,
                    f"{shown} is over the limit (max_beam_size) of {limits.max_beam_size}",
                    "max_beam_size",
                    limits.max_beam_size,
                )
        try:
            method = _options(request).decode_config(model.translator.decode).method
        except NmtError as e:
            raise RequestError(422, str(e)) from None
        if request.nbest > 1 and method != "beam":
            raise RequestError(
                422,
                f"nbest > 1 needs beam search, and model '{model.name}' decodes with {method} "
                "search; give beam_size too",
            )
        for name in ("prefixes", "constraints"):
            given = getattr(request, name)
            if given is not None and len(given) != len(request.text):
                raise RequestError(
                    422, f"{name} has {len(given)} entries for {len(request.text)} lines"
                )


def _options(request: TranslateRequest) -> Options:
    settings = tuple(
        (decode_name, getattr(request, field))
        for field, decode_name in DECODE_FIELDS.items()
        if getattr(request, field) is not None
    )
    return Options(
        request.beam_size,
        request.length_penalty,
        request.nbest,
        request.alignment,
        settings,
        request.attention,
    )


def _measure(
    tok: Tokenizer, lines: list[str], with_pieces: bool
) -> tuple[int, list[list[str] | None] | None]:
    """The source tokens of `lines` (what the batch budget counts, EOS included) and, for
    alignments, each line's subwords as `nmt translate --alignment` gives them."""
    tokens = sum(len(ids) + 1 for ids in tok.encode(lines))
    if not with_pieces:
        return tokens, None
    return tokens, [tok.pieces(line) + ["</s>"] if line.strip() else None for line in lines]


def _hypothesis(t: Translation) -> dict[str, Any]:
    record = t.as_dict()
    if t.attention is not None:
        record["tokens"] = t.pieces
        record["attention"] = [[round(w, 4) for w in row] for row in t.attention]
    for key in ("score", "norm_score"):
        # JSON has no infinity (a search that finished no hypothesis scores -inf).
        if not math.isfinite(record[key]):
            record[key] = None
    return record


def _shown_key(key: object) -> str:
    """A field name or index of the request as an error names it: a key that is not a plain
    name is quoted and escaped (and cut), so that the message stays one short line."""
    if isinstance(key, int) or (isinstance(key, str) and key.isidentifier()):
        return str(key)
    text = json.dumps(str(key))
    return text if len(text) <= 40 else text[:37] + '..."'


def _validation_message(errors: Iterable[dict]) -> str:
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"invalid JSON at character {e['loc'][-1]}: {e.get('ctx', {}).get('error')}"
        where = ".".join(_shown_key(p) for p in e["loc"] if p != "body")
        if not where:
            return (
                'the body must be a JSON object, {"text": [...], ...}, sent with '
                "Content-Type: application/json"
            )
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts) or "invalid request"


def create_app(
    models: Sequence[ServedModel],
    limits: Limits | None = None,
    batching: Batching | None = None,
    *,
    access: Access | None = None,
    cors_origins: Sequence[str] = (),
    metrics: bool = False,
) -> FastAPI:
    """The ASGI app serving `models` (see `load_models`); its lifespan runs the scheduler.
    `access`: API keys and rate limits; `cors_origins`: web origins whose pages may call it;
    `metrics`: GET /metrics for Prometheus (needs prometheus-client)."""
    limits, batching = limits or Limits(), batching or Batching()
    limits.validate()
    batching.validate()
    service = Service(models, limits, batching, access)
    recorder = None
    if metrics:
        from nmt.serving.metrics import Metrics

        recorder = Metrics(lambda: service.scheduler.waiting_lines, lambda: service.in_flight)
        service.scheduler.on_batch = recorder.batch

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.scheduler.start()
        try:
            yield
        finally:
            # The server has answered every request by now: nothing is waiting.
            await asyncio.to_thread(service.scheduler.stop)

    app = FastAPI(
        title="nmt",
        version=__version__,
        description="Neural machine translation. Concurrent requests are decoded together.",
        lifespan=lifespan,
    )
    # The last added runs first: CORS headers go on every answer, refusals included.
    app.add_middleware(LibreTranslateRoutes)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(CloseWhenStopping, service=service)
    if recorder is not None:
        from nmt.serving.metrics import RecordRequests

        app.add_middleware(RecordRequests, metrics=recorder)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            max_age=600,
        )
    app.state.service = service

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        # Without each error's "input": that would echo the request back.
        detail = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
        body = {"error": _validation_message(detail), "detail": detail}
        return JSONResponse(jsonable_encoder(body), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, error.status_code, error.headers)

    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorBody, "description": "Unknown model."},
        413: {
            "model": ErrorBody,
            "description": "Over max_lines, max_line_chars, max_request_chars or max_body_bytes.",
        },
        422: {"model": ErrorBody, "description": "Invalid JSON, types or options."},
        500: {"model": ErrorBody, "description": "Decoding failed (see the server log)."},
        503: {"model": ErrorBody, "description": "The queue is full; see Retry-After."},
        504: {"model": ErrorBody, "description": "Over the request's deadline."},
    }

    @app.post(
        "/translate",
        response_model=TranslateResponse,
        response_model_exclude_none=True,
        responses=errors,
    )
    async def translate(request: TranslateRequest, raw: Request) -> dict[str, Any]:
        """Translate lines; concurrent requests are decoded together, each gets its own."""
        service.authorize(raw)
        return await service.translate(request, raw.is_disconnected)

    add_routes(app, service)
    page = (Path(__file__).parent / "page.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def web_page() -> HTMLResponse:
        """A page to translate from a browser (nmt/serving/page.html)."""
        return HTMLResponse(page)

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Whether the server is up, and what it is doing."""
        return service.health()

    @app.get("/ready", responses={503: {"model": ErrorBody, "description": "Not now."}})
    async def ready() -> JSONResponse:
        """Whether the server takes requests now (for a load balancer): 503 while stopping or
        with a full queue. /health says only that it is alive."""
        ok, why = service.ready()
        if ok:
            return JSONResponse({"status": why})
        return JSONResponse({"error": why}, status_code=503, headers={"Retry-After": "1"})

    @app.get("/models", response_model=ModelList)
    async def list_models(raw: Request) -> dict[str, Any]:
        """The served models (languages, size, attention, decoding defaults) and the limits."""
        service.authorize(raw)
        return service.describe()

    if recorder is not None:

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            body, media_type = recorder.exposition()
            return Response(body, media_type=media_type)

    return app


class _Server(uvicorn.Server):
    """uvicorn's server, but a stop asked for with SIGTERM or SIGINT ends it with exit status 0
    once the requests in flight are answered: uvicorn raises the signal again after its
    graceful shutdown (status 143, or a KeyboardInterrupt), which a service manager reads as a
    crash. `on_stop` is told first, so that the answers still to come say Connection: close."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_stop()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(
    models: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    limits: Limits | None = None,
    batching: Batching | None = None,
    device: str = "auto",
    precision: str = "auto",
    quantize: str = "none",
    compile: bool = False,
    shortlist: bool = False,
    access_log: bool = False,
    access: Access | None = None,
    cors_origins: Sequence[str] = (),
    metrics: bool = False,
) -> None:
    """Serve run folders or checkpoints (`PATH` or `NAME=PATH` each) on http://host:port until
    SIGTERM or Ctrl-C; the requests in flight are answered before it returns."""
    limits, batching = limits or Limits(), batching or Batching()
    limits.validate()
    batching.validate()
    if metrics:
        from nmt.serving.metrics import require_prometheus

        require_prometheus()
    sock = _bind(host, port)  # before loading models: a taken port fails at once
    try:
        served = load_models(models, device, precision, quantize, compile, shortlist)
        app = create_app(
            served, limits, batching, access=access, cors_origins=cors_origins, metrics=metrics
        )
        # log_config=None: uvicorn logs through the handlers the CLI set up.
        options = uvicorn.Config(app, lifespan="on", log_config=None, access_log=access_log)
        server = _Server(options, app.state.service.stop)
        shown = f"[{host}]" if ":" in host else host
        log.info(
            f"serving {', '.join(m.name for m in served)} on "
            f"http://{shown}:{sock.getsockname()[1]} (API docs at /docs); "
            "Ctrl-C or SIGTERM stops it after the requests in flight"
        )
        server.run(sockets=[sock])
    finally:
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # The protocol named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY)
        # only on connections whose socket says TCP, and without that every answer written in
        # two parts (headers, body) waited for the client's delayed ACK: 44 ms a request.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as e:
        raise NmtError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise NmtError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock
