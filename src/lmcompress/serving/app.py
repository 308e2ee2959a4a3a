"""The HTTP API of `lmcompress serve`: a Starlette app (run by uvicorn) over one predictor.

    POST /predict   {"texts": ["...", ...]} or {"text": "..."}  (+ "text_pairs" / "text_pair" for pair models,
                    "max_new_tokens" for causal LMs)  ->  {"predictions": [...]}, one per text
    GET  /health    {"status": "ok"}
    GET  /metadata  the model card: run, task, runtime, precision, labels, max length, processor, limits
    GET  /metrics   Prometheus text format: requests by status, texts, batch sizes, latency, process memory

Starlette rather than FastAPI: the API is four routes whose input checks must answer in our own words and status
codes (413 for size, 415 for type, 422 for content); FastAPI's generated validation would add pydantic's error
format and a dependency for nothing the routes need. Every error, 404 and 405 included, is a JSON object
{"error": "..."}, and a bad request never stops the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import LmcError
from ..models.load import first_line
from .batching import DynamicBatcher
from .predictor import Predictor, TextGenerator

log = logging.getLogger("lmcompress")


@dataclass(frozen=True)
class Limits:
    """What one request may hold; anything over is answered 413 (body) or 422 (content) and never reaches the model."""

    max_texts: int = 256  # texts per request
    max_chars: int = 20_000  # characters per text (the tokenizer truncates to max length anyway)
    max_body_bytes: int = 4_000_000  # bytes of the request body
    max_new_tokens: int = 256  # causal LMs: tokens one request may ask for


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Metrics:
    """Prometheus counters of one app (its own registry: several apps may live in one process, as in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("lmcompress_requests", "HTTP requests to /predict by status code", ["status"],
                                registry=self.registry)
        self.texts = Counter("lmcompress_texts", "texts predicted", registry=self.registry)
        self.latency = Histogram("lmcompress_request_seconds", "time from request to answer on /predict",
                                 registry=self.registry, buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.batch = Histogram("lmcompress_batch_texts", "texts per model call", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_seconds = Histogram("lmcompress_batch_seconds", "seconds per model call", registry=self.registry)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, open fds

    def on_batch(self, texts: int, seconds: float) -> None:
        self.batch.observe(texts)
        self.batch_seconds.observe(seconds)


def _strings(value: Any, name: str, limits: Limits) -> list[str]:
    if not isinstance(value, list):
        raise BadRequest(422, f'"{name}" must be a list of strings')
    if not value:
        raise BadRequest(422, f'"{name}" is empty')
    if len(value) > limits.max_texts:
        raise BadRequest(422, f'"{name}" holds {len(value)} texts; at most {limits.max_texts} per request '
                              '(--max-texts)')
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise BadRequest(422, f'{name}[{i}] is {type(text).__name__}, not a string')
        if not text.strip():
            raise BadRequest(422, f"{name}[{i}] is empty")
        if len(text) > limits.max_chars:
            raise BadRequest(422, f"{name}[{i}] has {len(text)} characters; at most {limits.max_chars} "
                                  "(--max-chars)")
    return value


def _one_or_many(payload: dict[str, Any], one: str, many: str, limits: Limits) -> list[str] | None:
    if one in payload and many in payload:
        raise BadRequest(422, f'give "{one}" or "{many}", not both')
    if one in payload:
        if not isinstance(payload[one], str):
            raise BadRequest(422, f'"{one}" must be a string')
        return _strings([payload[one]], one, limits)
    return _strings(payload[many], many, limits) if many in payload else None


def parse_predict(payload: Any, predictor: Predictor, limits: Limits) -> tuple[list[str], list[str] | None, int]:
    """A /predict body -> (texts, pairs or None, max_new_tokens), or BadRequest saying what is wrong."""
    if not isinstance(payload, dict):
        raise BadRequest(422, 'the body must be a JSON object such as {"texts": ["..."]}')
    allowed = {"text", "texts", "text_pair", "text_pairs"} | (
        {"max_new_tokens"} if isinstance(predictor, TextGenerator) else set())
    unknown = sorted(set(payload) - allowed)
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(unknown)}; this model takes {', '.join(sorted(allowed))}")
    texts = _one_or_many(payload, "text", "texts", limits)
    if texts is None:
        raise BadRequest(422, 'give "texts": ["..."] or "text": "..."')
    pairs = _one_or_many(payload, "text_pair", "text_pairs", limits)
    if predictor.card.has_pair and (pairs is None or len(pairs) != len(texts)):
        raise BadRequest(422, f'this model reads text pairs: give "text_pairs" with {len(texts)} strings')
    if pairs is not None and not predictor.card.has_pair:
        raise BadRequest(422, "this model reads single texts; it takes no text pairs")
    new_tokens = payload.get("max_new_tokens", 32)
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or not 1 <= new_tokens <= limits.max_new_tokens:
        raise BadRequest(422, f'"max_new_tokens" must be an integer from 1 to {limits.max_new_tokens}')
    return texts, pairs, new_tokens


async def read_json(request: Request, limits: Limits) -> Any:
    """The request's JSON body, read no further than the size limit."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind != "application/json":
        raise BadRequest(415, f"Content-Type is {kind}; send application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        raise BadRequest(413, f"the body is over {limits.max_body_bytes} bytes (--max-body-bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise BadRequest(413, f"the body is over {limits.max_body_bytes} bytes (--max-body-bytes)")
    if not body.strip():
        raise BadRequest(400, 'the body is empty; send JSON such as {"texts": ["..."]}')
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(400, f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadRequest(400, "the body nests JSON too deeply") from None


def create_app(predictor: Predictor, max_batch: int = 32, max_wait_ms: float = 5.0,
               limits: Limits | None = None) -> Starlette:
    """The ASGI app serving `predictor`; its batcher starts and stops with the app's lifespan."""
    limits = limits or Limits()
    metrics = Metrics()
    batcher = DynamicBatcher(predictor.predict, max_batch, max_wait_ms, metrics.on_batch)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            texts, pairs, new_tokens = parse_predict(await read_json(request, limits), predictor, limits)
            if isinstance(predictor, TextGenerator):
                answers = [await batcher.run_alone(lambda t=t: predictor.generate(t, new_tokens)) for t in texts]
            else:
                answers = await batcher.submit(texts, pairs)
        except BadRequest as exc:
            metrics.requests.labels(str(exc.status)).inc()
            return _error(exc.status, exc.message)
        except ClientDisconnect:
            metrics.requests.labels("499").inc()
            return _error(400, "the client closed the connection")
        except LmcError as exc:  # what the model refuses to read (a QA question too long for a window, ...)
            metrics.requests.labels("422").inc()
            return _error(422, str(exc))
        except Exception as exc:  # a runtime failure: a JSON 500, logged, and the server goes on
            log.exception("/predict failed")
            metrics.requests.labels("500").inc()
            return _error(500, f"internal error {type(exc).__name__}: {first_line(exc)}")
        metrics.requests.labels("200").inc()
        metrics.texts.inc(len(texts))
        metrics.latency.observe(time.perf_counter() - started)
        return JSONResponse({"predictions": answers})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metadata(request: Request) -> Response:
        return JSONResponse(predictor.card.as_dict() | {"limits": asdict(limits), "max_batch": max_batch,
                                                        "max_wait_ms": max_wait_ms})

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        yield
        await batcher.stop()

    routes = [Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/metadata", metadata, methods=["GET"]), Route("/metrics", prometheus, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
