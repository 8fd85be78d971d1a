"""How large a request each model version accepts, derived from its input signature (pure).

A version's inputs with fixed shapes need exactly their element count; inputs with a dynamic
dimension (``-1``) share ``max_elements`` among them. The body limit is that many elements at a
generous JSON width for their datatype, plus room for names and parameters, and never more than
``cap`` (unless an explicit ``--max-body-bytes`` overrides it).

A body is checked against its version's limits before it is decoded: its length, then the number
of JSON values it can hold (commas outside strings), so that a body of millions of numbers is
refused before it becomes millions of Python objects.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from inference.codec import Signature

DEFAULT_MAX_ELEMENTS = 1 << 20
BODY_CAP = 32 * 1024 * 1024  # the derived body limit never exceeds this
NO_MODEL_BODY = 64 * 1024  # routes that take no tensors (health, metadata, unknown models)
HEADROOM = 64 * 1024  # names, ids, parameters, whitespace
VALUE_HEADROOM = 4096  # JSON values that are not tensor elements (keys, parameters...)

# Most bytes one element takes in a reasonable JSON body, separator and some indentation
# included: any float64 written in full (-2.2250738585072014e-308), the widest integer of each
# type; BYTES gets room for short texts.
JSON_WIDTH = {
    "BOOL": 8,
    "UINT8": 8,
    "INT8": 8,
    "UINT16": 10,
    "INT16": 10,
    "UINT32": 14,
    "INT32": 15,
    "UINT64": 24,
    "INT64": 24,
    "FP16": 32,
    "FP32": 32,
    "FP64": 32,
    "BYTES": 256,
}
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one model version accepts: body bytes, tensor elements, JSON values."""

    body_bytes: int
    elements: int
    values: int


def limits_for(
    signature: Signature, max_elements: int = DEFAULT_MAX_ELEMENTS, cap: int = BODY_CAP, override: int | None = None
) -> Limits:
    """The limits of a version with ``signature``; ``override`` replaces the body limit."""
    elements = 0
    body = HEADROOM
    dynamic_width = 0
    for spec in signature.inputs:
        if -1 in spec.shape:
            dynamic_width = max(dynamic_width, JSON_WIDTH[spec.datatype])
        else:
            count = math.prod(spec.shape)
            elements += count
            body += count * JSON_WIDTH[spec.datatype]
    if dynamic_width:
        elements += max_elements
        body += max_elements * dynamic_width
    return Limits(override if override is not None else min(body, cap), elements, elements + VALUE_HEADROOM)


def json_values_over(body: bytes | bytearray, limit: int) -> int:
    """How many JSON values ``body`` may hold if that is more than ``limit``, else 0.

    A value is either the first in its array or object, which opens with ``[`` or ``{``, or
    follows a comma: commas and brackets together bound the values, and so the Python objects, a
    parser would build. Those inside strings do not count; strings are only looked at when the
    plain count is over the limit.
    """
    if len(body) < limit:  # each value takes a byte at least
        return 0
    count = _bound(body)
    if count <= limit:
        return 0
    count = _bound(_STRING.sub(b'""', body))
    return count if count > limit else 0


def _bound(body: bytes | bytearray) -> int:
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1
