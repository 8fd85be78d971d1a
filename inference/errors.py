"""The server's error types: each maps to one HTTP status and a message for the client."""

from __future__ import annotations


class InferenceError(Exception):
    """A request the server cannot serve; ``status`` is the HTTP status sent back as ``{"error": str}``."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


class DecodeError(InferenceError):
    """An inference request body that does not fit the protocol or the model's signature (HTTP 400).

    ``field`` is the JSON location of the problem (``inputs[0].shape``), or ``""`` for the body.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(400, f"{field}: {message}" if field else message)


class ConfigError(Exception):
    """A bad flag, environment variable or model configuration file, with what to do about it."""

    def __init__(self, source: str, message: str, fix: str):
        self.source = source
        self.fix = fix
        super().__init__(f"{source}: {message} (fix: {fix})")


class TooLarge(InferenceError):
    """A request larger than the server or the model accepts (HTTP 413)."""

    def __init__(self, message: str):
        super().__init__(413, message)
