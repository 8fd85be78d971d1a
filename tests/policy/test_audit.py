"""`python -m policies.audit` as a user runs it: sources, formats, exit codes, errors."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from xml.etree import ElementTree as ET

import jsonschema
import pytest
import yaml

from policies.audit import main
from tests.policy.conftest import DATA, FakeApiServer, audit

CORPUS = DATA / "corpus"
GOOD = [CORPUS / "good-detector.yaml", CORPUS / "good-model-sync.yaml"]
EXPORT = DATA / "stack-export.json"


@pytest.fixture(scope="module")
def sarif_schema() -> dict:
    return json.loads((DATA / "sarif-schema-2.1.0.json").read_text())


def test_clean_manifests_exit_0():
    run = audit(*map(str, GOOD))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 violations" in run.stdout


def test_violations_exit_1_with_a_table():
    run = audit(str(CORPUS))
    assert run.returncode == 1
    assert "no-privileged-containers" in run.stdout and "bad-privileged.yaml" in run.stdout
    assert "Traceback" not in run.stderr


def test_fail_on_sets_the_threshold():
    assert main([str(CORPUS / "bad-no-probes.yaml"), "--format", "json", "--fail-on", "high", "-o", "/dev/null"]) == 0
    assert main([str(CORPUS / "bad-no-probes.yaml"), "--format", "json", "--fail-on", "medium", "-o", "/dev/null"]) == 1
    assert main([str(CORPUS / "bad-privileged.yaml"), "--format", "json", "--fail-on", "none", "-o", "/dev/null"]) == 0


def test_json_report(tmp_path):
    out = tmp_path / "audit.json"
    assert main([str(CORPUS), "--format", "json", "-o", str(out)]) == 1
    doc = json.loads(out.read_text())
    assert doc["summary"]["findings"] == len(doc["findings"]) > 10
    f = next(f for f in doc["findings"] if f["rule"] == "no-privileged-containers")
    assert f["severity"] == "critical" and f["resource"] == "Deployment lab-a/privileged"
    assert f["source"].endswith("bad-privileged.yaml:22") and f["path"].startswith("spec.template.spec.containers[0]")
    assert f["remediation"]


def test_sarif_report_is_valid_sarif_2_1_0(tmp_path, sarif_schema):
    out = tmp_path / "audit.sarif"
    assert main([str(CORPUS), str(EXPORT), "--format", "sarif", "-o", str(out), "--today", "2026-06-01"]) == 1
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, sarif_schema)
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert len(rules) >= 30
    result = next(r for r in run["results"] if r["ruleId"] == "no-privileged-containers")
    assert rules[result["ruleIndex"]]["id"] == "no-privileged-containers"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == 22
    # The stack export's exempted finding is reported as suppressed, not dropped.
    suppressed = [r for r in run["results"] if r.get("suppressions")]
    assert [r["ruleId"] for r in suppressed] == []  # the only exemption in the export is void (no reason)
    assert any(r["ruleId"] == "ssh-host-key-pinned" and "is void" in r["message"]["text"] for r in run["results"])


def test_sarif_marks_valid_exemptions_as_suppressions(tmp_path, sarif_schema):
    doc = yaml.safe_load((CORPUS / "bad-privileged.yaml").read_text().split("---")[-1])
    doc["spec"]["template"]["spec"]["hostNetwork"] = True
    doc["metadata"]["annotations"] = {
        "edgefleet.io/policy-exempt": "no-host-namespaces",
        "edgefleet.io/policy-exempt-reason": "device plugin",
        "edgefleet.io/policy-exempt-until": "2026-08-15",
    }
    (tmp_path / "exempt.yaml").write_text(yaml.safe_dump(doc))
    out = tmp_path / "audit.sarif"
    assert main([str(tmp_path / "exempt.yaml"), "--format", "sarif", "-o", str(out), "--today", "2026-06-01"]) == 1
    sarif = json.loads(out.read_text())
    jsonschema.validate(sarif, sarif_schema)
    (result,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "no-host-namespaces"]
    assert result["suppressions"][0]["justification"].endswith("until 2026-08-15: device plugin")
    (result,) = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "no-privileged-containers"]
    assert "suppressions" not in result


def test_junit_report(tmp_path):
    out = tmp_path / "audit.xml"
    assert main([str(CORPUS), "--format", "junit", "-o", str(out)]) == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites" and int(root.get("failures")) > 10
    suite = root.find("testsuite[@name='no-privileged-containers']")
    (case,) = suite.findall("testcase")
    assert case.get("name") == "Deployment lab-a/privileged" and case.find("failure") is not None
    assert root.find("testsuite[@name='edge-audit-log']/testcase").find("failure") is None
    assert sum(int(s.get("tests")) for s in root.findall("testsuite")) == int(root.get("tests"))


def test_stack_export_secrets_and_outputs():
    run = audit(str(EXPORT), "--format", "json", "--today", "2026-06-01")
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    rules = {(f["rule"], f["resource"]) for f in doc["findings"]}
    assert ("secret-stack-outputs", "pulumi:pulumi:Stack edgefleet-dev") in rules
    assert ("edge-pinned-version", "edge:site:EdgeSite cell-9") in rules
    messages = [f["message"] for f in doc["findings"] if f["rule"] == "secret-stack-outputs"]
    assert messages == ["stack output cell9Kubeconfig is not a secret"], "the encrypted kubeconfigs output is a secret"
    (exemption,) = doc["exemptions"]
    assert not exemption["valid"] and "edgefleet.io/policy-exempt-reason is missing" in exemption["problems"]


def test_malformed_yaml_is_reported_per_file_without_a_traceback(tmp_path):
    (tmp_path / "ok.yaml").write_text((CORPUS / "good-model-sync.yaml").read_text())
    (tmp_path / "broken.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   namespace: y\n")
    (tmp_path / "list.yml").write_text("- just\n- a list\n")
    (tmp_path / "crd.yaml").write_text("apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n")
    run = audit(str(tmp_path), "--format", "json")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"error: {tmp_path / 'broken.yaml'}:5: malformed YAML" in run.stderr
    assert f"{tmp_path / 'list.yml'}:1: not a Kubernetes object" in run.stderr
    assert f"note: {tmp_path / 'crd.yaml'}: no rule checks example.com/v1:Widget; skipped" in run.stderr
    assert json.loads(run.stdout)["summary"]["resources"] == 2, "the readable files are still audited"


def test_usage_and_input_errors_exit_2(tmp_path):
    assert audit().returncode == 2
    run = audit(str(tmp_path / "missing.yaml"))
    assert run.returncode == 2 and "missing.yaml: does not exist" in run.stderr
    run = audit(str(CORPUS), "--format", "pdf")
    assert run.returncode == 2 and "invalid choice" in run.stderr
    (tmp_path / "bad.json").write_text('{"all": "sometimes"}')
    run = audit(str(CORPUS), "--config", str(tmp_path / "bad.json"))
    assert run.returncode == 2 and "is not an enforcement level" in run.stderr
    (tmp_path / "export.json").write_text("{not json")
    run = audit(str(tmp_path / "export.json"))
    assert run.returncode == 2 and "not valid JSON" in run.stderr and "Traceback" not in run.stderr


def test_stack_settings_apply(tmp_path):
    doc = json.loads(audit(str(CORPUS / "bad-no-probes.yaml"), "--format", "json", "--stack", "prod").stdout)
    assert {f["level"] for f in doc["findings"]} == {"mandatory"}
    doc = json.loads(audit(str(CORPUS / "bad-no-probes.yaml"), "--format", "json", "--stack", "dev").stdout)
    assert {f["level"] for f in doc["findings"]} == {"advisory"}


@pytest.fixture
def cluster(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((CORPUS / "bad-privileged.yaml").read_text()) if d}
    pod = json.loads(json.dumps(docs["Deployment"]["spec"]["template"]))
    pod["metadata"].update(
        name="privileged-5d9c-abc",
        namespace="lab-a",
        ownerReferences=[{"kind": "ReplicaSet", "name": "privileged-5d9c", "controller": True}],
    )
    FakeApiServer.objects = {
        "/apis/apps/v1/deployments": [docs["Deployment"]],
        "/api/v1/namespaces": [docs["Namespace"], {"metadata": {"name": "kube-system"}}],
        "/apis/networking.k8s.io/v1/networkpolicies": [docs["NetworkPolicy"]],
        "/api/v1/pods": [pod],
        "/api/v1/configmaps": [
            {"metadata": {"name": "kube-root-ca.crt", "namespace": "lab-a"}, "data": {"ca.crt": "x"}}
        ],
    }
    FakeApiServer.forbidden = frozenset({"/apis/policy/v1/poddisruptionbudgets"})
    FakeApiServer.seen_auth = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "lab",
                "clusters": [{"name": "lab", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
                # Plain HTTP carries no credentials (tests/policy/test_audit_live.py covers them over HTTPS).
                "users": [{"name": "admin", "user": {}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
            }
        )
    )
    yield kubeconfig
    server.shutdown()
    server.server_close()


def test_live_cluster(cluster):
    run = audit("--kubeconfig", str(cluster), "--format", "json")
    assert run.returncode == 1, run.stderr
    doc = json.loads(run.stdout)
    assert {f["rule"] for f in doc["findings"]} == {"no-privileged-containers"}
    (f,) = doc["findings"]
    assert f["source"].endswith("/Deployment/lab-a/privileged")
    # The controller-owned pod, kube-system and the root CA ConfigMap are not audited twice or at all.
    assert doc["summary"]["resources"] == 3
    assert "note: " in run.stderr and "cannot list PodDisruptionBudget: HTTP 403" in run.stderr
    assert set(FakeApiServer.seen_auth) == {""}


def test_unreachable_cluster_and_bad_kubeconfig(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "gone",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "c"}}],
            }
        )
    )
    run = audit("--kubeconfig", str(kubeconfig))
    assert run.returncode == 2 and "cannot reach the API server" in run.stderr and "Traceback" not in run.stderr
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "current-context": "x",
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"exec": {"command": "aws"}}}],
            }
        )
    )
    run = audit("--kubeconfig", str(kubeconfig))
    assert run.returncode == 2 and "exec/auth-provider plugin" in run.stderr


def test_patches_custom_resources_and_helm_releases_are_audited(tmp_path):
    """A stack export's patches, Helm releases and custom resources, and YAML custom resources,
    are judged like the workloads they are (or refused where they cannot be seen into)."""

    def resource(type_: str, name: str, inputs: dict) -> dict:
        return {
            "urn": f"urn:pulumi:prod::edgefleet::{type_}::{name}",
            "custom": True,
            "type": type_,
            "inputs": inputs,
            "provider": "urn:pulumi:prod::edgefleet::pulumi:providers:kubernetes::plant-1::id",
        }

    privileged = {"containers": [{"name": "server", "securityContext": {"privileged": True}}]}
    export = {
        "version": 3,
        "deployment": {
            "resources": [
                resource(
                    "kubernetes:apps/v1:DeploymentPatch",
                    "detector-patch",
                    {
                        "metadata": {"name": "detector", "namespace": "inference"},
                        "spec": {"template": {"spec": privileged}},
                    },
                ),
                resource(
                    "kubernetes:core/v1:NamespacePatch",
                    "kube-system-psa",
                    {
                        "metadata": {
                            "name": "kube-system",
                            "labels": {"pod-security.kubernetes.io/enforce": "privileged"},
                        }
                    },
                ),
                resource(
                    "kubernetes:helm.sh/v3:Release", "ingress", {"chart": "ingress-nginx", "namespace": "ingress"}
                ),
                resource(
                    "kubernetes:argoproj.io/v1alpha1:Rollout",
                    "detector-rollout",
                    {
                        "metadata": {"name": "rollout", "namespace": "inference"},
                        "spec": {"template": {"spec": privileged}},
                    },
                ),
            ]
        },
    }
    (tmp_path / "export.json").write_text(json.dumps(export))
    (tmp_path / "rollout.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "argoproj.io/v1alpha1",
                "kind": "Rollout",
                "metadata": {"name": "yaml-rollout", "namespace": "inference"},
                "spec": {"template": {"spec": privileged}},
            }
        )
    )
    run = audit(str(tmp_path / "export.json"), str(tmp_path / "rollout.yaml"), "--format", "json")
    assert run.returncode == 1, run.stderr
    found = {(f["rule"], f["resource"]) for f in json.loads(run.stdout)["findings"]}
    assert {
        ("no-privileged-containers", "DeploymentPatch inference/detector"),
        ("namespace-patch-psa-restricted", "NamespacePatch kube-system"),
        ("no-opaque-helm-release", "Release ingress"),
        ("no-privileged-containers", "Rollout inference/rollout"),
        ("no-privileged-containers", "Rollout inference/yaml-rollout"),
    } <= found
    assert "no rule checks" not in run.stderr
