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
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from inference import logs
from inference.app import JSON, App, Response
from inference.config import Settings
from inference.limits import NO_MODEL_BODY
from inference.logs import RequestLog, event
from inference.metrics import Metrics
from inference.registry import s3_client, sync
from inference.repository import ModelVersion, Repository

MAX_HEADER_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # after an error that closes the connection, keep draining the client's data
EXIT_BIND = 3  # a worker could not bind its port: retrying will not help
PATH_CACHE_SIZE = 1024

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_OK_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEADERS_TOO_LARGE = f"request line and headers exceed {MAX_HEADER_BYTES} bytes"
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")}


def response_bytes(response: Response, keep_alive: bool) -> bytes:
    """The bytes on the wire for ``response``."""
    if response.status == 200 and keep_alive and response.content_type is JSON:
        return b"%s%d\r\n\r\n%s" % (_OK_JSON, len(response.body), response.body)
    parts = [
        _STATUS_LINES[response.status],
        b"content-type: ",
        response.content_type,
        b"\r\ncontent-length: ",
        str(len(response.body)).encode(),
    ]
    if response.allow:
        parts += (b"\r\nallow: ", response.allow.encode())
    if not keep_alive:
        parts.append(b"\r\nconnection: close")
    parts += (b"\r\n\r\n", response.body)
    return b"".join(parts)


class Server:
    """Connections of one worker, the settings they share and the body bytes they hold.

    A request's body is reserved against ``max_inflight`` once its headers are read (its
    Content-Length, or the route's body limit when chunked); a request that does not fit while
    others hold bytes waits, its connection unread, until they finish.
    """

    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.idle_timeout = settings.idle_timeout
        self.grace = settings.grace_seconds
        self.max_connections = settings.max_connections
        self.max_inflight = settings.max_inflight_bytes
        self.small_body = min(app.body_limit(""), NO_MODEL_BODY)  # no route's limit is smaller
        self.inflight = 0
        self.waiting: deque[HttpProtocol] = deque()
        self.connections: set[HttpProtocol] = set()
        self.shutting_down = False
        self.paths: dict[bytes, str] = {}

    def path(self, url: bytes) -> str:
        """The decoded path of a request target (query dropped), cached for repeated URLs."""
        path = self.paths.get(url)
        if path is None:
            path = url.split(b"?", 1)[0].decode("utf-8", "replace")
            if "%" in path:
                path = unquote(path)
            if len(self.paths) >= PATH_CACHE_SIZE:  # URLs are client input: keep the cache small
                self.paths.clear()
            self.paths[url] = path
        return path

    def reserve(self, size: int) -> bool:
        if self.inflight and self.inflight + size > self.max_inflight:
            return False
        self.inflight += size
        return True

    def release(self, size: int) -> None:
        self.inflight -= size
        while self.waiting and self.reserve(self.waiting[0].wanted):
            self.waiting.popleft().admitted()

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

    __slots__ = (
        "server",
        "app",
        "transport",
        "parser",
        "url",
        "path",
        "body",
        "body_size",
        "limit",
        "expect",
        "chunked",
        "content_length",
        "header_bytes",
        "pending_bytes",
        "in_request",
        "headers_done",
        "closing",
        "last_active",
        "reserved",
        "wanted",
        "waiting",
        "write_paused",
    )

    def __init__(self, server: Server) -> None:
        self.server = server
        self.app = server.app
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.path = ""
        self.body: bytes | bytearray = b""
        self.body_size = 0
        self.limit = 0
        self.expect = False
        self.chunked = False
        self.content_length = 0
        self.header_bytes = 0  # request line and headers of the current message, as parsed
        self.pending_bytes = 0  # bytes received while its headers were still incomplete
        self.in_request = False
        self.headers_done = False
        self.closing = False
        self.last_active = time.monotonic()
        self.reserved = 0  # body bytes this request holds against the server's budget
        self.wanted = 0  # what it waits to reserve
        self.waiting = False
        self.write_paused = False

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= server.max_connections:
            self._fail(503, f"too many connections (this worker serves at most {server.max_connections})")
            return
        server.connections.add(self)
        # Responses go out in one write: do not hold them back for Nagle (uvloop sets this
        # itself; the asyncio loop does not for a server created from a socket).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._release()

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
        self.write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self.waiting:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True
        self.url = b""
        self.body = b""
        self.body_size = self.content_length = self.header_bytes = self.pending_bytes = 0
        self.expect = self.chunked = self.headers_done = False

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
        elif size == 17 and name.lower() == b"transfer-encoding":
            self.chunked = True  # llhttp accepts no other transfer coding from a client

    def on_headers_complete(self) -> None:
        self.headers_done = True
        if self.closing:
            return
        server = self.server
        self.path = server.path(self.url)
        # Every route takes a small body: look up the route's own limit only for a larger one.
        limit = self.limit = (
            self.app.body_limit(self.path)
            if self.chunked or self.content_length > server.small_body
            else server.small_body
        )
        if self.content_length > limit:
            self._fail(413, self._too_large(self.content_length))
            return
        wanted = self.content_length or (limit if self.chunked else 0)
        if not wanted:
            return
        if server.reserve(wanted):
            self.reserved = wanted
            if self.expect:
                self.transport.write(_CONTINUE)
        else:
            self.wanted, self.waiting = wanted, True
            self.transport.pause_reading()
            server.waiting.append(self)

    def admitted(self) -> None:
        """The server reserved ``wanted`` bytes for this connection's request: read it."""
        self.reserved, self.wanted, self.waiting = self.wanted, 0, False
        if self.expect and not self.body_size:
            self.transport.write(_CONTINUE)
        if not self.write_paused:
            self.transport.resume_reading()

    def on_body(self, body: bytes) -> None:
        if self.closing:
            return
        size = self.body_size + len(body)
        if size > self.limit:
            self._fail(413, self._too_large(size))
            return
        self.body_size = size
        # One buffer that grows in place, rather than a list of chunks joined (copied) at the end.
        if not self.body:
            self.body = body
        elif type(self.body) is bytes:
            self.body = bytearray(self.body)
            self.body += body
        else:
            self.body += body

    def on_message_complete(self) -> None:
        if self.closing:
            return
        self.in_request = False
        body, self.body = self.body, b""
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive() and not self.server.shutting_down
        response = self.app.handle(_METHODS.get(method) or method.decode(), self.path, body)
        del body
        self._release()
        self.transport.write(response_bytes(response, keep_alive))
        if not keep_alive:
            self.closing = True
            self.transport.close()

    # --- errors ------------------------------------------------------------------------------

    def _release(self) -> None:
        """Give back this request's share of the server's body budget (or stop waiting for it)."""
        if self.waiting:
            self.waiting = False
            try:
                self.server.waiting.remove(self)
            except ValueError:
                pass
            if not self.write_paused and not self.transport.is_closing():
                self.transport.resume_reading()
        if self.reserved:
            reserved, self.reserved = self.reserved, 0
            self.server.release(reserved)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes or more exceeds the limit of {self.limit} bytes"

    def _fail(self, status: int, message: str) -> None:
        """Answer with an error and close, reading (and dropping) what the client still sends
        for a moment so that it sees the response rather than a reset connection."""
        self.closing = True
        self.in_request = False
        self.body = b""
        self._release()
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
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
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
        result = sync(settings.registry, settings.cache_dir, s3_client(settings.s3_endpoint), settings.expect_sha256)
        for key, digests in result.expected.items():
            expected.setdefault(key, {}).update(digests)
        # Only what the registry lists now: the cache may hold versions since removed from it.
        repository.load_directory(
            settings.cache_dir, expected, result.failures, only=set(result.expected) | set(result.failures)
        )
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
    loop_factory: Callable[[], asyncio.AbstractEventLoop]
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
    app = App(
        repository,
        metrics,
        RequestLog(settings.log_sample, settings.log_rate),
        settings.max_elements,
        settings.max_body_bytes,
    )
    server = Server(app, settings)
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
            event(
                logging.ERROR,
                "cannot read the model registry",
                registry=settings.registry,
                error=f"{type(exc).__name__}: {exc}",
            )
            loop.call_soon_threadsafe(request_stop, 1)
        else:
            event(logging.INFO, "models loaded", ready=repository.ready, versions=len(repository.all_versions()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, request_stop)
    listener = await loop.create_server(lambda: HttpProtocol(server), sock=sock)
    host, port = sock.getsockname()[:2]
    event(
        logging.INFO,
        "listening",
        host=host,
        port=port,
        loop=settings.loop,
        repository=settings.registry or str(settings.model_repository),
    )
    threading.Thread(target=loader, name="model-loader", daemon=True).start()

    def flush_logs() -> None:
        app.sync_metrics()
        logs.flush()
        flusher[0] = loop.call_later(logs.FLUSH_SECONDS, flush_logs)

    flusher = [loop.call_later(logs.FLUSH_SECONDS, flush_logs)]
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
    flusher[0].cancel()
    event(logging.INFO, "stopped", exit_code=exit_code)
    return exit_code
