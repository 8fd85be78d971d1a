"""Model catalog (schema), canary rollout, verified fetch (registry) and validation with onnxruntime.

``models/catalog.yaml`` lists every model version the fleet may serve::

    models:
      - name: quality-control                 # lowercase letters, digits, '-'
        description: ...
        canary: {version: "2", waves: [0]}    # optional: {version, waves: [..]} or {version, percent: 0-100}
        versions:
          "1":
            uri: models/quality-control/1/model.onnx   # relative to the repository, or s3://bucket/key
            sha256: <64 lowercase hex>
            inputs:  [{name: pixels, datatype: FP32, shape: [-1, 64]}]   # Open Inference Protocol v2
            outputs: [{name: label, datatype: INT64, shape: [-1]}, ...]  # datatypes; -1 = dynamic
            latency_class: control            # control (10 ms) | video (50 ms) | batch (1000 ms)
            resources: {cpu: 250m, memory: 256Mi, gpu: false}            # a hint for the pod

:func:`load_catalog` reports every problem at once as ``file: field: message (fix: ...)``
through :class:`ModelError`. :func:`validate_model` proves an artifact is the one the catalog
names (sha256), loads (onnxruntime), has the declared signature and meets the latency budget of
its class on the site's hardware class. :func:`fetch_verified` brings an artifact from the
repository or S3 into a content-addressed cache and refuses anything whose digest is wrong.
"""

from __future__ import annotations

from components.catalog.registry import CACHE, fetch_verified, s3_client, s3_problem
from components.catalog.rollout import SiteRef, canary_bucket, in_canary, select_versions
from components.catalog.schema import (
    CATALOG_HEADER,
    DEFAULT_CATALOG,
    RESERVED_NAMESPACES,
    Canary,
    Catalog,
    CatalogEntry,
    CatalogModel,
    Datatype,
    LatencyClass,
    LoadedCatalog,
    ModelError,
    ModelVersion,
    Resources,
    Tensor,
    load_catalog,
    parse_s3_uri,
    reserved_namespace,
    s3_object,
    write_catalog,
)
from components.catalog.validation import (
    DEFAULT_VALIDATION_CACHE,
    HARDWARE_FACTORS,
    NUMPY_DTYPES,
    ORT_DATATYPES,
    ValidationResult,
    open_session,
    session_signature,
    signature_problems,
    synthetic_inputs,
    validate_model,
)

__all__ = [
    "CATALOG_HEADER",
    "DEFAULT_CATALOG",
    "Canary",
    "Catalog",
    "CatalogEntry",
    "CatalogModel",
    "Datatype",
    "LatencyClass",
    "LoadedCatalog",
    "ModelError",
    "ModelVersion",
    "RESERVED_NAMESPACES",
    "Resources",
    "Tensor",
    "load_catalog",
    "parse_s3_uri",
    "reserved_namespace",
    "s3_object",
    "write_catalog",
    "SiteRef",
    "canary_bucket",
    "in_canary",
    "select_versions",
    "CACHE",
    "fetch_verified",
    "s3_client",
    "s3_problem",
    "DEFAULT_VALIDATION_CACHE",
    "HARDWARE_FACTORS",
    "NUMPY_DTYPES",
    "ORT_DATATYPES",
    "ValidationResult",
    "open_session",
    "session_signature",
    "signature_problems",
    "synthetic_inputs",
    "validate_model",
]
