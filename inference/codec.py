"""Pure translation between v2 JSON bodies and numpy tensors (no I/O, no model runtime).

:func:`decode_infer_request` turns a request body into named numpy arrays checked against a
model's :class:`Signature`; anything wrong with the body raises :class:`DecodeError` and nothing
else. :func:`encode_infer_response` writes the response body.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import numpy as np
import orjson

from inference.errors import DecodeError, TooLarge

# Open Inference Protocol v2 datatype -> numpy dtype, for every datatype the server accepts.
NUMPY_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES = tuple(NUMPY_DTYPES)

# onnxruntime tensor type -> v2 datatype; a model using any other type cannot be served.
ORT_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

# Which numpy kinds a JSON array may decode to for each datatype: JSON numbers become 'i'/'u'
# (integers) or 'f', true/false become 'b'. Numeric tensors take true/false as 1/0 (numpy
# mixes them into numbers anyway) and integers for floats, but a float is never truncated into
# an integer tensor; BOOL takes only true/false.
_ACCEPTED_KINDS: dict[str, str] = {
    **{dt: "biu" for dt in DATATYPES if "INT" in dt},
    "FP16": "biuf",
    "FP32": "biuf",
    "FP64": "biuf",
    "BOOL": "b",
}
_KIND_NAMES = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}
MAX_DIM = 2**31 - 1
_FLOAT64 = NUMPY_DTYPES["FP64"]
_FLOAT_TYPES = frozenset(("FP16", "FP32", "FP64"))

# A float too large for the datatype (1e300 as FP32) becomes inf, as in any float cast; numpy
# warns about it on stderr. Filtering the warning costs nothing per request, unlike np.errstate.
warnings.filterwarnings("ignore", message="overflow encountered in cast", category=RuntimeWarning)
DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: its name, v2 datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of one model version."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    input_map: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_map: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)
    output_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_map", {t.name: t for t in self.inputs})
        object.__setattr__(self, "output_map", {t.name: t for t in self.outputs})
        object.__setattr__(self, "output_names", tuple(t.name for t in self.outputs))


class InferRequest(NamedTuple):
    """A decoded request: the feed for the runtime, the outputs to return, the id to echo."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    id: str | None = None


def dumps(document: Any) -> bytes:
    """JSON-encode a response document (numpy arrays are written natively)."""
    return orjson.dumps(document, option=DUMPS_OPTIONS)


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def decode_infer_request(
    body: bytes | bytearray, signature: Signature, max_elements: int | None = None
) -> InferRequest:
    """Decode and check a v2 inference request body against ``signature``.

    Accepts ``data`` flat in row-major order or nested to exactly ``shape``. Raises
    :class:`DecodeError` for malformed JSON, unknown/missing/duplicate inputs, a datatype other
    than the model's, a shape the model cannot take, data that does not fill the shape or holds
    values of the wrong JSON type or out of the datatype's range, and unknown requested outputs;
    :class:`TooLarge` when the shapes declare more than ``max_elements`` elements in all.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("", f"body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise DecodeError("", "body must be a JSON object with an 'inputs' array")
    request_id = doc.get("id")
    if request_id is not None and type(request_id) is not str:
        raise DecodeError("id", "must be a string")
    _check_parameters(doc, "parameters")

    raw_inputs = doc.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise DecodeError("inputs", "must be a non-empty array of tensors")
    input_map = signature.input_map
    feed: dict[str, np.ndarray] = {}
    budget = math.inf if max_elements is None else max_elements
    for index, tensor in enumerate(raw_inputs):
        if type(tensor) is not dict:
            raise DecodeError(f"inputs[{index}]", "must be an object with name, shape, datatype and data")
        name = tensor.get("name")
        if type(name) is not str:
            raise DecodeError(f"inputs[{index}].name", "must be a string")
        spec = input_map.get(name)
        if spec is None:
            raise DecodeError(
                f"inputs[{index}].name", f"the model has no input {name!r} (inputs: {', '.join(input_map)})"
            )
        if name in feed:
            raise DecodeError(f"inputs[{index}].name", f"input {name!r} is given more than once")
        params = tensor.get("parameters")
        if params is not None and type(params) is not dict:
            raise DecodeError(f"inputs[{index}].parameters", "must be an object")
        array = feed[name] = _decode_tensor(tensor, spec, index, budget, max_elements)
        budget -= array.size
    if len(feed) != len(input_map):
        missing = [n for n in input_map if n not in feed]
        raise DecodeError("inputs", f"missing input(s): {', '.join(missing)}")
    outputs = doc.get("outputs")
    if outputs is None or outputs == []:
        return InferRequest(feed, signature.output_names, request_id)
    return InferRequest(feed, _decode_outputs(outputs, signature), request_id)


def encode_infer_response(
    model: str, version: str, request_id: str | None, outputs: Sequence[TensorSpec], arrays: list[np.ndarray]
) -> bytes:
    """The v2 response body for ``arrays`` computed for ``outputs``."""
    tensors = []
    for spec, array in zip(outputs, arrays, strict=True):
        flat = array.ravel()
        tensors.append(
            {
                "name": spec.name,
                "datatype": spec.datatype,
                "shape": array.shape,
                # orjson writes numeric arrays itself; strings come back from onnxruntime as objects.
                "data": flat.tolist() if flat.dtype.kind == "O" else flat,
            }
        )
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        response["id"] = request_id
    return dumps(response)


def _check_parameters(container: dict[str, Any], where: str) -> None:
    params = container.get("parameters")
    if params is not None and type(params) is not dict:
        raise DecodeError(where, "must be an object")


def _decode_shape(value: Any, spec: TensorSpec, where: str) -> tuple[int, ...]:
    dims = spec.shape
    if type(value) is list and len(value) == len(dims):
        for d, m in zip(value, dims, strict=True):
            if type(d) is not int or d < 0 or d > MAX_DIM or (m != d and m != -1):
                break
        else:
            return tuple(value)
    _shape_error(value, spec, where)


def _shape_error(value: Any, spec: TensorSpec, where: str) -> NoReturn:
    if type(value) is not list or any(type(d) is not int or d < 0 or d > MAX_DIM for d in value):
        raise DecodeError(f"{where}.shape", "must be an array of non-negative integers")
    raise DecodeError(
        f"{where}.shape", f"{value} does not fit input {spec.name!r} of shape {list(spec.shape)} (-1 = any size)"
    )


def _decode_tensor(
    tensor: dict[str, Any], spec: TensorSpec, index: int, budget: float, max_elements: int | None
) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        where = f"inputs[{index}].datatype"
        if type(datatype) is not str or datatype not in NUMPY_DTYPES:
            raise DecodeError(where, f"must be one of {', '.join(DATATYPES)}")
        raise DecodeError(where, f"input {spec.name!r} takes {spec.datatype}, not {datatype}")
    where = f"inputs[{index}]"
    shape = _decode_shape(tensor.get("shape"), spec, where)
    size = math.prod(shape)
    if size > budget:
        raise TooLarge(
            f"{where}.shape: {list(shape)} is {size} elements; a request to this model "
            f"may carry at most {max_elements} in all"
        )
    data = tensor.get("data")
    if type(data) is not list:
        raise DecodeError(f"{where}.data", "must be an array (flat in row-major order, or nested)")
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        array = _as_array(data, where, dtype=object)
        if not all(type(v) is str for v in array.flat):
            raise DecodeError(f"{where}.data", "BYTES takes JSON strings only")
    else:
        try:  # _as_array(data, where), inlined: this runs for every tensor of every request
            converted: np.ndarray | None = np.asarray(data)
        except (ValueError, TypeError, OverflowError, RecursionError):
            converted = None
        if converted is None:
            raise DecodeError(f"{where}.data", "must be a rectangular array of values")
        array = converted
    if array.shape != shape and not (array.ndim == 1 and array.size == size):
        raise DecodeError(
            f"{where}.data",
            f"has {array.size} value(s) in shape {list(array.shape)}; "
            f"shape {list(shape)} needs {size}, flat or nested to that shape",
        )
    if size == 0:
        return np.empty(shape, dtype=dtype)
    found = array.dtype
    if found is dtype or datatype == "BYTES":
        pass  # values of the tensor's own type (JSON integers as INT64, numbers as FP64, true/false as BOOL)
    elif found is _FLOAT64 and datatype in _FLOAT_TYPES:
        array = array.astype(dtype)  # JSON numbers into a float tensor: all _cast would do
    else:
        array = _cast(array, data, datatype, dtype, where)
    return array if array.shape == shape else array.reshape(shape)


def _as_array(data: list[Any], where: str, dtype: Any = None) -> np.ndarray:
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError, OverflowError, RecursionError):
        array = None
    # An object array from nested lists is ragged (or holds lists where values belong).
    if array is None or (dtype is object and any(type(v) is list for v in array.flat)):
        raise DecodeError(f"{where}.data", "must be a rectangular array of values")
    return array


def _cast(array: np.ndarray, data: list[Any], datatype: str, dtype: np.dtype, where: str) -> np.ndarray:
    kind = array.dtype.kind
    if kind in "fO" and dtype.kind in "iu":
        # numpy turns integers beyond int64 mixed with others into floats (or objects): look
        # at the JSON values themselves before calling them non-integers.
        exact = _as_array(data, where, dtype=object)
        if all(type(v) is int or type(v) is bool for v in exact.flat):
            array, kind = exact, "i"
    accepted = _ACCEPTED_KINDS[datatype]
    if kind not in accepted:
        wanted = " or ".join(sorted({_KIND_NAMES[k] for k in accepted}))
        raise DecodeError(
            f"{where}.data",
            f"{datatype} takes JSON {wanted} only, got {_KIND_NAMES.get(kind, 'strings, nulls or mixed values')}",
        )
    if kind in "iu" and dtype.kind in "iu" and array.dtype != dtype:
        info = np.iinfo(dtype)
        if int(array.min()) < info.min or int(array.max()) > info.max:
            raise DecodeError(f"{where}.data", f"values outside the {datatype} range [{info.min}, {info.max}]")
    return array if array.dtype == dtype else array.astype(dtype)


def _decode_outputs(value: Any, signature: Signature) -> tuple[str, ...]:
    if type(value) is not list:
        raise DecodeError("outputs", 'must be an array of {"name": ...} objects')
    names: list[str] = []
    for index, item in enumerate(value):
        where = f"outputs[{index}]"
        if type(item) is not dict or type(item.get("name")) is not str:
            raise DecodeError(where, "must be an object with a string 'name'")
        _check_parameters(item, f"{where}.parameters")
        name = item["name"]
        if name not in signature.output_map:
            raise DecodeError(
                f"{where}.name", f"the model has no output {name!r} (outputs: {', '.join(signature.output_names)})"
            )
        if name not in names:
            names.append(name)
    return tuple(names)
