"""Small deterministic ONNX models shared by the inference server's tests and its benchmark.

``mlp_model(seed)``: ``features`` FP32 [batch, 64] -> Gemm 128 -> Relu -> Gemm 64 -> Relu ->
Gemm 1 -> ``score`` FP32 [batch, 1], weights from a seeded generator; ``mlp_reference``
computes the same in numpy. Bytes are identical across runs with the same onnx version.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 3)]


def onnx_model(
    nodes: Sequence[NodeProto],
    inputs: Sequence[ValueInfoProto],
    outputs: Sequence[ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    name: str = "model",
) -> bytes:
    """A checked model (opset 21, IR 10) from its graph parts, serialised."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgefleet-tests")
    model.ir_version = 10
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def mlp_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [64, 128, 64, 1]
    return [
        (
            (rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32),
            (rng.standard_normal(o) * 0.1).astype(np.float32),
        )
        for i, o in itertools.pairwise(sizes)
    ]


def mlp_model(seed: int = 0, batch: int | str = "batch") -> bytes:
    """The 64 -> 128 -> 64 -> 1 MLP (FP32); ``batch`` names a dynamic batch dimension or fixes it."""
    nodes: list[NodeProto] = []
    inits: list[onnx.TensorProto] = []
    last = "features"
    for i, (w, b) in enumerate(mlp_weights(seed)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "score" if i == 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [f"g{i}" if i < 2 else out]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        last = out
    return onnx_model(
        nodes,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch, 1])],
        inits,
        "mlp",
    )


def mlp_reference(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """What ``mlp_model(seed)`` computes, in numpy."""
    x = features.astype(np.float32)
    layers = mlp_weights(seed)
    for i, (w, b) in enumerate(layers):
        x = x @ w + b
        if i < len(layers) - 1:
            x = np.maximum(x, 0)
    return x
