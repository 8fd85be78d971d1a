"""onnxruntime sessions tuned for small edge CPUs, their v2 signature and their warm-up run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

from inference.codec import NUMPY_DTYPES, ORT_DATATYPES, Signature, TensorSpec

# What onnxruntime raises at run time for an input the graph cannot take after the server's own
# checks passed (an index out of range: INVALID_ARGUMENT, a value-dependent reshape: FAIL): the
# client's fault, so HTTP 400.
INPUT_ERRORS = (InvalidArgument, Fail)


@dataclass(frozen=True)
class SessionTuning:
    """Thread counts of one model's session (``config.yaml``: intra_op_threads, inter_op_threads)."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1


def session_options(tuning: SessionTuning = SessionTuning()) -> ort.SessionOptions:
    """Session options for latency on a small CPU shared with other pods; one worker process per core.

    - ``intra_op_num_threads = 1``: each operator runs on the calling thread. Small models
      (a few hundred kFLOP) finish faster than a thread pool can hand out work, and a pool of
      spinning threads per worker would fight the other workers for the same few cores.
      Throughput comes from ``--workers N`` processes instead.
    - ``inter_op_num_threads = 1`` and ``execution_mode = ORT_SEQUENTIAL``: nodes run one after
      another on the same thread; parallel branches would need a second pool for no gain here.
    - ``graph_optimization_level = ORT_ENABLE_ALL``: constant folding, node fusions (Gemm+Relu,
      ...) and layout optimisations, applied once at load.
    - ``session.intra_op.allow_spinning = 0`` / ``session.inter_op.allow_spinning = 0``: if a model
      configures more threads, idle pool threads sleep rather than burn a shared core.
    - ``enable_cpu_mem_arena`` and ``enable_mem_pattern`` stay on (the defaults): buffers are
      reused across runs instead of allocated per request.
    - ``log_severity_level = 4``: the runtime prints nothing but fatal errors; its errors reach
      the server as exceptions, and the server logs those as JSON.
    - No ``optimized_model_filepath``: nothing is written, as the root filesystem is read-only.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = tuning.intra_op_threads
    options.inter_op_num_threads = tuning.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 4
    return options


def create_session(model: bytes, tuning: SessionTuning = SessionTuning()) -> ort.InferenceSession:
    """A CPU session for the serialized model ``model`` (the bytes that were verified)."""
    ort.set_default_logger_severity(4)  # as log_severity_level, for messages outside a session
    return ort.InferenceSession(model, sess_options=session_options(tuning), providers=["CPUExecutionProvider"])


def fast_run(session: Any) -> Callable[[Sequence[str], dict[str, np.ndarray], Any], list[np.ndarray]]:
    """``session.run`` as ``run(output_names, feed, run_options)``, without the Python wrapper of
    :class:`onnxruntime.InferenceSession` when the session has its usual native one.

    The wrapper checks that the feed names every input (the server's decoder has done so), that
    OrtValues are not moved between devices (the server feeds numpy arrays), fills in the output
    names (the server always gives them), and retries once with fallback providers on
    ``EPFail`` (the server runs the CPU provider only): about 1.5 us of a 10 us model run.
    """
    native = getattr(session, "_sess", None)
    if isinstance(session, ort.InferenceSession) and native is not None and callable(getattr(native, "run", None)):
        return native.run  # type: ignore[no-any-return]
    return session.run  # type: ignore[no-any-return]


def signature_of(session: ort.InferenceSession) -> Signature:
    """The model's inputs and outputs as v2 tensors; symbolic or unknown dimensions become -1.

    Raises ``ValueError`` naming the first tensor whose type has no v2 datatype (maps,
    sequences, bfloat16, ...).
    """

    def spec(arg: ort.NodeArg) -> TensorSpec:
        datatype = ORT_DATATYPES.get(arg.type)
        if datatype is None:
            raise ValueError(
                f"tensor {arg.name!r} has type {arg.type}, which the v2 protocol "
                f"cannot carry (supported: {', '.join(sorted(ORT_DATATYPES))})"
            )
        shape = arg.shape if isinstance(arg.shape, list) else []
        return TensorSpec(arg.name, datatype, tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape))

    return Signature(tuple(spec(a) for a in session.get_inputs()), tuple(spec(a) for a in session.get_outputs()))


def warm_up_feed(signature: Signature) -> dict[str, np.ndarray]:
    """A feed of zeros (empty strings for BYTES), every dynamic dimension set to 1."""
    feed = {}
    for spec in signature.inputs:
        shape = tuple(1 if d == -1 else d for d in spec.shape)
        if spec.datatype == "BYTES":
            feed[spec.name] = np.full(shape, "", dtype=object)
        else:
            feed[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
    return feed
