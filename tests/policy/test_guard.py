"""The in-program guard.

Pulumi's mocks have no callback server, so ``register_resource_transform`` cannot run under
``pulumi.runtime.set_mocks`` (it raises "No callback server registered"). These tests call the
transform ``install_guard`` registers directly, with the argument bag the SDK builds: plain
values, ``pulumi.Output`` values (known, unknown, secret) and rpc secrets.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pulumi
import pytest
from pulumi.runtime.rpc import wrap_rpc_secret

from policies.engine import settings_from_mapping, stack_settings
from policies.guard import PolicyViolationError, install_guard, make_transform
from policies.sources import resources_from_fixture
from tests.mocks import run_mocked
from tests.policy.conftest import REPO

TODAY = dt.date(2026, 6, 1)
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"


def output(value, known: bool = True, secret: bool = False) -> pulumi.Output:
    def done(v):
        f = asyncio.get_event_loop().create_future()
        f.set_result(v)
        return f

    return pulumi.Output(set(), done(value), done(known), done(secret))


def run(stack: str, type_: str, props_factory, config=None):
    """Run the guard's transform on one resource; returns the warnings it logged."""
    warnings: list[str] = []

    async def go():
        settings = settings_from_mapping(config) if config is not None else stack_settings(stack)
        transform = make_transform(stack, settings, today=TODAY)
        args = pulumi.ResourceTransformArgs(
            custom=True, type_=type_, name="r", props=props_factory(), opts=pulumi.ResourceOptions()
        )
        return await transform(args)

    original = pulumi.log.warn
    pulumi.log.warn = lambda msg, *a, **k: warnings.append(msg)
    try:
        result = asyncio.run(go())
    finally:
        pulumi.log.warn = original
    assert result is None, "the guard never rewrites a resource"
    return warnings


def fixture_props(path: str) -> dict:
    return dict(resources_from_fixture(REPO / path)[0].props)


def test_prod_refuses_a_mandatory_violation_naming_resource_rule_and_fix():
    with pytest.raises(PolicyViolationError) as e:
        run(
            "prod",
            "kubernetes:apps/v1:Deployment",
            lambda: fixture_props("policies/rules/fixtures/no-privileged-containers/bad.yaml"),
        )
    text = str(e.value)
    assert "Deployment inference/detector violates no-privileged-containers (critical, mandatory in stack prod)" in text
    assert "fix: Remove securityContext.privileged" in text
    assert [f.rule.name for f in e.value.findings] == ["no-privileged-containers"]


def test_dev_lets_advisory_violations_through_with_a_warning():
    warnings = run(
        "dev",
        "kubernetes:apps/v1:Deployment",
        lambda: fixture_props("policies/rules/fixtures/no-privileged-containers/bad.yaml"),
    )
    assert any("violates no-privileged-containers (critical, advisory)" in w for w in warnings)


def test_a_compliant_resource_passes_silently():
    assert (
        run(
            "prod",
            "kubernetes:apps/v1:Deployment",
            lambda: fixture_props("policies/rules/fixtures/no-privileged-containers/good.yaml"),
        )
        == []
    )


def test_types_no_rule_reads_are_ignored():
    assert run("prod", "kubernetes:storage.k8s.io/v1:StorageClass", lambda: {"metadata": {"name": "local"}}) == []


def connection(private_key) -> dict:
    return {
        "connection": {"host": "10.20.0.11", "user": "u", "privateKey": private_key, "hostKey": "ssh-ed25519 AAAA"},
        "create": "sh install.sh",
    }


def test_secret_outputs_and_rpc_secrets_count_as_secrets():
    assert run("prod", "command:remote:Command", lambda: connection(output(KEY, secret=True))) == []
    assert run("prod", "command:remote:Command", lambda: connection(wrap_rpc_secret(KEY))) == []
    # The SDK pushes secretness up to the containing object: that protects the key too.
    assert (
        run("prod", "command:remote:Command", lambda: {"connection": wrap_rpc_secret(connection(KEY)["connection"])})
        == []
    )


def test_plain_outputs_are_checked_like_plain_values():
    with pytest.raises(PolicyViolationError, match="ssh-private-key-secret"):
        run("prod", "command:remote:Command", lambda: connection(output(KEY)))
    with pytest.raises(PolicyViolationError, match="ssh-private-key-secret"):
        run("prod", "command:remote:Command", lambda: connection(KEY))


def test_unknown_outputs_never_fail():
    def props():
        p = fixture_props("policies/rules/fixtures/no-privileged-containers/bad.yaml")
        p["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = output(None, known=False)
        p["metadata"]["namespace"] = output(None, known=False)
        return p

    assert run("prod", "kubernetes:apps/v1:Deployment", props) == []
    assert run("prod", "command:remote:Command", lambda: connection(output(None, known=False))) == []


def test_exemptions_apply_and_are_logged():
    def props():
        p = fixture_props("policies/rules/fixtures/no-host-path-volumes/bad.yaml")
        p["metadata"]["annotations"] = {
            "edgefleet.io/policy-exempt": "no-host-path-volumes",
            "edgefleet.io/policy-exempt-reason": "device plugin",
            "edgefleet.io/policy-exempt-until": "2026-07-01",
        }
        return p

    warnings = run("prod", "kubernetes:apps/v1:Deployment", props)
    assert warnings == [
        "policy: Deployment inference/detector: exempt from no-host-path-volumes until 2026-07-01: device plugin"
    ]


def test_a_void_exemption_is_refused():
    def props(**annotations):
        def make():
            p = fixture_props("policies/rules/fixtures/no-privileged-containers/good.yaml")
            p["metadata"]["annotations"] = annotations
            return p

        return make

    with pytest.raises(PolicyViolationError) as e:
        run("prod", "kubernetes:apps/v1:Deployment", props(**{"edgefleet.io/policy-exempt-untill": "2026-07-01"}))
    assert "valid-policy-exemption (critical" in str(e.value)
    with pytest.raises(PolicyViolationError, match="no-privileged-containers is critical and cannot be exempted"):
        run(
            "prod",
            "kubernetes:apps/v1:Deployment",
            props(
                **{
                    "edgefleet.io/policy-exempt": "no-privileged-containers",
                    "edgefleet.io/policy-exempt-reason": "r",
                    "edgefleet.io/policy-exempt-until": "2026-07-01",
                }
            ),
        )


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
            "kubernetes:core/v1:NamespacePatch",
            {"metadata": {"name": "kube-system", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}},
            "namespace-patch-psa-restricted",
        ),
        (
            "kubernetes:core/v1:ReplicationController",
            {
                "metadata": {"name": "rc", "namespace": "inference"},
                "spec": {
                    "template": {"spec": {"containers": [{"name": "c", "securityContext": {"privileged": True}}]}}
                },
            },
            "no-privileged-containers",
        ),
        (
            "kubernetes:argoproj.io/v1alpha1:Rollout",
            {
                "metadata": {"name": "r", "namespace": "inference"},
                "spec": {
                    "template": {
                        "spec": {
                            "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
                            "containers": [{"name": "c"}],
                        }
                    }
                },
            },
            "no-host-path-volumes",
        ),
        ("kubernetes:helm.sh/v3:Release", {"chart": "ingress-nginx", "namespace": "ingress"}, "no-opaque-helm-release"),
    ],
)
def test_patches_custom_resources_and_helm_releases_are_guarded(type_, props, rule):
    with pytest.raises(PolicyViolationError) as e:
        run("prod", type_, lambda: props)
    assert rule in {f.rule.name for f in e.value.findings}


def test_a_patch_that_sets_only_an_image_passes():
    props = {
        "metadata": {"name": "detector", "namespace": "inference"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "server", "image": "registry.edgefleet.local/inference/oip-server@sha256:" + "4f" * 32}
                    ]
                }
            }
        },
    }
    assert run("prod", "kubernetes:apps/v1:DeploymentPatch", lambda: props) == []


def test_rule_settings_of_the_stack_apply():
    bad = lambda: fixture_props("policies/rules/fixtures/image-from-allowed-registry/bad.yaml")  # noqa: E731
    with pytest.raises(PolicyViolationError, match="image-from-allowed-registry"):
        run("prod", "kubernetes:apps/v1:Deployment", bad)
    config = {"all": "mandatory", "image-from-allowed-registry": {"allowedRegistries": ["docker.io/library"]}}
    assert run("prod", "kubernetes:apps/v1:Deployment", bad, config=config) == []


def test_install_guard_needs_the_engine():
    """Under mocks there is no callback server: install_guard says so instead of passing silently."""

    class Mocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            return [f"{args.name}_id", args.inputs]

        def call(self, args):
            return {}

    errors = []

    def program():
        try:
            install_guard("prod")
        except Exception as e:  # the SDK raises a bare Exception
            errors.append(str(e))
        return True

    run_mocked(program, Mocks(), preview=True)
    assert errors == ["No callback server registered."]
