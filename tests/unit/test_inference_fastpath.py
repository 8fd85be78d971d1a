"""The shortcuts of the inference hot path give exactly what the general path gives.

- the decoder's numeric fast path (values already of the tensor's dtype, or JSON numbers into a
  float tensor) against the decoder as it was before it (kept here as the reference);
- :func:`inference.runtime.fast_run` against ``InferenceSession.run``;
- the per-version plan :class:`inference.app.App` caches, when a version's session changes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference import codec
from inference.app import App
from inference.codec import DATATYPES, NUMPY_DTYPES, Signature, TensorSpec, decode_infer_request
from inference.errors import DecodeError, InferenceError, TooLarge
from inference.logs import RequestLog
from inference.metrics import Metrics
from inference.repository import Repository, load_version
from inference.runtime import INPUT_ERRORS, create_session, fast_run
from models.synthetic import mlp_model
from tests.unit.inference_fixtures import arith_model, write_version

# 1e300 into FP32 becomes inf, as the codec documents (it filters numpy's warning; pytest resets filters).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


def _reference_decode_tensor(
    tensor: dict[str, Any], spec: TensorSpec, index: int, budget: float, max_elements: int | None
) -> np.ndarray:
    """``codec._decode_tensor`` before its fast path: every numeric tensor goes through ``_cast``."""
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        where = f"inputs[{index}].datatype"
        if type(datatype) is not str or datatype not in NUMPY_DTYPES:
            raise DecodeError(where, f"must be one of {', '.join(DATATYPES)}")
        raise DecodeError(where, f"input {spec.name!r} takes {spec.datatype}, not {datatype}")
    where = f"inputs[{index}]"
    shape = codec._decode_shape(tensor.get("shape"), spec, where)
    size = math.prod(shape)
    if size > budget:
        raise TooLarge(
            f"{where}.shape: {list(shape)} is {size} elements; a request to this model "
            f"may carry at most {max_elements} in all"
        )
    data = tensor.get("data")
    if type(data) is not list:
        raise DecodeError(f"{where}.data", "must be an array (flat in row-major order, or nested)")
    if datatype == "BYTES":
        array = codec._as_array(data, where, dtype=object)
        if not all(type(v) is str for v in array.flat):
            raise DecodeError(f"{where}.data", "BYTES takes JSON strings only")
    else:
        array = codec._as_array(data, where)
    if array.shape != shape and not (array.ndim == 1 and array.size == size):
        raise DecodeError(
            f"{where}.data",
            f"has {array.size} value(s) in shape {list(array.shape)}; "
            f"shape {list(shape)} needs {size}, flat or nested to that shape",
        )
    dtype = NUMPY_DTYPES[datatype]
    if size == 0:
        return np.empty(shape, dtype=dtype)
    if datatype != "BYTES":
        array = codec._cast(array, data, datatype, dtype, where)
    return array if array.shape == shape else array.reshape(shape)


def _outcome(raw: bytes, signature: Signature, max_elements: int | None) -> tuple:
    """What decoding gives, in a comparable form: the error, or each array's dtype, shape and bytes."""
    try:
        request = decode_infer_request(raw, signature, max_elements)
    except InferenceError as exc:
        return ("error", type(exc).__name__, exc.status, exc.message)
    arrays = {
        name: (a.dtype.str, a.shape, a.tolist() if a.dtype.kind == "O" else a.tobytes(), a.flags.c_contiguous)
        for name, a in request.inputs.items()
    }
    return ("ok", request.id, request.outputs, arrays)


def assert_same_as_reference(raw: bytes, signature: Signature, max_elements: int | None = None) -> tuple:
    fast = _outcome(raw, signature, max_elements)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "_decode_tensor", _reference_decode_tensor)
        general = _outcome(raw, signature, max_elements)
    assert fast == general
    return fast


def sig(*inputs: tuple[str, str, tuple[int, ...]]) -> Signature:
    return Signature(tuple(TensorSpec(*i) for i in inputs), (TensorSpec("out", "FP32", (-1,)),))


MLP = sig(("features", "FP32", (-1, 4)))
FIXED = sig(("features", "FP32", (1, 4)))
TWO = sig(("x", "FP32", (-1,)), ("y", "INT64", (-1,)))


def doc(*tensors: dict, **extra: Any) -> bytes:
    # json (not orjson): integers beyond 64 bits and NaN reach the decoder too.
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def t(name: str = "features", shape: Any = (1, 4), datatype: Any = "FP32", data: Any = (1.5, 2, 3, 4)) -> dict:
    return {
        "name": name,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "datatype": datatype,
        "data": data,
    }


EDGE_CASES = {
    "floats": (doc(t(data=[0.5, -1.25, 3.0, 1e300])), MLP, None),
    "floats nested": (doc(t(shape=(2, 4), data=[[0.5] * 4, [1.5] * 4])), MLP, None),
    "integers into FP32": (doc(t(data=[1, 2, 3, 4])), MLP, None),
    "true/false into FP32": (doc(t(data=[True, False, True, False])), MLP, None),
    "integers and floats mixed": (doc(t(data=[1, 2.5, True, 4])), MLP, None),
    "huge integer into FP32": (doc(t(data=[2**70, 1, 2, 3])), MLP, None),
    "null into FP32": (doc(t(data=[1.0, None, 3.0, 4.0])), MLP, None),
    "string into FP32": (doc(t(data=[1.0, "2.0", 3.0, 4.0])), MLP, None),
    "too few values": (doc(t(data=[1.0, 2.0, 3.0])), MLP, None),
    "too many values": (doc(t(data=[1.0] * 5)), MLP, None),
    "nested to the wrong shape": (doc(t(shape=(2, 4), data=[[1.0] * 2] * 4)), MLP, None),
    "ragged": (doc(t(shape=(2, 4), data=[[1.0] * 4, [1.0] * 3])), MLP, None),
    "empty data, empty shape": (doc(t(shape=(0, 4), data=[])), MLP, None),
    "empty data, non-empty shape": (doc(t(data=[])), MLP, None),
    "empty nested data": (doc(t(shape=(0, 4), data=[[]])), MLP, None),
    "wrong datatype": (doc(t(datatype="FP64")), MLP, None),
    "unknown datatype": (doc(t(datatype="FLOAT")), MLP, None),
    "wrong shape for a fixed input": (doc(t(shape=(2, 4), data=[1.0] * 8)), FIXED, None),
    "fixed input": (doc(t()), FIXED, None),
    "over the element limit": (doc(t(shape=(2, 4), data=[1.0] * 8)), MLP, 4),
    "at the element limit": (doc(t()), MLP, 4),
    "two inputs": (doc(t("x", (2,), "FP32", [1.0, 2]), t("y", (2,), "INT64", [3, -4])), TWO, None),
    "two inputs over the limit together": (doc(t("x", (2,), "FP32", [1.0, 2]), t("y", (2,), "INT64", [3, 4])), TWO, 3),
    "two inputs, one missing": (doc(t("x", (2,), "FP32", [1.0, 2])), TWO, None),
    "two inputs, float into INT64": (doc(t("x", (1,), "FP32", [1.0]), t("y", (1,), "INT64", [1.5])), TWO, None),
    "INT64 beyond its range": (doc(t("x", (1,), "FP32", [1.0]), t("y", (1,), "INT64", [2**63])), TWO, None),
    "duplicate input": (doc(t("x", (1,), "FP32", [1.0]), t("x", (1,), "FP32", [1.0])), TWO, None),
    "with id and outputs": (doc(t(), id="r1", outputs=[{"name": "out"}]), MLP, None),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_decode_as_the_general_path_does(case):
    raw, signature, max_elements = EDGE_CASES[case]
    assert_same_as_reference(raw, signature, max_elements)


def test_the_fast_path_is_taken_and_gives_the_model_dtype():
    # A float tensor from JSON numbers, an INT64 one from JSON integers: the common cases.
    kind, _, _, arrays = assert_same_as_reference(
        doc(t("x", (2,), "FP32", [1.0, 2.5]), t("y", (2,), "INT64", [3, -4])), TWO
    )
    assert kind == "ok" and arrays["x"][0] == "<f4" and arrays["y"][0] == "<i8"


VALUES = st.integers(-300, 2**64) | st.floats() | st.booleans() | st.text(max_size=2) | st.none()
DATA = st.lists(VALUES, max_size=6) | st.lists(st.lists(VALUES, min_size=2, max_size=2), max_size=3)
SIGNATURES = st.builds(
    lambda datatype, dims: sig(("x", datatype, dims)),
    st.sampled_from(DATATYPES),
    st.sampled_from([(-1,), (-1, 2), (2,), (3, 2)]),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, Signature]:
    signature = draw(SIGNATURES)
    spec = signature.inputs[0]
    data = draw(DATA | st.lists(st.sampled_from(codec_values(spec.datatype)), max_size=6))
    if draw(st.booleans()):  # the shape the data has, most of the time
        array_shape = [len(data)] if not data or not isinstance(data[0], list) else [len(data), 2]
        shape: Any = array_shape if len(array_shape) == len(spec.shape) else [len(data) // 2, 2]
    else:
        shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=2))
    datatype = draw(st.sampled_from([spec.datatype, spec.datatype, "FP32", "INT64"]))
    return doc(t("x", shape, datatype, data)), signature


def codec_values(datatype: str) -> list:
    """JSON values of the datatype's own kind, and some at the edges of its range."""
    if datatype == "BYTES":
        return ["", "a", "é"]
    if datatype == "BOOL":
        return [True, False]
    if datatype.startswith("FP"):
        return [0.0, -1.5, 1e300, 65504.0, 3]
    info = np.iinfo(NUMPY_DTYPES[datatype])
    return [int(info.min), int(info.max), 0, 1, int(info.max) + 1, int(info.min) - 1]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(), max_elements=st.none() | st.integers(0, 8))
def test_fuzz_decode_as_the_general_path_does(request, max_elements):
    raw, signature = request
    assert_same_as_reference(raw, signature, max_elements)


# --- fast_run --------------------------------------------------------------------------------


def test_fast_run_computes_what_session_run_computes():
    session = create_session(mlp_model(0))
    run = fast_run(session)
    assert run != session.run  # the native run, not the Python wrapper
    feed = {"features": np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64)}
    (expected,) = session.run(["score"], feed)
    (got,) = run(("score",), feed, None)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_fast_run_raises_what_session_run_raises():
    session = create_session(arith_model())
    feed = {"x": np.array([1, 2], dtype=np.int64), "y": np.array([1, 2, 3], dtype=np.int64)}
    with pytest.raises(INPUT_ERRORS) as wrapped:
        session.run(["sum"], feed)
    with pytest.raises(INPUT_ERRORS) as native:
        fast_run(session)(("sum",), feed, None)
    assert type(native.value) is type(wrapped.value) and str(native.value) == str(wrapped.value)


def test_fast_run_of_another_object_is_its_run():
    class Stub:
        def run(self, *args):
            return ["ran", args]

    stub = Stub()
    assert fast_run(stub)(("a",), {}, None) == ["ran", (("a",), {}, None)]


# --- the plan App keeps per version ------------------------------------------------------------


def test_a_version_that_changes_session_is_served_by_the_new_one(tmp_path):
    write_version(tmp_path, "m", "1", mlp_model(0))
    repo = Repository()
    repo.load_directory(tmp_path, {})
    app = App(repo, Metrics(), RequestLog(0.0))
    body = orjson.dumps({"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]})

    def score() -> tuple[int, Any]:
        response = app.handle("POST", "/v2/models/m/infer", body)
        document = orjson.loads(response.body)
        return response.status, document["outputs"][0]["data"] if response.status == 200 else document

    status, first = score()
    assert status == 200 and score() == (200, first)
    write_version(tmp_path, "m", "1", mlp_model(1))  # the same version, reloaded with other weights
    mv = repo.get("m", "1")
    load_version(mv, tmp_path / "m" / "1")
    status, second = score()
    assert status == 200 and second != first

    class Exploding:
        def run(self, *_):
            raise MemoryError("secret internals")

    mv.session = Exploding()
    assert score() == (500, {"error": "internal server error"})
