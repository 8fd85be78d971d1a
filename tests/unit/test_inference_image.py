"""The server image recipe: what it installs covers what the server imports, with the same pins."""

from __future__ import annotations

import ast
import re
import sys

from tests.unit.inference_fixtures import REPO

DOCKERFILE = REPO / "inference" / "Dockerfile"
# Import names of distributions whose import name differs from the distribution name.
IMPORT_NAMES = {"pyyaml": "yaml", "prometheus-client": "prometheus_client"}


def pins(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==(\S+)", line.strip())
        if match:
            found[match[1].lower()] = match[3]
    return found


def test_image_requirements_are_pinned_like_the_repository():
    image, repo = pins(REPO / "inference" / "requirements.txt"), pins(REPO / "requirements.txt")
    assert image and all(repo.get(name) == version for name, version in image.items()), (image, repo)


def test_image_installs_every_third_party_module_the_server_imports():
    imported = set()
    for source in (REPO / "inference").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"inference", "__future__"}
    installed = {IMPORT_NAMES.get(name, name) for name in pins(REPO / "inference" / "requirements.txt")}
    assert third_party - {"botocore"} <= installed, third_party - installed  # botocore comes with boto3


def test_dockerfile_runs_non_root_on_8080_from_a_digest_pinned_base():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim@sha256:[0-9a-f]{64}$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}"] * 2
    assert re.search(r"^USER 65532:65532$", text, re.M) and re.search(r"^EXPOSE 8080$", text, re.M)
    assert "EDGE_INFER_MODEL_REPOSITORY=/models" in text and not re.search(r"^HEALTHCHECK", text, re.M)
    assert 'ENTRYPOINT ["python", "-m", "inference"]' in text
