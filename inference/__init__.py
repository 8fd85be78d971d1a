"""Open Inference Protocol v2 (REST) server on onnxruntime, built for small edge CPUs.

``python -m inference --model-repository /models --port 8080`` serves every
``<model>/<version>/model.onnx`` below the repository; see ``inference/openapi.yaml`` for the API
and ``python -m inference --help`` for the options (each also an ``EDGE_INFER_*`` variable).
"""

__version__ = "1.0.0"
SERVER_NAME = "edge-infer"
