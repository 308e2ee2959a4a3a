"""`lmcompress serve`: a run behind the HTTP API of serving/app.py on uvicorn, bound to 127.0.0.1 unless told
otherwise. The port is bound before the model loads, so a second server on the same port fails at once with one
line; SIGTERM and Ctrl-C stop accepting connections and let the requests in flight finish (uvicorn's graceful
shutdown, at most --graceful-timeout-s), then the batcher answers what it holds and the process exits 0."""

from __future__ import annotations

import errno
import logging
import signal
import socket
from typing import Any

import uvicorn

from ..config import ServeConfig
from ..console import console
from ..errors import LmcError
from ..serving import load
from ..serving.app import Limits, create_app

log = logging.getLogger("lmcompress")


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port, or one line saying why not."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise LmcError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of such sockets, and without it every
    # answer on a kept-alive connection waited 40 ms for the client's delayed ACK (measured: 44 ms vs 1 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop reuses the port
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise LmcError(f"{host}:{port} is already in use (another server?); stop it or pass --port") from None
        raise LmcError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)  # connections made while the model loads wait in the backlog instead of being refused
    return sock


def run_until_signal(server: uvicorn.Server, sock: socket.socket) -> list[int]:
    """Run the server until SIGTERM or Ctrl-C -> the signals that stopped it. uvicorn re-raises the signal that
    stopped it once it has put back the handlers it found: with these in place the process returns (exit 0 after a
    clean shutdown) instead of dying of SIGTERM; the caller's own handlers are back afterwards."""
    stopped_by: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for signum in previous:
            signal.signal(signum, lambda number, frame: stopped_by.append(number))
        server.run(sockets=[sock])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return stopped_by


def serve(cfg: ServeConfig) -> dict[str, Any]:
    """Serve cfg.model until SIGTERM or Ctrl-C -> what was served."""
    sock = bind(cfg.host, cfg.port)
    try:
        predictor = load(cfg.model, threads=cfg.threads, batch_size=cfg.max_batch)
        limits = Limits(cfg.max_texts, cfg.max_chars, cfg.max_body_bytes)
        app = create_app(predictor, cfg.max_batch, cfg.max_wait_ms, limits)
        server = uvicorn.Server(uvicorn.Config(app, log_level="info" if cfg.access_log else "warning",
                                               access_log=cfg.access_log, lifespan="on",
                                               timeout_graceful_shutdown=cfg.graceful_timeout_s))
        host, port = sock.getsockname()[:2]
        card = predictor.card
        console().print(f"serving {cfg.model} ({card.task}, {card.runtime} {card.precision}) on http://{host}:{port}"
                        " - POST /predict, GET /health /metadata /metrics; SIGTERM or Ctrl-C stops", soft_wrap=True)
        stopped_by = run_until_signal(server, sock)
        log.info("stopped (%s)", ", ".join(signal.Signals(n).name for n in stopped_by) or "shut down")
    finally:
        sock.close()
    if not server.started:
        raise LmcError(f"the server on {cfg.host}:{cfg.port} did not start (see the lines above)")
    return {"model": cfg.model, "host": host, "port": port}
