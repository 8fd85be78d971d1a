"""HTTP/1.1 transport (asyncio protocol + httptools) and the life of one worker process.

Requests are handled inline on the event loop: a small model runs in tens of microseconds, less
than a hand-off to a thread would cost, and each worker process owns one core's worth of work.
The worker answers ``/v2/health/live`` at once and loads models on a thread, so readiness
follows the models. SIGTERM stops accepting, lets requests in flight finish (up to
``--grace-seconds``) and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from inference import logs
from inference.app import App, Response
from inference.config import Settings
from inference.logs import RequestLog, event
from inference.metrics import Metrics
from inference.registry import s3_client, sync
from inference.repository import ModelVersion, Repository

MAX_HEADER_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # after an error that closes the connection, keep draining the client's data
EXIT_BIND = 3         # a worker could not bind its port: retrying will not help

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEADERS_TOO_LARGE = f"request line and headers exceed {MAX_HEADER_BYTES} bytes"


def response_bytes(response: Response, keep_alive: bool) -> bytes:
    """The bytes on the wire for ``response``."""
    parts = [_STATUS_LINES[response.status], b"content-type: ", response.content_type,
             b"\r\ncontent-length: ", str(len(response.body)).encode()]
    if response.allow:
        parts += (b"\r\nallow: ", response.allow.encode())
    if not keep_alive:
        parts.append(b"\r\nconnection: close")
    parts += (b"\r\n\r\n", response.body)
    return b"".join(parts)


class Server:
    """Connections of one worker and the settings they share."""

    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.idle_timeout = settings.idle_timeout
        self.grace = settings.grace_seconds
        self.connections: set[HttpProtocol] = set()
        self.shutting_down = False

    def sweep(self) -> None:
        """Close connections idle (or stalled mid-request) for longer than the idle timeout."""
        limit = time.monotonic() - self.idle_timeout
        for conn in list(self.connections):
            if conn.last_active < limit:
                conn.transport.close()

    async def drain(self) -> None:
        """Stop keep-alive, close idle connections, wait for the rest (up to the grace period)."""
        self.shutting_down = True
        for conn in list(self.connections):
            if not conn.in_request:
                conn.transport.close()
        deadline = time.monotonic() + self.grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.transport.abort()


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: keep-alive, pipelining, 100-continue, body and header limits."""

    __slots__ = ("server", "app", "transport", "parser", "url", "chunks", "body_size", "expect",
                 "content_length", "header_bytes", "pending_bytes", "in_request", "headers_done",
                 "closing", "last_active")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.expect = False
        self.content_length = 0
        self.header_bytes = 0   # request line and headers of the current message, as parsed
        self.pending_bytes = 0  # bytes received while its headers were still incomplete
        self.in_request = False
        self.headers_done = False
        self.closing = False
        self.last_active = time.monotonic()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        # Responses go out in one write: do not hold them back for Nagle (uvloop sets this
        # itself; the asyncio loop does not for a server created from a socket).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # draining what the client still sends after an error response
        self.last_active = time.monotonic()
        if self.pending_bytes > MAX_HEADER_BYTES:
            # A header still arriving: httptools buffers it whole before any callback sees it.
            self._fail(431, _HEADERS_TOO_LARGE)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.transport.close()  # the request was answered; what follows is not HTTP/1.1
        except httptools.HttpParserCallbackError as exc:
            event(logging.ERROR, "unhandled error", error=repr(exc.__context__))
            self._fail(500, "internal server error")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")
        else:
            if self.in_request and not self.headers_done:
                self.pending_bytes += len(data)

    def pause_writing(self) -> None:
        # The client does not read its responses: stop reading its requests until it does.
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self.url = b""
        self.chunks = []
        self.body_size = 0
        self.expect = False
        self.content_length = 0
        self.header_bytes = 0
        self.pending_bytes = 0
        self.headers_done = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.header_bytes += len(url)
        if self.header_bytes > MAX_HEADER_BYTES and not self.closing:
            self._fail(431, _HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name)
        self.header_bytes += size + len(value) + 4
        if self.header_bytes > MAX_HEADER_BYTES and not self.closing:
            self._fail(431, _HEADERS_TOO_LARGE)
        elif size == 14 and name.lower() == b"content-length":
            self.content_length = int(value)  # llhttp has checked it is a number
        elif size == 6 and name.lower() == b"expect":
            self.expect = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.closing:
            return
        if self.content_length > self.server.max_body:
            self._fail(413, self._too_large(self.content_length))
        elif self.expect:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        self.body_size += len(body)
        if self.body_size > self.server.max_body:
            self._fail(413, self._too_large(self.body_size))
        else:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.in_request = False
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method = self.parser.get_method().decode()
        path = self.url.split(b"?", 1)[0].decode("utf-8", "replace")
        if "%" in path:
            path = unquote(path)
        keep_alive = self.parser.should_keep_alive() and not self.server.shutting_down
        response = self.app.handle(method, path, body)
        self.transport.write(response_bytes(response, keep_alive))
        if not keep_alive:
            self.closing = True
            self.transport.close()

    # --- errors ------------------------------------------------------------------------------

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes or more exceeds the limit of {self.server.max_body} bytes"

    def _fail(self, status: int, message: str) -> None:
        """Answer with an error and close, reading (and dropping) what the client still sends
        for a moment so that it sees the response rather than a reset connection."""
        self.closing = True
        self.in_request = False
        method = path = ""
        if self.url:  # the request line was read
            method = self.parser.get_method().decode()
            path = self.url.split(b"?", 1)[0].decode("utf-8", "replace")
        response = self.app.reject(status, message, method, path)
        self.transport.write(response_bytes(response, False))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, self.transport.close)


def listen_socket(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so that each worker process binds its own."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def load_models(repository: Repository, settings: Settings) -> None:
    """Fill ``repository`` from the registry (if any) or the model directory; never raises
    except when the registry cannot be listed at all."""
    expected = {key: {"--expect-sha256": digest} for key, digest in settings.expect_sha256.items()}
    if settings.registry:
        result = sync(settings.registry, settings.cache_dir, s3_client(settings.s3_endpoint))
        for key, digests in result.expected.items():
            expected.setdefault(key, {}).update(digests)
        # Only what the registry lists now: the cache may hold versions since removed from it.
        repository.load_directory(settings.cache_dir, expected, result.failures,
                                  only=set(result.expected) | set(result.failures))
    else:
        if not settings.model_repository.is_dir():
            event(logging.WARNING, "model repository missing", path=str(settings.model_repository))
        repository.load_directory(settings.model_repository, expected)
    unknown = sorted(f"{m}:{v}" for m, v in settings.expect_sha256 if repository.get(m, v) is None)
    if unknown:
        event(logging.WARNING, "--expect-sha256 names versions that do not exist", versions=unknown)


def serve(settings: Settings, sock: socket.socket | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; the exit status."""
    logs.setup(settings.log_level)
    try:
        sock = sock or listen_socket(settings.host, settings.port)
    except OSError as exc:
        event(logging.ERROR, "cannot listen", host=settings.host, port=settings.port, error=str(exc))
        return EXIT_BIND
    if settings.loop == "uvloop":
        import uvloop
        loop_factory = uvloop.new_event_loop
    else:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_run(settings, sock))


def _log_state(mv: ModelVersion) -> None:
    if mv.state == "FAILED":
        event(logging.ERROR, "model version failed", model=mv.model, version=mv.version, reason=mv.reason)
    elif mv.state == "READY":
        event(logging.INFO, "model version ready", model=mv.model, version=mv.version, sha256=mv.sha256)


async def _run(settings: Settings, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    metrics = Metrics()
    repository = Repository()

    def on_change(mv: ModelVersion) -> None:
        metrics.set_state(mv.model, mv.version, mv.state)
        _log_state(mv)

    repository.on_change = on_change
    server = Server(App(repository, metrics, RequestLog(settings.log_sample)), settings)
    stop = asyncio.Event()
    exit_code = 0

    def request_stop(code: int = 0) -> None:
        nonlocal exit_code
        exit_code = exit_code or code
        stop.set()

    def loader() -> None:
        try:
            load_models(repository, settings)
        except Exception as exc:  # the registry is unreachable or refuses access
            event(logging.ERROR, "cannot read the model registry", registry=settings.registry,
                  error=f"{type(exc).__name__}: {exc}")
            loop.call_soon_threadsafe(request_stop, 1)
        else:
            event(logging.INFO, "models loaded", ready=repository.ready,
                  versions=len(repository.all_versions()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    listener = await loop.create_server(lambda: HttpProtocol(server), sock=sock)
    host, port = sock.getsockname()[:2]
    event(logging.INFO, "listening", host=host, port=port, loop=settings.loop,
          repository=settings.registry or str(settings.model_repository))
    threading.Thread(target=loader, name="model-loader", daemon=True).start()

    sweep_every = max(1.0, settings.idle_timeout / 4)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), sweep_every)
        except TimeoutError:
            server.sweep()
    event(logging.INFO, "shutting down", connections=len(server.connections))
    listener.close()
    await server.drain()
    await listener.wait_closed()
    event(logging.INFO, "stopped", exit_code=exit_code)
    return exit_code

