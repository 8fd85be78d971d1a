"""The policy pack with its own requirements alone: a virtualenv holding nothing but
policies/requirements.txt (no system site-packages), and a tree holding nothing but ``policies/``
and ``components/contract.py``. There every rule judges its good and bad fixtures, the CrossGuard
analyzer service of the pack flags a plain SSH key (its SDK replacement in force), the guard refuses
a mandatory violation and the audit CLI reports one.

The virtualenv is built once per content of the requirements file, below ``$EDGEFLEET_CACHE``
(pip needs the package index the first time)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.contract import cache_dir

from .conftest import REPO

pytestmark = pytest.mark.integration
REQUIREMENTS = REPO / "policies" / "requirements.txt"

# Runs in the pack's virtualenv, from the copied tree; prints what the test asserts on.
SMOKE = r"""
import asyncio, datetime as dt, json, sys

import pulumi
import pulumi_policy.policy as analyzer
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import EnforcementLevel

from policies import pack
from policies.engine import settings_from_mapping
from policies.guard import PolicyViolationError, make_transform
from policies.rules import all_rules, run_rule
from policies.sources import resources_from_fixture

today = dt.date(2026, 6, 1)
out = {"judged": {}}
for rule in all_rules():
    for fixture in sorted(rule.fixtures.glob("*.yaml")):
        found = run_rule(rule, resources_from_fixture(fixture), rule.defaults(), today)
        out["judged"][f"{rule.name}/{fixture.name}"] = len(found)

pack.keep_secrets_visible()
policies = pack.build_policies()
out["policies"] = sorted(p.name for p in policies)
service = analyzer._PolicyAnalyzerServicer("edgefleet-security", "1.0.0", policies, EnforcementLevel.ADVISORY)
props = struct_pb2.Struct()
json_format.ParseDict({"connection": {"host": "10.20.0.11", "user": "edgefleet", "hostKey": "ssh-ed25519 AAAA",
                                      "privateKey": "-----BEGIN OPENSSH PRIVATE KEY-----"},
                       "create": "true"}, props)
response = service.Analyze(proto.AnalyzeRequest(type="command:remote:Command", properties=props, name="r",
                                                 urn="urn:pulumi:prod::edgefleet::command:remote:Command::r"), None)
out["analyzed"] = sorted({d.policyName for d in response.diagnostics})

registry_rule = next(r for r in all_rules() if r.name == "image-from-allowed-registry")
bad = resources_from_fixture(registry_rule.fixtures / "bad.yaml")[0]
transform = make_transform("prod", settings_from_mapping({"all": "mandatory"}), today=today)
args = pulumi.ResourceTransformArgs(custom=True, type_="kubernetes:apps/v1:Deployment", name="r",
                                    props=dict(bad.props), opts=pulumi.ResourceOptions())
try:
    asyncio.run(transform(args))
    out["guard"] = "passed"
except PolicyViolationError as exc:
    out["guard"] = str(exc)
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "components")
print(json.dumps(out))
"""


def pack_python() -> Path:
    """The interpreter of a virtualenv with policies/requirements.txt installed and nothing else."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:16]
    venv = cache_dir() / "policy-pack-venv" / key
    python = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return python
    building = venv.with_name(f"{key}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    # The interpreter running the tests (3.11): a fresh venv from it sees none of its packages.
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=120)
    pip = subprocess.run(
        [
            str(building / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert pip.returncode == 0, f"pip install -r {REQUIREMENTS} failed:\n{pip.stdout[-3000:]}{pip.stderr[-3000:]}"
    (building / ".complete").write_text(REQUIREMENTS.read_text())
    shutil.rmtree(venv, ignore_errors=True)
    building.rename(venv)
    return python


@pytest.fixture(scope="module")
def pack_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``policies/`` and ``components/contract.py`` (with the empty ``components/__init__.py``) alone."""
    root = tmp_path_factory.mktemp("pack")
    shutil.copytree(REPO / "policies", root / "policies", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "components").mkdir()
    for name in ("__init__.py", "contract.py"):
        shutil.copy2(REPO / "components" / name, root / "components" / name)
    return root


def in_pack_venv(pack_tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(pack_tree)
    return subprocess.run(
        [str(pack_python()), *args], cwd=pack_tree, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_venv_holds_only_the_pack_requirements(pack_tree: Path) -> None:
    run = in_pack_venv(
        pack_tree, "-c", "import sys; print(sys.prefix); import yaml, rich, pulumi, pulumi_policy; import onnxruntime"
    )
    assert "No module named 'onnxruntime'" in run.stderr, "the venv sees the project's other packages"


def test_every_rule_judges_its_fixtures_from_the_pack_alone(pack_tree: Path) -> None:
    run = in_pack_venv(pack_tree, "-c", SMOKE)
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["modules"] == ["components", "components.contract"]
    judged = out["judged"]
    rules = {case.split("/")[0] for case in judged}
    assert rules == set(out["policies"]) - {"policy-exemptions"}, "every rule of the pack has fixtures"
    wrong = {case: n for case, n in judged.items() if (n > 0) != case.split("/")[1].startswith("bad")}
    assert wrong == {}, "bad fixtures must be flagged, good ones pass"
    assert "ssh-private-key-secret" in out["analyzed"], "the analyzer sees that a plain key is not a secret"
    assert "violates image-from-allowed-registry" in out["guard"]


def test_the_audit_cli_runs_from_the_pack_alone(pack_tree: Path) -> None:
    bad = pack_tree / "policies/rules/fixtures/image-pinned-by-digest/bad.yaml"
    run = in_pack_venv(pack_tree, "-m", "policies.audit", "--format", "table", "--today", "2026-06-01", str(bad))
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "image-pinned-by-digest" in run.stdout
