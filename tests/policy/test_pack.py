"""The CrossGuard pack through pulumi-policy's own analyzer service, fed the property structs
the engine sends (secrets and unknowns as the engine marshals them)."""

from __future__ import annotations

import datetime as dt

import pulumi_policy.policy as analyzer
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import EnforcementLevel

from policies import pack
from policies.resource import SECRET_SIG, SIG_KEY
from policies.rules import all_rules

UNKNOWN_STRING = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"


def secret(value):
    return {SIG_KEY: SECRET_SIG, "value": value}


def struct(props: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    json_format.ParseDict(props, s)
    return s


@pytest.fixture
def service(monkeypatch):
    """The analyzer service of the pack as `pulumi preview --policy-pack policies` runs it."""
    # Registers the current deserializer with monkeypatch, so the pack's replacement is undone.
    monkeypatch.setattr(analyzer, "deserialize_properties", analyzer.deserialize_properties)
    pack.keep_secrets_visible()
    return analyzer._PolicyAnalyzerServicer(
        "edgefleet-security", "1.0.0", pack.build_policies(), EnforcementLevel.ADVISORY
    )


def configure(service, level: str) -> None:
    levels = {"advisory": proto.ADVISORY, "mandatory": proto.MANDATORY}
    request = proto.ConfigureAnalyzerRequest()
    for rule in all_rules():
        request.policyConfig[rule.name].CopyFrom(proto.PolicyConfig(enforcementLevel=levels[level]))
    service.Configure(request, None)


def analyze(service, type_: str, props: dict) -> dict[str, list[str]]:
    request = proto.AnalyzeRequest(
        type=type_, properties=struct(props), urn=f"urn:pulumi:prod::edgefleet::{type_}::r", name="r"
    )
    response = service.Analyze(request, None)
    out: dict[str, list[str]] = {}
    for d in response.diagnostics:
        out.setdefault(d.policyName, []).append(d.message)
    return out


def command(private_key, token) -> dict:
    return {
        "connection": {
            "host": "10.20.0.11",
            "user": "edgefleet",
            "privateKey": private_key,
            "hostKey": "ssh-ed25519 AAAA",
        },
        "create": "sh install.sh",
        "environment": {"K3S_TOKEN": token},
    }


def test_secret_values_are_seen_as_secrets(service):
    found = analyze(service, "command:remote:Command", command(secret(KEY), secret("K10abc::server:x")))
    assert "ssh-private-key-secret" not in found and "join-token-secret" not in found
    found = analyze(service, "command:remote:Command", command(KEY, "K10abc::server:x"))
    assert "connection.privateKey is not a secret" in found["ssh-private-key-secret"][0]
    assert "K3S_TOKEN is not a secret" in found["join-token-secret"][0]
    assert "Remediation: " in found["join-token-secret"][0]
    assert KEY not in "".join(m for msgs in found.values() for m in msgs)


def test_unknown_values_pass_without_a_preview_diagnostic(service):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "detector", "namespace": UNKNOWN_STRING, "labels": UNKNOWN_STRING},
        "spec": {"template": {"spec": UNKNOWN_STRING}},
    }
    assert analyze(service, "kubernetes:apps/v1:Deployment", deployment) == {}
    deployment["spec"]["template"]["spec"] = {
        "containers": [{"name": "c", "image": UNKNOWN_STRING, "securityContext": {"privileged": True}}]
    }
    found = analyze(service, "kubernetes:apps/v1:Deployment", deployment)
    assert "no-privileged-containers" in found
    assert not any("can't run policy" in m for msgs in found.values() for m in msgs)
    assert "image-pinned-by-digest" not in found


def test_enforcement_comes_from_the_stack_config(service):
    props = command(KEY, secret("t"))
    request = proto.AnalyzeRequest(type="command:remote:Command", properties=struct(props), urn="u", name="r")
    configure(service, "advisory")
    levels = {d.policyName: d.enforcementLevel for d in service.Analyze(request, None).diagnostics}
    assert levels["ssh-private-key-secret"] == proto.ADVISORY
    configure(service, "mandatory")
    levels = {d.policyName: d.enforcementLevel for d in service.Analyze(request, None).diagnostics}
    assert levels["ssh-private-key-secret"] == proto.MANDATORY


def test_stack_outputs_are_checked_for_secrets(service):
    stack = proto.AnalyzerResource(
        type="pulumi:pulumi:Stack",
        urn="urn:pulumi:prod::edgefleet::pulumi:pulumi:Stack::edgefleet-prod",
        name="edgefleet-prod",
        properties=struct(
            {
                "plant1Kubeconfig": secret("apiVersion: v1"),
                "store7Kubeconfig": "apiVersion: v1",
                "joinTokens": UNKNOWN_STRING,
            }
        ),
    )
    response = service.AnalyzeStack(proto.AnalyzeStackRequest(resources=[stack]), None)
    messages = [d.message for d in response.diagnostics if d.policyName == "secret-stack-outputs"]
    assert len(messages) == 1 and "store7Kubeconfig is not a secret" in messages[0]
    assert [d.urn for d in response.diagnostics] == [stack.urn]


def test_exemptions_are_reported_in_every_run(service):
    until = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    site = {
        "site": "store-7",
        "distribution": "k3s",
        "version": "v1.33.4+k3s1",
        "install": {
            "secretsEncryption": True,
            "auditLog": False,
            "anonymousAuth": False,
            "protectKernelDefaults": True,
            "kubeconfigMode": "0600",
        },
        "annotations": {
            "edgefleet.io/policy-exempt": "edge-audit-log",
            "edgefleet.io/policy-exempt-reason": "no disk",
            "edgefleet.io/policy-exempt-until": until,
        },
    }
    configure(service, "mandatory")
    found = analyze(service, "edge:site:EdgeSite", site)
    assert "edge-audit-log" not in found and "valid-policy-exemption" not in found
    assert f"exempt from edge-audit-log until {until}: no disk" in found["policy-exemptions"][0]
    site["annotations"]["edgefleet.io/policy-exempt-until"] = "2000-01-01"
    found = analyze(service, "edge:site:EdgeSite", site)
    assert "expired on 2000-01-01" in found["edge-audit-log"][0]
    assert "is void" in found["policy-exemptions"][0]
    assert "expired on 2000-01-01" in found["valid-policy-exemption"][0]
    site["annotations"]["edgefleet.io/policy-exempt-until"] = "2999-01-01"
    assert "is more than 90 days ahead" in analyze(service, "edge:site:EdgeSite", site)["valid-policy-exemption"][0]


def mandatory_levels(service, type_: str, props: dict) -> dict[str, list[int]]:
    request = proto.AnalyzeRequest(
        type=type_, properties=struct(props), urn=f"urn:pulumi:prod::edgefleet::{type_}::r", name="r"
    )
    out: dict[str, list[int]] = {}
    for d in service.Analyze(request, None).diagnostics:
        out.setdefault(d.policyName, []).append(d.enforcementLevel)
    return out


@pytest.mark.parametrize(
    "type_,props,rule",
    [
        (
            "kubernetes:apps/v1:DeploymentPatch",
            {
                "metadata": {"name": "detector", "namespace": "inference"},
                "spec": {
                    "template": {"spec": {"containers": [{"name": "server", "securityContext": {"privileged": True}}]}}
                },
            },
            "no-privileged-containers",
        ),
        (
            "kubernetes:core/v1:ReplicationController",
            {
                "metadata": {"name": "detector", "namespace": "inference"},
                "spec": {"template": {"spec": {"hostNetwork": True, "containers": [{"name": "server"}]}}},
            },
            "no-host-namespaces",
        ),
        (
            "kubernetes:argoproj.io/v1alpha1:Rollout",
            {
                "metadata": {"name": "detector", "namespace": "inference"},
                "spec": {
                    "template": {"spec": {"containers": [{"name": "server", "securityContext": {"privileged": True}}]}}
                },
            },
            "no-privileged-containers",
        ),
        (
            "kubernetes:core/v1:NamespacePatch",
            {"metadata": {"name": "kube-system", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
            "namespace-patch-psa-restricted",
        ),
        (
            "kubernetes:helm.sh/v3:Release",
            {"chart": "ingress-nginx", "namespace": "ingress", "values": {"controller": {}}},
            "no-opaque-helm-release",
        ),
        (
            "kubernetes:core/v1:ConfigMap",
            {
                "metadata": {
                    "name": "c",
                    "namespace": "inference",
                    "annotations": {"edgefleet.io/policy-exempt-untill": "2026-07-01"},
                }
            },
            "valid-policy-exemption",
        ),
    ],
)
def test_patches_custom_resources_and_helm_releases_reach_the_pack(service, type_, props, rule):
    configure(service, "mandatory")
    levels = mandatory_levels(service, type_, props).get(rule)
    assert levels and set(levels) == {proto.MANDATORY}


def test_analyzer_info_describes_every_rule(service):
    info = service.GetAnalyzerInfo(None, None)
    by_name = {p.name: p for p in info.policies}
    for rule in all_rules():
        p = by_name[rule.name]
        assert p.description == rule.description and p.remediation_steps == rule.remediation
        assert p.enforcementLevel == (proto.MANDATORY if rule.enforcement == "mandatory" else proto.ADVISORY)
        assert set(p.configSchema.properties) == set(rule.config_schema)
    assert by_name["policy-exemptions"].enforcementLevel == proto.ADVISORY


def test_the_pack_entry_point_serves_every_rule():
    """policies/__main__.py as the engine starts it (through policies/analyzer): it prints its
    port and answers GetAnalyzerInfo with one policy per registered rule."""
    import subprocess

    import grpc
    from google.protobuf import empty_pb2
    from pulumi.runtime.proto import analyzer_pb2_grpc

    from tests.policy.conftest import REPO

    proc = subprocess.Popen([str(REPO / "policies" / "analyzer"), "127.0.0.1:1"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            info = analyzer_pb2_grpc.AnalyzerStub(channel).GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert info.name == "edgefleet-security"
    assert sorted(p.name for p in info.policies) == sorted([r.name for r in all_rules()] + ["policy-exemptions"])
