"""Routing and handlers of the v2 REST API, independent of the HTTP transport.

:meth:`App.handle` maps ``(method, path, body)`` to a :class:`Response`; the transport
(:mod:`inference.http`) only parses HTTP and writes bytes. Every error is a JSON
``{"error": "..."}`` with the status documented in ``inference/openapi.yaml``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inference import SERVER_NAME, __version__
from inference.codec import Signature, TensorSpec, decode_infer_request, dumps, encode_infer_response, error_body
from inference.errors import InferenceError, TooLarge
from inference.limits import BODY_CAP, DEFAULT_MAX_ELEMENTS, NO_MODEL_BODY, Limits, json_values_over, limits_for
from inference.logs import MAX_PATH_CHARS, RequestLog, event
from inference.metrics import Metrics
from inference.repository import READY, ModelVersion, Repository
from inference.runtime import INPUT_ERRORS, fast_run

JSON = b"application/json"
PLATFORM = "onnxruntime_onnx"
ROUTE_CACHE_SIZE = 1024


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    allow: str = ""  # the Allow header of a 405
    error: str = ""  # the message of an error response, for the log


class App:
    """The API over a :class:`Repository`, counting into ``metrics`` and logging via ``log``.

    ``limits`` holds what each model version accepts (see :mod:`inference.limits`);
    ``max_body_bytes``, if set, replaces every derived body limit.
    """

    def __init__(
        self,
        repository: Repository,
        metrics: Metrics,
        log: RequestLog,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
        max_body_bytes: int | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self.log = log
        self.max_elements = max_elements
        self.max_body_bytes = max_body_bytes
        self.server_metadata = dumps({"name": SERVER_NAME, "version": __version__, "extensions": []})
        self._routes: dict[str, tuple[str, str, str | None]] = {}
        self._limits: dict[int, tuple[Signature, Limits]] = {}  # id(signature) -> its limits
        self._plans: dict[int, _Plan] = {}  # id(model version) -> how to serve it
        self._log_suppressed = 0
        metrics.log_rate.set(log.rate)
        metrics.log_sample.set(log.sample)

    def handle(self, method: str, path: str, body: bytes | bytearray) -> Response:
        """Serve one request; never raises."""
        start = time.perf_counter()
        route = model = version = ""
        try:
            route, model_name, version_name = self.route(path)
            if route == "infer":
                if method != "POST":
                    raise _MethodNotAllowed("POST")
                mv = self._model(model_name, version_name)
                model, version = mv.model, mv.version
                response = self._infer(mv, body)
                seconds = time.perf_counter() - start
                self.metrics.ok(model, version, seconds)
                self.log(method, path, 200, seconds, model, version)
                return response
            if method != "GET":
                raise _MethodNotAllowed("GET")
            response = self._get(route, model_name, version_name)
        except _MethodNotAllowed as exc:
            message = f"method {method} not allowed on {path[:MAX_PATH_CHARS]}; allowed: {exc.allow}"
            response = Response(405, error_body(message), allow=exc.allow, error=message)
        except InferenceError as exc:
            response = Response(exc.status, error_body(exc.message), error=exc.message)
            if route == "infer":
                self.metrics.failed(model, version, exc.status)
        except Exception as exc:  # a bug, not the client's fault: say so without details
            event(
                logging.ERROR,
                "unhandled error",
                path=path[:MAX_PATH_CHARS],
                method=method,
                error=f"{type(exc).__name__}: {exc}",
            )
            response = Response(500, error_body("internal server error"), error="internal server error")
            if route == "infer":
                self.metrics.failed(model, version, 500)
        if response.status >= 400:
            self.metrics.error(response.status)
        self.log(method, path, response.status, time.perf_counter() - start, model, version, response.error)
        return response

    def reject(self, status: int, message: str, method: str = "", path: str = "") -> Response:
        """An error found by the transport (bad HTTP, body or headers too large), counted and logged."""
        self.metrics.error(status)
        self.log(method, path, status, 0.0, error=message)
        return Response(status, error_body(message), error=message)

    def route(self, path: str) -> tuple[str, str, str | None]:
        """``(route, model, version)`` of ``path``; raises a 404 for a path with no route."""
        found = self._routes.get(path)
        if found is None:
            found = _route(path)
            if len(self._routes) >= ROUTE_CACHE_SIZE:  # paths are client input: keep the cache small
                self._routes.clear()
            self._routes[path] = found
        return found

    def body_limit(self, path: str) -> int:
        """The largest body accepted on ``path``: its model version's limit for an inference
        route, else :data:`NO_MODEL_BODY` (or ``max_body_bytes`` when set)."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        try:
            route, model, version = self.route(path)
        except InferenceError:
            return NO_MODEL_BODY
        mv = self.repository.get(model, version) if route == "infer" else None
        if mv is None or mv.signature is None:
            return NO_MODEL_BODY if mv is None else BODY_CAP
        return self.limits(mv.signature).body_bytes

    def limits(self, signature: Signature) -> Limits:
        cached = self._limits.get(id(signature))
        if cached is None or cached[0] is not signature:
            cached = self._limits[id(signature)] = (
                signature,
                limits_for(signature, self.max_elements, BODY_CAP, self.max_body_bytes),
            )
        return cached[1]

    def sync_metrics(self) -> None:
        """Move counts kept outside prometheus_client (they are cheaper there) into it."""
        self.metrics.flush()
        suppressed = self.log.suppressed
        if suppressed != self._log_suppressed:
            self.metrics.log_suppressed.inc(suppressed - self._log_suppressed)
            self._log_suppressed = suppressed

    # --- handlers -----------------------------------------------------------------------------

    def _get(self, route: str, model: str, version: str | None) -> Response:
        if route == "live":
            return Response(200, b'{"live":true}')
        if route == "ready":
            return self._server_ready()
        if route == "server":
            return Response(200, self.server_metadata)
        if route == "metrics":
            self.sync_metrics()
            body, content_type = self.metrics.render()
            return Response(200, body, content_type.encode())
        mv = self._model(model, version)
        if route == "model_ready":
            if mv.state != READY:
                raise _not_ready(mv)
            return Response(200, dumps({"name": mv.model, "version": mv.version, "ready": True}))
        return Response(200, dumps(self._metadata(mv)))

    def _infer(self, mv: ModelVersion, body: bytes | bytearray) -> Response:
        signature = mv.signature
        if mv.state != READY or signature is None:  # a READY version always has its signature
            raise _not_ready(mv)
        plan = self._plans.get(id(mv))
        if plan is None or plan.session is not mv.session or plan.signature is not signature:
            plan = self._plan(mv, signature)
        limits = plan.limits
        if len(body) > limits.body_bytes:
            raise TooLarge(
                f"request body of {len(body)} bytes exceeds the limit of {limits.body_bytes} "
                f"bytes for model {mv.model!r} version {mv.version!r}"
            )
        values = len(body) >= limits.values and json_values_over(body, limits.values)
        if values:
            raise TooLarge(
                f"request body holds up to {values} JSON values; model {mv.model!r} version "
                f"{mv.version!r} takes at most {limits.elements} tensor elements per request"
            )
        request = decode_infer_request(body, signature, limits.elements)
        try:
            arrays = plan.run(request.outputs, request.inputs, None)
        except INPUT_ERRORS as exc:
            raise InferenceError(400, f"the model rejected the input: {exc}") from None
        if request.outputs is signature.output_names:
            specs: Sequence[TensorSpec] = signature.outputs
        else:
            specs = [signature.output_map[name] for name in request.outputs]
        return Response(200, encode_infer_response(mv.model, mv.version, request.id, specs, arrays))

    def _plan(self, mv: ModelVersion, signature: Signature) -> _Plan:
        """A new plan for ``mv`` (first request, or its session changed); plans of versions no
        longer in the repository go, so that they do not keep their sessions alive."""
        live = {id(v) for v in self.repository.all_versions()}
        for key in [key for key in self._plans if key not in live]:
            del self._plans[key]
        plan = self._plans[id(mv)] = _Plan(mv.session, signature, self.limits(signature))
        return plan

    def _server_ready(self) -> Response:
        repo = self.repository
        if repo.ready:
            return Response(200, b'{"ready":true}')
        versions = repo.all_versions()
        if not repo.loaded:
            done = sum(mv.state != "LOADING" for mv in versions)
            raise InferenceError(
                503,
                f"loading models: {done} of {len(versions)} version(s) done"
                + ("" if repo.discovered else ", repository still being read"),
            )
        if not versions:
            raise InferenceError(503, "the model repository holds no model version")
        raise InferenceError(
            503, "no model version is ready: " + "; ".join(f"{mv.model}/{mv.version}: {mv.reason}" for mv in versions)
        )

    def _model(self, model: str, version: str | None) -> ModelVersion:
        mv = self.repository.get(model, version)
        if mv is not None:
            return mv
        if not self.repository.discovered:
            raise InferenceError(503, "the model repository is still being read; retry shortly")
        if model not in self.repository.models:
            raise InferenceError(404, f"unknown model {model!r}")
        raise InferenceError(
            404, f"model {model!r} has no version {version!r} (versions: {', '.join(self.repository.versions(model))})"
        )

    def _metadata(self, mv: ModelVersion) -> dict[str, Any]:
        meta = {
            "name": mv.model,
            "versions": self.repository.versions(mv.model),
            "platform": PLATFORM,
            "inputs": [t.as_json() for t in mv.signature.inputs] if mv.signature else [],
            "outputs": [t.as_json() for t in mv.signature.outputs] if mv.signature else [],
            "version": mv.version,
            "state": mv.state,
        }
        if mv.sha256:
            meta["sha256"] = mv.sha256
        if mv.reason:
            meta["reason"] = mv.reason
        return meta


class _Plan:
    """What serving one loaded model version needs, looked up once: valid while the version
    keeps this session and signature."""

    __slots__ = ("session", "signature", "limits", "run")

    def __init__(self, session: Any, signature: Signature, limits: Limits) -> None:
        self.session, self.signature, self.limits = session, signature, limits
        self.run: Any = fast_run(session)


class _MethodNotAllowed(Exception):
    def __init__(self, allow: str):
        self.allow = allow


def _not_ready(mv: ModelVersion) -> InferenceError:
    detail = f": {mv.reason}" if mv.reason else ""
    return InferenceError(503, f"model {mv.model!r} version {mv.version!r} is {mv.state}{detail}")


# Path -> (route, model, version). Routes: live, ready, server, metrics, model_metadata,
# model_ready, infer; anything else raises a 404.
def _route(path: str) -> tuple[str, str, str | None]:
    if path == "/metrics":
        return "metrics", "", None
    parts = path.split("/")
    if len(parts) < 2 or parts[0] != "" or parts[1] != "v2":
        raise InferenceError(404, f"no route {path[:MAX_PATH_CHARS]}")
    rest = parts[2:]
    n = len(rest)
    if n == 0:
        return "server", "", None
    if rest[0] == "health" and n == 2 and rest[1] in ("live", "ready"):
        return rest[1], "", None
    if rest[0] == "models" and n >= 2 and rest[1]:
        model, rest = rest[1], rest[2:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            version, rest = rest[1], rest[2:]
        if not rest:
            return "model_metadata", model, version
        if len(rest) == 1 and rest[0] in ("ready", "infer"):
            return ("model_ready" if rest[0] == "ready" else "infer"), model, version
    raise InferenceError(404, f"no route {path[:MAX_PATH_CHARS]}")
