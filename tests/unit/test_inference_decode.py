"""The v2 request decoder and response encoder, as pure functions (no server)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inference.codec import DATATYPES, NUMPY_DTYPES, Signature, TensorSpec, decode_infer_request, encode_infer_response
from inference.errors import DecodeError

MLP = Signature((TensorSpec("features", "FP32", (-1, 4)),), (TensorSpec("score", "FP32", (-1, 1)),))
ECHO = Signature(
    tuple(TensorSpec(f"in_{d.lower()}", d, (-1,)) for d in DATATYPES),
    tuple(TensorSpec(f"out_{d.lower()}", d, (-1,)) for d in DATATYPES),
)
TWO_OUT = Signature(
    (TensorSpec("x", "INT64", (-1,)),), (TensorSpec("sum", "INT64", (-1,)), TensorSpec("greater", "BOOL", (-1,)))
)


def body(*inputs, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(name="features", shape=(1, 4), datatype="FP32", data=(1.0, 2.0, 3.0, 4.0), **extra):
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": list(data), **extra}


def test_flat_and_nested_data_decode_to_the_same_array():
    flat = decode_infer_request(body(tensor(shape=(2, 4), data=range(8))), MLP)
    nested = decode_infer_request(body(tensor(shape=(2, 4), data=[[0, 1, 2, 3], [4, 5, 6, 7]])), MLP)
    for request in (flat, nested):
        array = request.inputs["features"]
        assert array.dtype == np.float32 and array.shape == (2, 4)
        np.testing.assert_array_equal(array, np.arange(8, dtype=np.float32).reshape(2, 4))
    assert flat.outputs == ("score",) and flat.id is None


def test_id_and_parameters_are_accepted():
    request = decode_infer_request(body(tensor(parameters={"a": 1}), id="req-7", parameters={"p": True}), MLP)
    assert request.id == "req-7"


@pytest.mark.parametrize(
    "datatype,data,expected",
    [
        ("BOOL", [True, False], np.array([True, False])),
        ("UINT8", [0, 255], np.array([0, 255], np.uint8)),
        ("UINT16", [0, 65535], np.array([0, 65535], np.uint16)),
        ("UINT32", [0, 2**32 - 1], np.array([0, 2**32 - 1], np.uint32)),
        ("UINT64", [0, 2**64 - 1], np.array([0, 2**64 - 1], np.uint64)),
        ("INT8", [-128, 127], np.array([-128, 127], np.int8)),
        ("INT16", [-32768, 32767], np.array([-32768, 32767], np.int16)),
        ("INT32", [-(2**31), 2**31 - 1], np.array([-(2**31), 2**31 - 1], np.int32)),
        ("INT64", [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], np.int64)),
        ("FP16", [0.5, 2], np.array([0.5, 2], np.float16)),
        ("FP32", [0.25, 1], np.array([0.25, 1], np.float32)),
        ("FP64", [1e300, -3], np.array([1e300, -3], np.float64)),
        ("BYTES", ["ok", "défaut"], np.array(["ok", "défaut"], dtype=object)),
    ],
)
def test_every_datatype_decodes_to_its_numpy_dtype(datatype, data, expected):
    name = f"in_{datatype.lower()}"
    others = [tensor(f"in_{d.lower()}", (0,), d, []) for d in DATATYPES if d != datatype]
    request = decode_infer_request(body(tensor(name, (2,), datatype, data), *others), ECHO)
    array = request.inputs[name]
    assert array.dtype == NUMPY_DTYPES[datatype]
    assert array.tolist() == expected.tolist()
    assert all(request.inputs[f"in_{d.lower()}"].shape == (0,) for d in DATATYPES if d != datatype)


@pytest.mark.parametrize(
    "document,field,fragment",
    [
        (b"{not json", "", "not valid JSON"),
        (b"[1, 2]", "", "JSON object"),
        (b"{}", "inputs", "non-empty array"),
        (body(), "inputs", "non-empty array"),
        (body("x"), "inputs[0]", "must be an object"),
        (body(tensor(name=7)), "inputs[0].name", "must be a string"),
        (body(tensor(name="nope")), "inputs[0].name", "no input 'nope'"),
        (body(tensor(), tensor()), "inputs[1].name", "more than once"),
        (body(tensor(datatype="FP64")), "inputs[0].datatype", "takes FP32, not FP64"),
        (body(tensor(datatype="FLOAT")), "inputs[0].datatype", "must be one of"),
        (body(tensor(shape=(4,))), "inputs[0].shape", "does not fit"),
        (body(tensor(shape=(1, 5), data=range(5))), "inputs[0].shape", "does not fit"),
        (body(tensor(shape=(1, -4))), "inputs[0].shape", "non-negative integers"),
        (body(tensor(shape=(1.0, 4))), "inputs[0].shape", "non-negative integers"),
        (body(tensor(shape=(True, 4))), "inputs[0].shape", "non-negative integers"),
        (body(tensor(shape=(2**40, 4))), "inputs[0].shape", "non-negative integers"),
        (body(tensor(shape=(2, 4))), "inputs[0].data", "needs 8"),
        (body(tensor(shape=(2, 4), data=[[1, 2, 3, 4], [5, 6, 7]])), "inputs[0].data", "rectangular"),
        (body(tensor(shape=(2, 4), data=[[1, 2], [3, 4], [5, 6], [7, 8]])), "inputs[0].data", "needs 8"),
        (body(tensor(data=["1", "2", "3", "4"])), "inputs[0].data", "FP32 takes JSON"),
        (body(tensor(data=[1, None, 3, 4])), "inputs[0].data", "FP32 takes JSON"),
        (body({**tensor(), "data": 3}), "inputs[0].data", "must be an array"),
        (body(tensor(parameters=[1])), "inputs[0].parameters", "must be an object"),
        (body(tensor(), id=5), "id", "must be a string"),
        (body(tensor(), parameters="x"), "parameters", "must be an object"),
        (body(tensor(), outputs="score"), "outputs", "must be an array"),
        (body(tensor(), outputs=[{"name": "nope"}]), "outputs[0].name", "no output 'nope'"),
        (body(tensor(), outputs=[{"id": "score"}]), "outputs[0]", "string 'name'"),
    ],
)
def test_bad_requests_raise_decode_error_naming_the_field(document, field, fragment):
    with pytest.raises(DecodeError) as err:
        decode_infer_request(document, MLP)
    assert err.value.status == 400 and err.value.field == field
    assert fragment in err.value.message


def test_missing_input_is_named():
    sig = Signature((TensorSpec("x", "INT64", (-1,)), TensorSpec("y", "INT64", (-1,))), ())
    with pytest.raises(DecodeError, match=r"missing input.*y"):
        decode_infer_request(body(tensor("x", (1,), "INT64", [1])), sig)


@pytest.mark.parametrize(
    "datatype,data,fragment",
    [
        ("UINT8", [256], "outside the UINT8 range"),
        ("UINT8", [-1], "outside the UINT8 range"),
        ("INT8", [200], "outside the INT8 range"),
        ("INT64", [2**63], "outside the INT64 range"),
        ("INT32", [1.5], "INT32 takes JSON"),
        ("BOOL", [1], "BOOL takes JSON true/false"),
        ("BYTES", [1], "BYTES takes JSON strings"),
        ("BYTES", [["a"], ["b", "c"]], "rectangular"),
    ],
)
def test_values_are_checked_against_the_datatype(datatype, data, fragment):
    name = f"in_{datatype.lower()}"
    others = [tensor(f"in_{d.lower()}", (0,), d, []) for d in DATATYPES if d != datatype]
    with pytest.raises(DecodeError, match=fragment):
        decode_infer_request(body(tensor(name, (len(data),), datatype, data), *others), ECHO)


def test_requested_outputs_keep_request_order_without_duplicates():
    request = decode_infer_request(
        body(tensor("x", (1,), "INT64", [1]), outputs=[{"name": "greater"}, {"name": "sum"}, {"name": "greater"}]),
        TWO_OUT,
    )
    assert request.outputs == ("greater", "sum")
    assert decode_infer_request(body(tensor("x", (1,), "INT64", [1]), outputs=[]), TWO_OUT).outputs == (
        "sum",
        "greater",
    )


def test_response_encodes_shape_datatype_and_flat_data():
    out = encode_infer_response(
        "m", "3", "id-1", list(TWO_OUT.outputs), [np.array([[1, 2], [3, 4]], np.int64), np.array([True, False])]
    )
    assert orjson.loads(out) == {
        "model_name": "m",
        "model_version": "3",
        "id": "id-1",
        "outputs": [
            {"name": "sum", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]},
            {"name": "greater", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        ],
    }


def test_response_writes_strings_and_non_finite_floats():
    specs = [TensorSpec("s", "BYTES", (-1,)), TensorSpec("f", "FP32", (-1,))]
    out = orjson.loads(
        encode_infer_response(
            "m", "1", None, specs, [np.array(["é", ""], dtype=object), np.array([np.nan, 1.5], np.float32)]
        )
    )
    assert "id" not in out
    assert out["outputs"][0]["data"] == ["é", ""] and out["outputs"][1]["data"] == [None, 1.5]


# --- fuzzing: any body gives a decoded request or a DecodeError, nothing else ----------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=30,
)
SHAPES = st.lists(st.integers(min_value=-2, max_value=6) | st.sampled_from([2**31, 1.0, True, "1"]), max_size=3)
NAMES = st.sampled_from([f"in_{d.lower()}" for d in DATATYPES] + ["features", "x", ""])
DATA = st.recursive(
    st.lists(st.integers(-300, 2**64) | st.floats() | st.booleans() | st.text(max_size=3) | st.none(), max_size=8),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=20,
)
TENSORS = st.fixed_dictionaries(
    {"name": NAMES, "shape": SHAPES, "datatype": st.sampled_from((*DATATYPES, "FLOAT", 3)), "data": DATA},
    optional={"parameters": JSON_VALUES},
)
REQUESTS = st.fixed_dictionaries(
    {"inputs": st.lists(TENSORS, max_size=4) | JSON_VALUES},
    optional={
        "id": JSON_VALUES,
        "outputs": st.lists(st.fixed_dictionaries({"name": NAMES}), max_size=3) | JSON_VALUES,
        "parameters": JSON_VALUES,
    },
)


def _decode_or_decode_error(raw: bytes, signature: Signature) -> None:
    try:
        request = decode_infer_request(raw, signature)
    except DecodeError as exc:
        assert exc.status == 400 and exc.message
    else:
        for spec in signature.inputs:
            array = request.inputs[spec.name]
            assert array.dtype == NUMPY_DTYPES[spec.datatype]
            assert len(array.shape) == len(spec.shape)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=REQUESTS, signature=st.sampled_from([MLP, ECHO, TWO_OUT]))
def test_fuzz_structured_requests(document, signature):
    # json (not orjson) so that integers beyond 64 bits and NaN reach the decoder too.
    _decode_or_decode_error(json.dumps(document).encode(), signature)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
def test_fuzz_arbitrary_bytes(raw):
    _decode_or_decode_error(raw, ECHO)


def test_deeply_nested_data_is_a_decode_error():
    data: list = [1.0]
    for _ in range(200):
        data = [data]
    _decode_or_decode_error(body(tensor(data=data)), MLP)
    with pytest.raises(DecodeError):
        decode_infer_request(b"[" * 5000 + b"]" * 5000, MLP)
