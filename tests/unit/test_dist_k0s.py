"""k0s renderer: ClusterConfig checked against the documented fields, install flags per
role, join tokens minted on the first controller, containerd mirror configuration."""

from __future__ import annotations

import dataclasses
import subprocess
import tomllib

import pytest
import yaml

from components.distributions import DistributionError, NodeSpec, k0s
from components.distributions.artifacts import UploadedArtifact
from components.distributions.bash import LIB
from components.distributions.k0s import K0sDriver
from tests.unit.dist_fixtures import node_with

K0S = K0sDriver()

# ClusterConfig fields (docs/configuration.md of k0sproject/k0s); None = free-form below.
SCHEMA: dict = {
    "apiVersion": None,
    "kind": None,
    "metadata": {"name": None},
    "spec": {
        "api": {
            "externalAddress": None,
            "address": None,
            "sans": None,
            "extraArgs": None,
            "port": None,
            "k0sApiPort": None,
        },
        "storage": {
            "type": None,
            "etcd": {"peerAddress": None, "extraArgs": None, "externalCluster": None},
            "kine": {"dataSource": None},
        },
        "network": {
            "provider": None,
            "podCIDR": None,
            "serviceCIDR": None,
            "clusterDomain": None,
            "calico": None,
            "kuberouter": None,
            "kubeProxy": None,
            "nodeLocalLoadBalancing": None,
            "controlPlaneLoadBalancing": None,
            "dualStack": None,
        },
        "controllerManager": None,
        "scheduler": None,
        "workerProfiles": None,
        "featureGates": None,
        "images": {
            "konnectivity": None,
            "metricsserver": None,
            "kubeproxy": None,
            "coredns": None,
            "pause": None,
            "calico": None,
            "kuberouter": None,
            "repository": None,
            "default_pull_policy": None,
        },
        "extensions": None,
        "konnectivity": {"agentPort": None, "adminPort": None},
        "telemetry": {"enabled": None},
        "installConfig": {
            "users": {
                "etcdUser": None,
                "kineUser": None,
                "konnectivityUser": None,
                "kubeAPIserverUser": None,
                "kubeSchedulerUser": None,
            }
        },
    },
}
# Kubelet configuration fields a worker profile may set (KubeletConfiguration v1beta1).
KUBELET_FIELDS = {"systemReserved", "kubeReserved", "evictionHard", "evictionSoft", "maxPods"}

BASE = node_with(
    site="plant-b", host="ctl-1", address="10.0.1.11", labels={"edgefleet.io/site": "plant-b"}, tls_sans=["10.0.1.10"]
)
JOIN = "https://10.0.1.11:6443"
SINGLE = BASE
HA_FIRST = dataclasses.replace(BASE, ha=True)
HA_JOIN = dataclasses.replace(BASE, host="ctl-2", address="10.0.1.12", first_server=False, server_url=JOIN, ha=True)
WORKER = dataclasses.replace(
    BASE,
    host="wrk-1",
    address="10.0.1.21",
    role="agent",
    first_server=False,
    server_url=JOIN,
    taints=["dedicated=inference:NoSchedule"],
)
GATEWAY = dataclasses.replace(BASE, host="gw-2", profile="gateway", service_manager="supervised")
ARTS = [
    UploadedArtifact("k0s", "dist/k0s-v1.33.4+k0s.0-amd64", "1" * 64, "/a/k0s"),
    UploadedArtifact("k0s-airgap-bundle", "dist/k0s-airgap-bundle-v1.33.4+k0s.0-amd64.tar", "2" * 64, "/a/bundle"),
    UploadedArtifact("k0s-airgap-bundle", "dist/k0s-airgap-bundle-v1.33.4+k0s.0-arm64.tar", "3" * 64, "/a/bundle-arm"),
]


def assert_schema(data: object, schema: object, path: str = "") -> None:
    if schema is None:
        return
    assert isinstance(data, dict), path
    unknown = set(data) - set(schema)  # type: ignore[arg-type]
    assert not unknown, f"{path or 'ClusterConfig'}: undocumented fields {unknown}"
    for key, value in data.items():
        assert_schema(value, schema[key], f"{path}.{key}")  # type: ignore[index]


@pytest.mark.parametrize("node", [SINGLE, HA_FIRST, HA_JOIN, GATEWAY], ids=["single", "ha-first", "ha-join", "gateway"])
def test_cluster_config_uses_only_documented_fields(node: NodeSpec) -> None:
    cfg = yaml.safe_load(k0s.render_config(node))
    assert cfg["apiVersion"] == "k0s.k0sproject.io/v1beta1" and cfg["kind"] == "ClusterConfig"
    assert_schema(cfg, SCHEMA)
    spec = cfg["spec"]
    assert spec["api"]["address"] == node.address and set(node.tls_sans) <= set(spec["api"]["sans"])
    wanted = {"provider": "kuberouter", "podCIDR": node.cluster_cidr, "serviceCIDR": node.service_cidr}
    assert {k: spec["network"][k] for k in wanted} == wanted
    assert spec["telemetry"] == {"enabled": False}
    for profile in spec.get("workerProfiles", []):
        assert set(profile["values"]) <= KUBELET_FIELDS


def test_ha_controllers_run_etcd_and_a_single_controller_kine() -> None:
    for node in (HA_FIRST, HA_JOIN):
        storage = yaml.safe_load(k0s.render_config(node))["spec"]["storage"]
        assert storage == {"type": "etcd", "etcd": {"peerAddress": node.address}}
    assert yaml.safe_load(k0s.render_config(SINGLE))["spec"]["storage"] == {"type": "kine"}


def test_gateway_controller_reserves_memory_and_drops_metrics_server() -> None:
    spec = yaml.safe_load(k0s.render_config(GATEWAY))["spec"]
    (profile,) = spec["workerProfiles"]
    assert profile["name"] == k0s.GATEWAY_PROFILE
    assert profile["values"]["evictionHard"]["memory.available"] == "100Mi"
    flags = k0s.install_flags(GATEWAY)
    assert f"--profile={k0s.GATEWAY_PROFILE}" in flags and "--disable-components=metrics-server" in flags


def test_install_flags_follow_the_role() -> None:
    first = k0s.install_flags(HA_FIRST)
    assert "--enable-worker" in first and "--no-taints" in first and f"--config={k0s.CONFIG_FILE}" in first
    assert not any(f.startswith("--token-file") for f in first)
    assert f"--token-file={k0s.TOKEN_FILE}" in k0s.install_flags(HA_JOIN)
    worker = k0s.install_flags(WORKER)
    assert f"--token-file={k0s.TOKEN_FILE}" in worker and not any(f.startswith("--config") for f in worker)
    assert "--taints=dedicated=inference:NoSchedule" in worker
    assert "--kubelet-extra-args=--node-ip=10.0.1.21 --hostname-override=wrk-1 --protect-kernel-defaults=true" in worker
    agentless = k0s.install_flags(dataclasses.replace(HA_FIRST, disable_agent=True))
    assert "--enable-worker" not in agentless and not any(f.startswith("--labels") for f in agentless)


def test_workers_take_no_cluster_config() -> None:
    with pytest.raises(DistributionError, match="workers take no ClusterConfig"):
        k0s.render_config(WORKER)
    assert k0s.CONFIG_FILE not in K0S.config_files(WORKER)


def test_join_tokens_are_minted_on_the_first_controller_per_role() -> None:
    assert K0S.render_join_token(HA_FIRST) is None
    controller = K0S.render_join_token(HA_JOIN)
    worker = K0S.render_join_token(WORKER)
    assert controller and "token create --data-dir=/var/lib/k0s --role=controller --expiry=1h" in controller
    assert worker and "--role=worker" in worker
    # stdout carries the token and nothing else: every other message goes to stderr.
    stdout_writes = [ln for ln in worker.splitlines() if ln.strip().startswith(("printf", "echo")) and ">&2" not in ln]
    assert [ln.strip() for ln in stdout_writes] == ["printf '%s\\n' \"$token\""]


def test_install_under_systemd_uses_k0s_install_and_reinstalls_only_when_flags_change() -> None:
    script = K0S.render_install(HA_JOIN, ARTS)
    assert "/usr/local/bin/k0s install controller --force --data-dir=/var/lib/k0s" in script
    assert "if ((args_changed)) || [[ ! -e /etc/systemd/system/k0scontroller.service ]]" in script
    assert "write_secret K0S_TOKEN /etc/k0s/k0stoken" in script
    assert "install_copy /a/bundle /var/lib/k0s/images/k0s-airgap-bundle.tar 0644" in script
    assert "/a/bundle-arm" not in script.split("# Every artifact is verified")[1].split("require_arch")[1]
    first = K0S.render_install(HA_FIRST, ARTS)
    assert "write_secret" not in first.split("require_root\n", 1)[1], "the first controller joins nothing"


def test_supervised_install_runs_the_same_command_under_the_supervisor() -> None:
    script = K0S.render_install(GATEWAY, ARTS)
    assert "k0s install" not in script
    assert "CMD=(/usr/local/bin/k0s controller --data-dir=/var/lib/k0s" in script


def test_registry_mirrors_become_containerd_hosts_files() -> None:
    node = dataclasses.replace(
        WORKER, registry_mirrors={"docker.io": ["https://mirror.plant-b:5000"], "quay.io": ["http://10.0.1.5:5000"]}
    )
    files = K0S.config_files(node)
    docker = tomllib.loads(files["/etc/k0s/containerd.d/certs.d/docker.io/hosts.toml"][0])
    assert docker == {
        "server": "https://registry-1.docker.io",
        "host": {"https://mirror.plant-b:5000": {"capabilities": ["pull", "resolve"]}},
    }
    quay = tomllib.loads(files["/etc/k0s/containerd.d/certs.d/quay.io/hosts.toml"][0])
    assert quay["server"] == "https://quay.io" and "http://10.0.1.5:5000" in quay["host"]
    script = K0S.render_install(node, ARTS)
    assert "io.containerd.cri.v1.images" in script and "io.containerd.grpc.v1.cri" in script


def test_uninstall_leaves_etcd_before_resetting() -> None:
    script = K0S.render_uninstall(HA_JOIN)
    assert script.index("etcd leave") < script.index("svc_stop\n") < script.index("reset --data-dir=/var/lib/k0s")
    assert "etcd leave" not in K0S.render_uninstall(WORKER)


def test_kubeconfig_and_readiness_use_the_admin_config() -> None:
    assert K0S.kubeconfig_path(HA_FIRST) == "/var/lib/k0s/pki/admin.conf"
    assert "cat -- /var/lib/k0s/pki/admin.conf" in K0S.render_fetch_kubeconfig(HA_FIRST)
    # The install waits for the API through the admin kubeconfig; a worker's, for its kubelet.
    ready = "local_ready() { env KUBECONFIG=/var/lib/k0s/pki/admin.conf /usr/local/bin/k0s kubectl get --raw /readyz; }"
    assert ready in K0S.render_install(HA_FIRST, ARTS)
    assert "local_ready() { svc_running && kubelet_healthy; }" in K0S.render_install(WORKER, ARTS)


def test_second_controller_without_ha_is_refused() -> None:
    with pytest.raises(DistributionError, match="embedded etcd"):
        k0s.install_flags(dataclasses.replace(HA_JOIN, ha=False))


def test_worker_kernel_protection_follows_the_node() -> None:
    assert k0s.SYSCTL_FILE in K0S.config_files(WORKER)
    assert "ensure_sysctl kernel.panic 10\n" in K0S.render_install(WORKER, ARTS)
    lax = dataclasses.replace(WORKER, protect_kernel_defaults=False)
    assert not any("protect-kernel-defaults" in f for f in k0s.install_flags(lax))
    assert k0s.SYSCTL_FILE not in K0S.config_files(lax)
    assert "ensure_sysctl kernel." not in K0S.render_install(lax, ARTS)
    # A controller without a worker runs no kubelet: nothing to protect.
    controller = dataclasses.replace(HA_FIRST, disable_agent=True)
    assert k0s.SYSCTL_FILE not in K0S.config_files(controller)


# --- Secrets encryption and the audit log ----------------------------------------------------------

KEY = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy0wMTIzNDU2Nzg="
OTHER_KEY = "b3RoZXIta2V5LW9mLTMyLWJ5dGVzLTAxMjM0NTY3ODk="


def run_encryption_block(tmp_path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The install's encryption step under bash, with ownership changes recorded instead of made."""
    node = dataclasses.replace(SINGLE, data_dir=str(tmp_path))
    script = (
        "set -euo pipefail\nHOST=ctl-1\n"
        + LIB["log"]
        + LIB["files"]
        + 'chown() { printf "%s\\n" "$*" >>"$CHOWNS"; }\n'
        + k0s._encryption_lines(node)
    )
    return subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "CHOWNS": str(tmp_path / "chowns"), **env},
    )


def key(value: str) -> dict[str, str]:
    """The environment the site component gives a controller's install."""
    return {k0s.ENCRYPTION_KEY_ENV: value}


def test_controller_config_encrypts_secrets_and_writes_the_audit_log() -> None:
    args = yaml.safe_load(k0s.render_config(SINGLE))["spec"]["api"]["extraArgs"]
    assert args["encryption-provider-config"] == "/var/lib/k0s/encryption.cfg"
    assert args["audit-policy-file"] == k0s.AUDIT_POLICY_FILE
    assert args["audit-log-path"].startswith("/var/lib/k0s/")
    assert {"audit-log-maxage", "audit-log-maxbackup", "audit-log-maxsize"} <= set(args)
    policy = yaml.safe_load(K0S.config_files(SINGLE)[k0s.AUDIT_POLICY_FILE][0])
    assert policy["kind"] == "Policy" and policy["rules"]
    # Secret bodies never reach the audit log.
    secrets = [r for r in policy["rules"] if any("secrets" in g["resources"] for g in r.get("resources", []))]
    assert secrets and secrets[0]["level"] == "Metadata"
    assert policy["rules"].index(secrets[0]) < next(i for i, r in enumerate(policy["rules"]) if r["level"] == "Request")
    provider = yaml.safe_load(k0s.render_encryption_config())["resources"][0]
    assert provider["resources"] == ["secrets"] and "secretbox" in provider["providers"][0]
    assert k0s.AUDIT_POLICY_FILE not in K0S.config_files(WORKER)


def test_the_key_comes_from_the_environment_only_and_is_readable_by_the_api_server_only(tmp_path) -> None:
    script = K0S.render_install(SINGLE, ARTS[:2])
    assert KEY not in script and "$K0S_ENCRYPTION_KEY" in script
    assert "K0S_ENCRYPTION_KEY" not in K0S.render_install(WORKER, ARTS[:2])
    done = run_encryption_block(tmp_path, key(KEY))
    assert done.returncode == 0, done.stderr
    cfg_file = tmp_path / "encryption.cfg"
    cfg = yaml.safe_load(cfg_file.read_text())
    assert cfg["resources"][0]["providers"][0]["secretbox"]["keys"][0]["secret"] == KEY
    assert oct(cfg_file.stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "chowns").read_text() == f"kube-apiserver:root -- {cfg_file}\n"
    assert KEY not in done.stderr
    # A re-run without the key keeps the file.
    again = run_encryption_block(tmp_path, {})
    assert again.returncode == 0, again.stderr
    assert yaml.safe_load(cfg_file.read_text()) == cfg


def test_a_changed_key_is_refused_until_the_host_lists_it(tmp_path) -> None:
    assert run_encryption_block(tmp_path, key(KEY)).returncode == 0
    cfg_file = tmp_path / "encryption.cfg"
    before = cfg_file.read_text()
    refused = run_encryption_block(tmp_path, key(OTHER_KEY))
    assert refused.returncode != 0 and "add the new key" in refused.stderr and OTHER_KEY not in refused.stderr
    assert cfg_file.read_text() == before
    # The operator added the new key on the host (rotation, step one): the install proceeds.
    cfg_file.write_text(before + f"# next key: {OTHER_KEY}\n")
    assert run_encryption_block(tmp_path, key(OTHER_KEY)).returncode == 0
    assert OTHER_KEY in cfg_file.read_text() and KEY not in cfg_file.read_text()


def test_a_first_install_without_the_key_stops(tmp_path) -> None:
    done = run_encryption_block(tmp_path, {})
    assert done.returncode != 0 and "K0S_ENCRYPTION_KEY is not set" in done.stderr


def test_the_install_creates_the_api_server_user_before_handing_it_the_files() -> None:
    script = K0S.render_install(SINGLE, ARTS[:2])
    user = script.index("id -u kube-apiserver")
    chown = script.index("chown kube-apiserver:root -- /var/lib/k0s/encryption.cfg")
    assert user < chown < script.rindex("\nsvc_apply\n")
    assert "install -d -m 0700 -o kube-apiserver -- /var/lib/k0s/audit" in script
