"""Install facts the edge-* policy rules check come from what each driver renders: a site
whose rendered configuration lacks a setting fails the matching rule, for every
distribution, and flags that would override the rendered baseline are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.distributions import DistributionError, NodeSpec, combine_facts, driver_for, k0s, k3s, microshift
from components.distributions.artifacts import UploadedArtifact
from components.inventory import Inventory, Site
from components.topology import site_props
from policies.resource import Resource
from policies.rules import get_rule
from tests.unit.dist_fixtures import node_with

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
SHA = "ab" * 32
INSTALL_RULES = {
    "secretsEncryption": "edge-secrets-encryption",
    "auditLog": "edge-audit-log",
    "anonymousAuth": "edge-anonymous-auth-off",
    "kubeconfigMode": "edge-kubeconfig-mode",
    "protectKernelDefaults": "edge-protect-kernel-defaults",
}


def host(name: str, address: str, role: str = "server") -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "role": role,
        "ssh": {"host_key": HOST_KEY, "private_key": {"config": "k"}},
    }


SITES: dict[str, dict[str, Any]] = {
    "k3s": {
        "name": "plant",
        "topology": "ha",
        "distribution": {"name": "k3s", "version": "v1.33.4+k3s1"},
        "artifacts": [{"name": "k3s", "source": "https://a.example/k3s", "sha256": SHA}],
        "hosts": [
            host("ha-1", "10.0.0.11"),
            host("ha-2", "10.0.0.12"),
            host("ha-3", "10.0.0.13"),
            host("ha-agent", "10.0.0.21", "agent"),
        ],
    },
    "k0s": {
        "name": "store",
        "topology": "single-node",
        "distribution": {"name": "k0s", "version": "v1.33.4+k0s.0"},
        "artifacts": [{"name": "k0s", "source": "https://a.example/k0s", "sha256": SHA}],
        "hosts": [host("store-1", "10.0.1.10"), host("store-2", "10.0.1.11", "agent")],
    },
    "microshift": {
        "name": "tower",
        "topology": "gateway",
        "distribution": {"name": "microshift", "version": "4.19.0"},
        "artifacts": [{"name": "microshift", "source": "https://a.example/microshift-4.19.0.rpm", "sha256": SHA}],
        "hosts": [host("tower-gw", "10.0.2.2")],
    },
}


def site(dist: str, **distribution: Any) -> Site:
    raw = {**SITES[dist], "distribution": {**SITES[dist]["distribution"], **distribution}}
    return Inventory.model_validate({"fleet": "unit", "environment": "prod", "sites": [raw]}).sites[0]


def failing(props: dict[str, Any]) -> set[str]:
    """The install rules the site's props fail (each rule run on the props directly)."""
    res = Resource("edge:site:EdgeSite", props["site"], props)
    out = set()
    for name in INSTALL_RULES.values():
        rule = get_rule(name)
        assert rule is not None
        if rule.check(res, rule.defaults()):
            out.add(name)
    return out


def props(dist: str, **distribution: Any) -> dict[str, Any]:
    return site_props(site(dist, **distribution), "prod", Path("."))


# --- what each distribution really renders -----------------------------------------------------------


def test_k3s_renders_every_setting_the_rules_check() -> None:
    assert props("k3s")["install"] == {
        "secretsEncryption": True,
        "auditLog": True,
        "anonymousAuth": False,
        "kubeconfigMode": "0600",
        "protectKernelDefaults": True,
    }
    assert failing(props("k3s")) == set()


def test_k0s_renders_every_setting_the_rules_check() -> None:
    args = yaml.safe_load(k0s.render_config(k0s_node()))["spec"]["api"]["extraArgs"]
    assert args["anonymous-auth"] == "false"
    assert args["encryption-provider-config"] == "/var/lib/k0s/encryption.cfg"
    assert args["audit-policy-file"] == k0s.AUDIT_POLICY_FILE and args["audit-log-path"]
    assert props("k0s")["install"] == {
        "secretsEncryption": True,
        "auditLog": True,
        "anonymousAuth": False,
        "kubeconfigMode": "0600",
        "protectKernelDefaults": True,
    }
    assert failing(props("k0s")) == set()


def test_a_k0s_encryption_config_that_writes_in_plain_text_fails_the_encryption_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "edge-secrets-encryption" not in failing(props("k0s"))
    cfg = yaml.safe_load(k0s.render_encryption_config())
    cfg["resources"][0]["providers"].reverse()  # identity first: Secrets are stored as they are
    monkeypatch.setattr(k0s, "render_encryption_config", lambda: yaml.safe_dump(cfg))
    assert failing(props("k0s")) == {"edge-secrets-encryption"}


def test_microshift_renders_audit_and_the_kubeconfig_mode_but_not_encryption_or_anonymous_auth() -> None:
    assert failing(props("microshift")) == {"edge-secrets-encryption", "edge-anonymous-auth-off"}


def test_kubeconfig_mode_is_set_by_the_k0s_and_microshift_installs() -> None:
    node = k0s_node()
    art = [UploadedArtifact("k0s", "dist/k0s-v1.33.4+k0s.0-amd64", "1" * 64, "/a/k0s")]
    script = driver_for("k0s").render_install(node, art)
    assert script.index("chmod 0600 -- /var/lib/k0s/pki/admin.conf") > script.index("svc_apply")
    ms = dataclasses.replace(node, host="ms-1", labels={}, registry_mirrors={})
    rpm = [UploadedArtifact("microshift", "rpms/microshift-4.19.0.x86_64.rpm", "1" * 64, "/a/m.rpm")]
    script = driver_for("microshift").render_install(ms, rpm)
    assert "-name kubeconfig -exec chmod 0600 -- {} +" in script


def k0s_node() -> NodeSpec:
    return node_with(site="store", host="store-1", address="10.0.1.10")


# --- a rendered configuration that lacks a setting fails the matching rule -----------------------------


def drop_from_config(module: Any, change: Callable[[dict[str, Any], NodeSpec], None]) -> Callable[[NodeSpec], str]:
    original = module.render_config

    def render(node: NodeSpec) -> str:
        cfg = yaml.safe_load(original(node))
        change(cfg, node)
        return yaml.safe_dump(cfg)

    return render


def without_api_arg(prefix: str) -> Callable[[dict[str, Any], NodeSpec], None]:
    def change(cfg: dict[str, Any], node: NodeSpec) -> None:
        if "kube-apiserver-arg" in cfg:
            cfg["kube-apiserver-arg"] = [a for a in cfg["kube-apiserver-arg"] if not a.startswith(prefix)]

    return change


def without_k0s_arg(name: str) -> Callable[[dict[str, Any], NodeSpec], None]:
    return lambda cfg, node: cfg["spec"]["api"]["extraArgs"].pop(name)


def without(key: str) -> Callable[[dict[str, Any], NodeSpec], None]:
    return lambda cfg, node: cfg.pop(key, None)


LACKING = [
    ("k3s", k3s, without("secrets-encryption"), "edge-secrets-encryption"),
    ("k3s", k3s, without_api_arg("audit-log-path="), "edge-audit-log"),
    ("k3s", k3s, without_api_arg("anonymous-auth="), "edge-anonymous-auth-off"),
    ("k3s", k3s, without("write-kubeconfig-mode"), "edge-kubeconfig-mode"),
    ("k3s", k3s, without("protect-kernel-defaults"), "edge-protect-kernel-defaults"),
    ("k0s", k0s, without_k0s_arg("anonymous-auth"), "edge-anonymous-auth-off"),
    ("k0s", k0s, without_k0s_arg("encryption-provider-config"), "edge-secrets-encryption"),
    ("k0s", k0s, without_k0s_arg("audit-log-path"), "edge-audit-log"),
    ("k0s", k0s, without_k0s_arg("audit-policy-file"), "edge-audit-log"),
    ("microshift", microshift, lambda cfg, node: cfg["apiServer"].pop("auditLog"), "edge-audit-log"),
    ("microshift", microshift, lambda cfg, node: cfg.pop("kubelet"), "edge-protect-kernel-defaults"),
]


@pytest.mark.parametrize("dist, module, change, rule", LACKING, ids=[f"{d}-{r}" for d, _, _, r in LACKING])
def test_a_setting_missing_from_the_rendered_config_fails_its_rule(
    monkeypatch: pytest.MonkeyPatch,
    dist: str,
    module: Any,
    change: Callable[[dict[str, Any], NodeSpec], None],
    rule: str,
) -> None:
    before = failing(props(dist))
    assert rule not in before
    monkeypatch.setattr(module, "render_config", drop_from_config(module, change))
    assert failing(props(dist)) == before | {rule}


@pytest.mark.parametrize("module, attr", [(k0s, "_kubeconfig_mode_line"), (microshift, "_kubeconfig_mode_lines")])
def test_an_install_that_does_not_narrow_the_kubeconfig_fails_the_mode_rule(
    monkeypatch: pytest.MonkeyPatch, module: Any, attr: str
) -> None:
    dist = module.NAME
    assert "edge-kubeconfig-mode" not in failing(props(dist))
    monkeypatch.setattr(module, attr, lambda *a: "")
    assert "edge-kubeconfig-mode" in failing(props(dist))


def test_kernel_protection_turned_off_fails_for_k0s_workers() -> None:
    assert "edge-protect-kernel-defaults" not in failing(props("k0s"))
    assert "edge-protect-kernel-defaults" in failing(props("k0s", protect_kernel_defaults=False))


def test_one_server_without_a_setting_is_enough_to_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    def only_ha_2(cfg: dict[str, Any], node: NodeSpec) -> None:
        if node.host == "ha-2":
            cfg["write-kubeconfig-mode"] = "0644"

    monkeypatch.setattr(k3s, "render_config", drop_from_config(k3s, only_ha_2))
    found = props("k3s")
    assert found["install"]["kubeconfigMode"] == "0644"
    assert failing(found) == {"edge-kubeconfig-mode"}


def test_facts_combine_to_the_weakest_node() -> None:
    safe = {"secretsEncryption": True, "auditLog": True, "anonymousAuth": False, "kubeconfigMode": "0600"}
    assert combine_facts([safe, {**safe, "anonymousAuth": True}])["anonymousAuth"] is True
    assert combine_facts([safe, {"protectKernelDefaults": False}])["protectKernelDefaults"] is False
    # No kubelet anywhere: nothing for kernel protection to guard.
    assert combine_facts([safe])["protectKernelDefaults"] is True
    # No node could be rendered: nothing holds.
    assert failing({"site": "x", "install": combine_facts([])}) == set(INSTALL_RULES.values())


def test_a_site_the_driver_cannot_render_holds_no_fact(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(node: NodeSpec) -> str:
        raise DistributionError("x", "cannot render", "fix it")

    monkeypatch.setattr(k3s, "render_config", refuse)
    assert failing(props("k3s")) == set(INSTALL_RULES.values())


# --- flags that would override the rendered baseline -------------------------------------------------

OVERRIDES = [
    "--secrets-encryption=false",
    "--write-kubeconfig-mode=0644",
    "--protect-kernel-defaults=false",
    "--kube-apiserver-arg=anonymous-auth=true",
    "--kube-apiserver-arg=--audit-log-path=",
    "--kubelet-arg=anonymous-auth=true",
    "--token-file=/tmp/t",
    "--data-dir=/tmp/x",
]


@pytest.mark.parametrize("flag", OVERRIDES)
def test_k3s_flags_overriding_the_baseline_are_refused_by_the_driver(flag: str) -> None:
    node = dataclasses.replace(k0s_node(), extra_args=("--debug", flag))
    with pytest.raises(DistributionError) as info:
        k3s.render_config(node)
    assert info.value.field.endswith(".extra_args") and flag in info.value.message and "baseline" in info.value.fix


@pytest.mark.parametrize(
    "flag", ["--kubelet-extra-args=--protect-kernel-defaults=false", "--labels=a=b", "--data-dir=/x"]
)
def test_k0s_flags_overriding_what_it_renders_are_refused(flag: str) -> None:
    with pytest.raises(DistributionError, match="overrides"):
        k0s.install_flags(dataclasses.replace(k0s_node(), extra_args=(flag,)))


def test_flags_that_leave_the_baseline_alone_still_pass() -> None:
    node = dataclasses.replace(
        k0s_node(),
        extra_args=(
            "--kube-apiserver-arg=event-ttl=2h",
            "--disable=traefik,servicelb",
            "--kubelet-arg=enforce-node-allocatable=",
            "--debug",
        ),
    )
    assert driver_for("k3s").install_facts(node)["secretsEncryption"] is True


# --- mirror endpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "environment, endpoint, refused",
    [
        ("prod", "http://10.0.0.5:5000", True),
        ("prod", "https://mirror.example:5000", False),
        ("dev", "http://10.0.0.5:5000", False),
    ],
)
def test_plain_http_mirrors_are_refused_in_prod(environment: str, endpoint: str, refused: bool) -> None:
    raw = {**SITES["k3s"], "registry_mirrors": {"docker.io": ["https://mirror.example", endpoint]}}
    found = site_props(
        Inventory.model_validate({"fleet": "unit", "environment": environment, "sites": [raw]}).sites[0],
        environment,
        Path("."),
    )
    assert found["registryMirrors"] == {"docker.io": ["https://mirror.example", endpoint]}
    rule = get_rule("edge-mirror-https")
    assert rule is not None
    violations = rule.check(Resource("edge:site:EdgeSite", "plant", found), rule.defaults())
    assert [v.path for v in violations] == (['registryMirrors["docker.io"][1]'] if refused else [])
