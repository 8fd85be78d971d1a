"""K3s renderer: configuration per topology and profile checked against the documented flag
names, hardening files, and the install/uninstall scripts executed for real in a throwaway
mount/network/pid namespace with a stand-in binary (idempotency, restarts, secrets, refusal
of a tampered artifact, an upgrade as the host component runs it, clean removal)."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from components.contract import CHECK_ABSENT, CHECK_PRESENT
from components.distributions import DistributionError, NodeSpec, k3s
from components.distributions.artifacts import UploadedArtifact
from components.distributions.bash import ARTIFACT_VERIFY_EXIT
from components.distributions.k3s import K3sDriver
from components.host import NodeSteps
from tests.unit.dist_fixtures import node_with

K3S = K3sDriver()

# Flag names of `k3s server` and `k3s agent` (docs/cli/server.md and agent.md of k3s-io/docs):
# a configuration key is a flag name without the dashes.
AGENT_FLAGS = {
    "config",
    "debug",
    "v",
    "vmodule",
    "log",
    "alsologtostderr",
    "token",
    "token-file",
    "server",
    "data-dir",
    "node-name",
    "with-node-id",
    "node-label",
    "node-taint",
    "image-credential-provider-bin-dir",
    "image-credential-provider-config",
    "selinux",
    "lb-server-port",
    "protect-kernel-defaults",
    "container-runtime-endpoint",
    "default-runtime",
    "image-service-endpoint",
    "pause-image",
    "snapshotter",
    "private-registry",
    "disable-default-registry-endpoint",
    "nonroot-devices",
    "node-ip",
    "bind-address",
    "node-external-ip",
    "node-internal-dns",
    "node-external-dns",
    "resolv-conf",
    "flannel-iface",
    "flannel-conf",
    "flannel-cni-conf",
    "kubelet-arg",
    "kube-proxy-arg",
    "enable-pprof",
    "rootless",
    "prefer-bundled-bin",
    "docker",
    "vpn-auth",
    "vpn-auth-file",
    "disable-apiserver-lb",
}
SERVER_FLAGS = AGENT_FLAGS | {
    "https-listen-port",
    "advertise-address",
    "advertise-port",
    "tls-san",
    "tls-san-security",
    "cluster-cidr",
    "service-cidr",
    "service-node-port-range",
    "cluster-dns",
    "cluster-domain",
    "flannel-backend",
    "flannel-ipv6-masq",
    "flannel-external-ip",
    "egress-selector-mode",
    "servicelb-namespace",
    "write-kubeconfig",
    "write-kubeconfig-mode",
    "write-kubeconfig-group",
    "helm-job-image",
    "agent-token",
    "agent-token-file",
    "cluster-init",
    "cluster-reset",
    "cluster-reset-restore-path",
    "kube-apiserver-arg",
    "etcd-arg",
    "kube-controller-manager-arg",
    "kube-scheduler-arg",
    "kube-cloud-controller-manager-arg",
    "datastore-endpoint",
    "datastore-cafile",
    "datastore-certfile",
    "datastore-keyfile",
    "etcd-expose-metrics",
    "etcd-disable-snapshots",
    "etcd-snapshot-name",
    "etcd-snapshot-schedule-cron",
    "etcd-snapshot-retention",
    "etcd-snapshot-dir",
    "etcd-snapshot-compress",
    "default-local-storage-path",
    "disable",
    "disable-scheduler",
    "disable-cloud-controller",
    "disable-kube-proxy",
    "disable-network-policy",
    "disable-helm-controller",
    "embedded-registry",
    "supervisor-metrics",
    "system-default-registry",
    "secrets-encryption",
    "secrets-encryption-provider",
    "disable-agent",
}
# Must be identical on every server of a cluster (docs/cli/server.md, critical configuration values).
CRITICAL = {"cluster-cidr", "service-cidr", "secrets-encryption", "disable"}

BASE = node_with(
    site="plant-a",
    host="ha-1",
    address="10.213.7.21",
    labels={"edgefleet.io/site": "plant-a"},
    tls_sans=["10.213.7.21", "10.213.7.20"],
)
JOIN = "https://10.213.7.20:6443"
SINGLE = dataclasses.replace(BASE, host="single-1", address="10.213.7.11", tls_sans=["10.213.7.11"])
HA_FIRST = dataclasses.replace(BASE, ha=True)
HA_JOIN = dataclasses.replace(BASE, host="ha-2", address="10.213.7.22", first_server=False, server_url=JOIN, ha=True)
AGENT = dataclasses.replace(
    BASE,
    host="agent-1",
    address="10.213.7.41",
    role="agent",
    first_server=False,
    server_url=JOIN,
    taints=["dedicated=inference:NoSchedule"],
    labels={"gpu": "none"},
)
GATEWAY = dataclasses.replace(
    BASE, host="gw-1", address="10.213.7.31", tls_sans=["10.213.7.31"], profile="gateway", service_manager="supervised"
)
AGENTLESS = dataclasses.replace(HA_FIRST, disable_agent=True)


def config(node: NodeSpec) -> dict:
    return yaml.safe_load(k3s.render_config(node))


@pytest.mark.parametrize(
    "node",
    [SINGLE, HA_FIRST, HA_JOIN, AGENT, GATEWAY, AGENTLESS],
    ids=["single", "ha-first", "ha-join", "agent", "gateway", "agentless"],
)
def test_config_uses_only_documented_flag_names(node: NodeSpec) -> None:
    keys = set(config(node))
    allowed = SERVER_FLAGS if node.role == "server" else AGENT_FLAGS
    assert keys <= allowed, f"undocumented keys: {keys - allowed}"
    cfg = config(node)
    assert cfg["token-file"] == k3s.TOKEN_FILE and "token" not in cfg
    assert cfg["node-name"] == node.host and cfg["node-ip"] == node.address


def test_single_node_server_runs_sqlite_and_is_hardened() -> None:
    cfg = config(SINGLE)
    assert "cluster-init" not in cfg and "server" not in cfg
    assert cfg["secrets-encryption"] is True and cfg["protect-kernel-defaults"] is True
    assert cfg["write-kubeconfig-mode"] == "0600"
    api = dict(a.split("=", 1) for a in cfg["kube-apiserver-arg"])
    assert api["anonymous-auth"] == "false"
    assert api["audit-log-path"] == "/var/lib/rancher/k3s/server/logs/audit.log"
    assert api["audit-policy-file"] == "/var/lib/rancher/k3s/server/audit.yaml"
    assert api["admission-control-config-file"] == "/var/lib/rancher/k3s/server/psa.yaml"
    assert {api["audit-log-maxage"], api["audit-log-maxbackup"], api["audit-log-maxsize"]} == {"30", "10", "100"}
    kubelet = dict(a.split("=", 1) for a in cfg["kubelet-arg"])
    assert kubelet["streaming-connection-idle-timeout"] == "5m" and kubelet["make-iptables-util-chains"] == "true"
    assert "disable" not in cfg and "bind-address" not in cfg


def test_ha_first_server_initialises_etcd_and_joiners_point_at_it() -> None:
    first, join = config(HA_FIRST), config(HA_JOIN)
    assert first["cluster-init"] is True and "server" not in first
    assert join["server"] == JOIN and "cluster-init" not in join
    assert {k: first.get(k) for k in CRITICAL} == {k: join.get(k) for k in CRITICAL}
    assert (
        k3s.render_psa_config()
        and K3S.config_files(HA_JOIN)[f"{k3s.DEFAULT_DATA_DIR}/server/psa.yaml"][0]
        == K3S.config_files(HA_FIRST)[f"{k3s.DEFAULT_DATA_DIR}/server/psa.yaml"][0]
    )


def test_agent_carries_only_node_settings() -> None:
    cfg = config(AGENT)
    assert cfg["server"] == JOIN
    assert cfg["node-taint"] == ["dedicated=inference:NoSchedule"] and cfg["node-label"] == ["gpu=none"]
    assert not {"tls-san", "secrets-encryption", "cluster-init", "kube-apiserver-arg", "cluster-cidr"} & set(cfg)
    files = K3S.config_files(AGENT)
    assert not any(p.endswith(("psa.yaml", "audit.yaml")) for p in files)


def test_gateway_profile_disables_addons_reserves_memory_and_binds_the_management_address() -> None:
    cfg = config(GATEWAY)
    assert set(cfg["disable"]) == {"traefik", "servicelb", "metrics-server", "local-storage"}
    assert cfg["bind-address"] == cfg["advertise-address"] == GATEWAY.address
    kubelet = dict(a.split("=", 1) for a in cfg["kubelet-arg"])
    for reservation in ("system-reserved", "kube-reserved"):
        parts = dict(p.split("=") for p in kubelet[reservation].split(","))
        assert parts["memory"].endswith("Mi") and int(parts["memory"][:-2]) <= 256
    eviction = dict(p.split("<") for p in kubelet["eviction-hard"].split(","))
    assert eviction["memory.available"] == "100Mi"
    reserved = sum(
        int(dict(p.split("=") for p in kubelet[r].split(","))["memory"][:-2])
        for r in ("system-reserved", "kube-reserved")
    )
    assert reserved + 100 < 1024 / 2, "a 1 GiB gateway keeps at least half its memory for workloads"


def test_agentless_server_has_no_kubelet_settings() -> None:
    cfg = config(AGENTLESS)
    assert cfg["disable-agent"] is True
    assert not {"kubelet-arg", "protect-kernel-defaults", "node-label"} & set(cfg)
    assert k3s.SYSCTL_FILE not in K3S.config_files(AGENTLESS)


def test_psa_enforces_restricted_and_exempts_only_kube_system() -> None:
    adm = yaml.safe_load(k3s.render_psa_config())
    assert adm["kind"] == "AdmissionConfiguration" and adm["apiVersion"] == "apiserver.config.k8s.io/v1"
    plugins = {p["name"]: p["configuration"] for p in adm["plugins"]}
    pod = plugins["PodSecurity"]
    assert pod["kind"] == "PodSecurityConfiguration"
    assert {pod["defaults"][m] for m in ("enforce", "audit", "warn")} == {"restricted"}
    assert pod["exemptions"]["namespaces"] == ["kube-system"]
    # EventRateLimit is enabled in kube-apiserver-arg, so it must have its configuration here.
    assert plugins["EventRateLimit"]["limits"][0]["type"] == "Server"


def test_audit_policy_records_metadata_never_bodies() -> None:
    policy = yaml.safe_load(k3s.render_audit_policy())
    assert policy["apiVersion"] == "audit.k8s.io/v1" and policy["kind"] == "Policy"
    levels = {r["level"] for r in policy["rules"]}
    assert levels <= {"None", "Metadata"}
    assert policy["rules"][-1] == {"level": "Metadata"}


def test_registries_lists_the_site_mirrors() -> None:
    node = dataclasses.replace(
        SINGLE,
        registry_mirrors={"docker.io": ["https://mirror.plant-a:5000"], "ghcr.io": ["https://mirror.plant-a:5001"]},
    )
    assert yaml.safe_load(k3s.render_registries(node)) == {
        "mirrors": {
            "docker.io": {"endpoint": ["https://mirror.plant-a:5000"]},
            "ghcr.io": {"endpoint": ["https://mirror.plant-a:5001"]},
        }
    }
    assert K3S.config_files(node)[k3s.REGISTRIES_FILE][1] == 0o600
    with pytest.raises(DistributionError, match="not a registry endpoint"):
        k3s.render_registries(dataclasses.replace(SINGLE, registry_mirrors={"docker.io": ["mirror:5000"]}))


def test_file_modes_keep_configuration_private() -> None:
    files = K3S.config_files(HA_FIRST)
    assert {
        files[p][1]
        for p in (
            k3s.CONFIG_FILE,
            f"{k3s.DEFAULT_DATA_DIR}/server/audit.yaml",
            f"{k3s.DEFAULT_DATA_DIR}/server/psa.yaml",
        )
    } == {0o600}


@pytest.mark.parametrize(
    "node,field,needle",
    [
        (dataclasses.replace(AGENT, server_url=None), "server_url", "needs the URL of a server"),
        (dataclasses.replace(HA_JOIN, ha=False), "role", "embedded etcd"),
        (dataclasses.replace(HA_FIRST, server_url=JOIN), "server_url", "joins nothing"),
        (dataclasses.replace(AGENT, disable_agent=True), "disable_agent", "only servers"),
        (dataclasses.replace(SINGLE, extra_args=("debug",)), "extra_args", "not a k3s flag"),
    ],
)
def test_impossible_nodes_are_refused_naming_field_and_fix(node: NodeSpec, field: str, needle: str) -> None:
    with pytest.raises(DistributionError, match=needle) as err:
        k3s.render_config(node)
    assert err.value.field.endswith(field) and err.value.fix


def test_artifacts_are_named_and_image_archives_keep_their_suffix() -> None:
    arts = [
        UploadedArtifact("k3s", "dist/k3s", "1" * 64, "/a/k3s"),
        UploadedArtifact("k3s-airgap-images", "dist/k3s-airgap-images-amd64.tar.zst", "2" * 64, "/a/images"),
    ]
    script = K3S.render_install(SINGLE, arts)
    assert "install_copy /a/images /var/lib/rancher/k3s/agent/images/k3s-airgap-images.tar.zst 0644" in script
    with pytest.raises(DistributionError, match="not a K3s artifact"):
        K3S.render_install(SINGLE, [*arts, UploadedArtifact("kwok", "dist/kwok", "3" * 64, "/a/kwok")])


# --- executed in a sandbox ------------------------------------------------------------------------------

# kubectl's part in the node operations, for stand-in binaries: one Ready node whose cordon and
# annotation are kept in files under $FAKE_KUBE (default /var/lib/fake-kube), every call logged.
FAKE_KUBECTL = """fake_kubectl() {
  local kube="${FAKE_KUBE:-/var/lib/fake-kube}"
  mkdir -p "$kube"
  printf '%s\\n' "$*" >>"$kube/calls"
  case "$*" in
    "get --raw /readyz") [[ ! -e "$kube/api-down" ]] && echo ok ;;
    "get node "*" --ignore-not-found -o name") echo "node/$3" ;;
    "get nodes -o jsonpath="*) [[ -e "$kube/alone" ]] || echo 'other||True' ;;
    *"jsonpath={.spec.unschedulable}") cat "$kube/unschedulable" 2>/dev/null || true ;;
    *"jsonpath={.status.conditions"*) echo True ;;
    *"jsonpath={.metadata.annotations"*) cat "$kube/cordoned-by" 2>/dev/null || true ;;
    "annotate node "*" --overwrite edgefleet.io/cordoned-by=edgefleet") echo edgefleet >"$kube/cordoned-by" ;;
    "annotate node "*" edgefleet.io/cordoned-by-") rm -f "$kube/cordoned-by" ;;
    "cordon "*) echo true >"$kube/unschedulable" ;;
    "uncordon "*) rm -f "$kube/unschedulable" ;;
    "drain "*) ;;
    *) return 2 ;;
  esac
}
"""
FAKE_K3S = (
    """#!/usr/bin/env bash
# Stand-in for the k3s binary: server/agent record a start, leave a container shim behind in
# its own session (as containerd does) and stay up; run as kubectl (the real binary sees
# argv[0]; a script's argv[0] is lost to the kernel, so the kubectl arguments tell) it
# answers /readyz and plays the node.
"""
    + FAKE_KUBECTL
    + """if [[ "${1:-}" == --kubeconfig* ]]; then
  shift
  [[ -s /etc/rancher/k3s/k3s.yaml ]] || exit 1
  fake_kubectl "$@"
  exit
fi
case "${1:-}" in
  server|agent)
    printf '%s\\n' "$*" >>/var/log/fake-k3s-starts
    mkdir -p /etc/rancher/k3s
    printf 'apiVersion: v1\\nclusters:\\n- cluster:\\n    server: https://127.0.0.1:6443\\n  name: default\\n' \\
      >/etc/rancher/k3s/k3s.yaml
    chmod 600 /etc/rancher/k3s/k3s.yaml
    setsid bash -c 'exec -a /var/lib/rancher/k3s/data/fake/bin/containerd-shim-runc-v2 sleep 600' \\
      </dev/null >/dev/null 2>&1 &
    exec sleep 600 ;;
  *) exit 2 ;;
esac
"""
)
# Kernel parameters go to files: the sandbox shares the real kernel.
FAKE_SYSCTL = """#!/usr/bin/env bash
dir=/var/lib/fake-sysctl; mkdir -p "$dir"; write=""
while [[ "${1:-}" == -* ]]; do [[ "$1" == -w ]] && write=1; shift; done
if [[ -n "$write" ]]; then printf '%s\\n' "${1#*=}" >"$dir/${1%%=*}"; else cat "$dir/$1" 2>/dev/null || echo 0; fi
"""
SENTINEL = "sentinel-join-token-7f3a9c"
# "drain", "upgrade" and "ready" are what the host component runs when the version changes.
STEPS = [
    "verify_fails",
    "install",
    "install_again",
    "check_installed",
    "install_changed",
    "check_stale",
    "drain",
    "upgrade",
    "ready",
    "uninstall",
    "check_uninstalled",
    "uninstall_again",
]


def _sandbox_cmd() -> list[str] | None:
    """unshare with private mount, network and pid namespaces (user namespace when not root)."""
    if not shutil.which("unshare") or not Path("/proc/self/ns/mnt").exists():
        return None
    base = ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private"]
    cmd = base if os.geteuid() == 0 else [base[0], "--map-root-user", *base[1:]]
    probe = subprocess.run([*cmd, "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True, timeout=20)
    return cmd if probe.returncode == 0 else None


SANDBOX = _sandbox_cmd()


@pytest.fixture(scope="module")
def sandbox_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Runs the supervised K3s lifecycle once in a sandbox whose /etc, /usr/local, /var/lib
    and /var/log are overlays and /run a fresh tmpfs; returns what each step did."""
    if SANDBOX is None:
        pytest.skip("needs unshare with mount/net/pid namespaces (root or user namespaces)")
    work = tmp_path_factory.mktemp("k3s-sandbox")
    (work / "bin").mkdir()
    fake = work / "fake-k3s"
    fake.write_text(FAKE_K3S)
    (work / "bin/sysctl").write_text(FAKE_SYSCTL)
    for f in (fake, work / "bin/sysctl"):
        f.chmod(0o755)
    sha = hashlib.sha256(fake.read_bytes()).hexdigest()
    newer = work / "fake-k3s-newer"
    newer.write_text(FAKE_K3S + "# next release\n")
    newer.chmod(0o755)
    arch = "arm64" if platform.machine() == "aarch64" else "amd64"
    node = dataclasses.replace(GATEWAY, arch=arch, tls_sans=[GATEWAY.address])
    artifact = [UploadedArtifact("k3s", str(fake), sha, str(fake))]
    tampered = [UploadedArtifact("k3s", str(fake), "e" * 64, str(fake))]
    changed = dataclasses.replace(node, labels={**node.labels, "zone": "b"})
    # The next release, as the host component runs it: the sandbox host plays the server its
    # node operations run on, as the first server does for a host that joined it.
    release = [UploadedArtifact("k3s", str(newer), hashlib.sha256(newer.read_bytes()).hexdigest(), str(newer))]
    upgrade = NodeSteps(K3S, changed, release, joined=True, timeout_s=20)
    scripts = {
        "verify_fails": K3S.render_install(node, tampered, ready_timeout_s=20),
        "install": K3S.render_install(node, artifact, ready_timeout_s=20),
        "install_again": K3S.render_install(node, artifact, ready_timeout_s=20),
        "check_installed": K3S.render_check(node, artifact),
        "install_changed": K3S.render_install(changed, artifact, ready_timeout_s=20),
        "check_stale": K3S.render_check(node, artifact),  # the state still describes the old config
        "drain": upgrade.drain(),
        "upgrade": upgrade.install(),
        "ready": upgrade.ready(node.host),
        "uninstall": K3S.render_uninstall(node),
        "check_uninstalled": K3S.render_check(node, artifact),
        "uninstall_again": K3S.render_uninstall(node),
    }
    for name, text in scripts.items():
        (work / f"{name}.sh").write_text(text)
    state = work / "state"
    driver = textwrap.dedent(f"""\
        set -u
        W={work}
        for d in etc usrlocal varlib varlog; do mkdir -p "$W/upper/$d" "$W/work/$d"; done
        mount -t overlay overlay -o lowerdir=/etc,upperdir=$W/upper/etc,workdir=$W/work/etc /etc
        mount -t overlay overlay -o lowerdir=/usr/local,upperdir=$W/upper/usrlocal,workdir=$W/work/usrlocal /usr/local
        mount -t overlay overlay -o lowerdir=/var/lib,upperdir=$W/upper/varlib,workdir=$W/work/varlib /var/lib
        mount -t overlay overlay -o lowerdir=/var/log,upperdir=$W/upper/varlog,workdir=$W/work/varlog /var/log
        mount -t tmpfs tmpfs /run
        export PATH="$W/bin:$PATH" K3S_TOKEN={SENTINEL} K3S_AGENT_TOKEN=agent-{SENTINEL}
        mkdir -p {state}
        # Another host on the same kernel: same paths, its own mount namespace and session.
        setsid unshare --mount --propagation private \\
          bash -c 'exec -a /var/lib/rancher/k3s/data/other/bin/containerd-shim-runc-v2 sleep 600' \\
          </dev/null >/dev/null 2>&1 &
        OURS='/usr/local/bin/k3s |sleep 600|bash /usr/local/lib/edgefleet/|/var/lib/rancher/k3s/data/fake/'
        for step in {" ".join(STEPS)}; do
          if [[ $step == uninstall ]] && command -v iptables-restore >/dev/null && command -v ipset >/dev/null; then
            # What kube-proxy, kube-router and flannel leave: more rules than a pipe holds at once.
            {{ echo '*filter'; echo ':KUBE-ROUTER-SANDBOX - [0:0]'; echo ':FLANNEL-FWD - [0:0]'
               for i in $(seq 1 3000); do
                 echo "-A KUBE-ROUTER-SANDBOX -s 10.9.$((i / 250)).$((i % 250))/32 -j ACCEPT"
               done
               echo '-A FORWARD -j FLANNEL-FWD'; echo COMMIT; }} | iptables-restore --noflush
            ipset create KUBE-DST-SANDBOX hash:ip
            {{ iptables-save | grep -ciE 'KUBE-|flannel'; ipset list -n; }} >"{state}/$step.seeded"
          fi
          bash "$W/$step.sh" >"{state}/$step.out" 2>"{state}/$step.err"
          echo $? >"{state}/$step.rc"
          {{ iptables-save 2>/dev/null | grep -ciE 'KUBE-|flannel'; ipset list -n 2>/dev/null; }} \
            >"{state}/$step.netfilter"
          cat /run/edgefleet/k3s.pid >"{state}/$step.pid" 2>/dev/null || true
          wc -l </var/log/fake-k3s-starts >"{state}/$step.starts" 2>/dev/null || echo 0 >"{state}/$step.starts"
          stat -c %a /etc/rancher/k3s/token >"{state}/$step.tokenmode" 2>/dev/null || true
          cat /etc/rancher/k3s/token >"{state}/$step.token" 2>/dev/null || true
          ls /usr/local/bin/k3s /etc/rancher /var/lib/rancher /usr/local/lib/edgefleet/k3s-supervise /var/log/k3s.log \\
            >"{state}/$step.left" 2>/dev/null || true
          ps -eo args= | grep -E "^($OURS)" >"{state}/$step.procs" || true
          ps -eo args= | grep -E '^/var/lib/rancher/k3s/data/other/' >"{state}/$step.foreign" || true
          cat /var/lib/fake-kube/calls >"{state}/$step.kube" 2>/dev/null || true
          cat /var/lib/fake-kube/unschedulable /var/lib/fake-kube/cordoned-by >"{state}/$step.cordon" 2>/dev/null \\
            || true
        done
        """)
    subprocess.run([*SANDBOX, "bash", "-c", driver], check=True, timeout=120)
    out = {}
    for step in STEPS:

        def read(ext: str, step: str = step) -> str:
            path = state / f"{step}.{ext}"
            return path.read_text() if path.exists() else ""

        out[step] = {
            k: read(k)
            for k in (
                "out",
                "err",
                "rc",
                "pid",
                "starts",
                "tokenmode",
                "token",
                "left",
                "procs",
                "foreign",
                "kube",
                "cordon",
                "netfilter",
                "seeded",
            )
        }
        out[step]["rc"] = int(out[step]["rc"])
        out[step]["starts"] = int(out[step]["starts"].strip() or 0)
    return out


def test_a_tampered_artifact_stops_the_install_before_anything_changes(sandbox_run: dict) -> None:
    step = sandbox_run["verify_fails"]
    assert step["rc"] == ARTIFACT_VERIFY_EXIT
    assert "refusing artifact k3s" in step["err"] and "expected " + "e" * 64 in step["err"]
    assert step["left"] == "" and step["starts"] == 0, "nothing may be installed after a failed verification"


def test_install_starts_k3s_and_writes_the_token_privately(sandbox_run: dict) -> None:
    step = sandbox_run["install"]
    assert step["rc"] == 0, step["err"]
    assert step["starts"] == 1 and step["pid"].strip()
    assert "the K3s API is ready" in step["err"]
    assert step["token"] == SENTINEL and step["tokenmode"].strip() == "600"
    assert "sleep 600" in step["procs"] and "containerd-shim-runc-v2" in step["procs"]


def test_reinstall_with_the_same_inputs_changes_nothing_and_restarts_nothing(sandbox_run: dict) -> None:
    first, again = sandbox_run["install"], sandbox_run["install_again"]
    assert again["rc"] == 0, again["err"]
    assert again["starts"] == 1 and again["pid"] == first["pid"]
    assert "wrote" not in again["err"] and "installed" not in again["err"]
    assert "running and unchanged; not restarted" in again["err"]


def test_the_install_reads_back_present_then_absent_once_changed_or_removed(sandbox_run: dict) -> None:
    """What refresh sees: the install as the state describes it is present; a configuration
    other than the state's, or no K3s at all (a wiped host), is absent and says why."""
    verdicts = {
        s: sandbox_run[s]["out"].strip().splitlines() for s in ("check_installed", "check_stale", "check_uninstalled")
    }
    for step in verdicts:
        assert sandbox_run[step]["rc"] == 0, sandbox_run[step]["err"]
    assert verdicts["check_installed"] == [CHECK_PRESENT]
    assert verdicts["check_stale"] == [
        f"{CHECK_ABSENT}the configuration on {GATEWAY.host} is missing or not the one rendered"
    ]
    assert verdicts["check_uninstalled"] == [f"{CHECK_ABSENT}/usr/local/bin/k3s is not installed on {GATEWAY.host}"]


def test_a_changed_configuration_restarts_the_service(sandbox_run: dict) -> None:
    step = sandbox_run["install_changed"]
    assert step["rc"] == 0, step["err"]
    assert "wrote /etc/rancher/k3s/config.yaml" in step["err"] and "restarted k3s" in step["err"]
    assert step["starts"] == 2 and step["pid"] != sandbox_run["install"]["pid"]


def test_an_upgrade_drains_then_swaps_the_verified_binary_then_uncordons(sandbox_run: dict) -> None:
    drain, upgrade, ready = (sandbox_run[s] for s in ("drain", "upgrade", "ready"))
    for step in (drain, upgrade, ready):
        assert step["rc"] == 0, step["err"]
    before = sandbox_run["install_changed"]["kube"]
    drained = drain["kube"][len(before) :].splitlines()
    assert [c.split()[0] for c in drained if not c.startswith("get")] == ["annotate", "cordon", "drain"]
    assert "--ignore-daemonsets --delete-emptydir-data --timeout=20s" in drained[-1]
    assert drain["cordon"].split() == ["true", "edgefleet"], "cordoned, and marked as cordoned by the upgrade"
    assert "node gw-1 drained" in drain["err"]
    # Only the binary changed: it is verified, swapped in and the service restarted.
    assert "installed /usr/local/bin/k3s" in upgrade["err"] and "restarted k3s" in upgrade["err"]
    assert "wrote " not in upgrade["err"]
    assert upgrade["starts"] == 3 and upgrade["pid"] != sandbox_run["install_changed"]["pid"]
    assert upgrade["cordon"] == drain["cordon"], "the node stays cordoned until it is Ready"
    after = ready["kube"][len(upgrade["kube"]) :].splitlines()
    assert [c.split()[0] for c in after if not c.startswith("get")] == ["uncordon", "annotate"]
    assert ready["cordon"] == "" and "node gw-1 is Ready and uncordoned" in ready["err"]


def test_uninstall_leaves_the_host_clean_and_is_idempotent(sandbox_run: dict) -> None:
    for name in ("uninstall", "uninstall_again"):
        step = sandbox_run[name]
        assert step["rc"] == 0, step["err"]
        assert step["left"] == "" and step["procs"] == "" and step["pid"] == ""
    assert "removed /etc/rancher/k3s" in sandbox_run["uninstall"]["err"]
    assert "killing leftover process" in sandbox_run["uninstall"]["err"], "the container shims outlive the service"


def test_uninstall_removes_the_rules_and_sets_of_the_pod_network(sandbox_run: dict) -> None:
    step = sandbox_run["uninstall"]
    if not step["seeded"]:
        pytest.skip("needs iptables-restore and ipset in the sandbox")
    count, *sets = step["seeded"].split()
    assert int(count) > 3000 and sets == ["KUBE-DST-SANDBOX"], step["seeded"]
    assert step["netfilter"].split() == ["0"], f"left after the uninstall: {step['netfilter']}"


def test_uninstall_spares_processes_of_other_hosts_on_the_same_kernel(sandbox_run: dict) -> None:
    assert all("data/other/bin/containerd-shim" in step["foreign"] for step in sandbox_run.values())
    assert "removed /" not in sandbox_run["uninstall_again"]["err"], "a second uninstall finds nothing to remove"


def test_the_join_token_never_reaches_the_output(sandbox_run: dict) -> None:
    for step in sandbox_run.values():
        assert SENTINEL not in step["out"] + step["err"]


def test_kernel_protection_is_on_by_default_and_can_be_left_to_the_host() -> None:
    arts = [UploadedArtifact("k3s", "dist/k3s", "1" * 64, "/a/k3s")]
    assert config(AGENT)["protect-kernel-defaults"] is True
    assert k3s.SYSCTL_FILE in K3S.config_files(AGENT)
    assert "ensure_sysctl vm.overcommit_memory 1\n" in K3S.render_install(AGENT, arts)
    lax = dataclasses.replace(AGENT, protect_kernel_defaults=False)
    assert "protect-kernel-defaults" not in config(lax)
    assert k3s.SYSCTL_FILE not in K3S.config_files(lax)
    assert "ensure_sysctl vm." not in K3S.render_install(lax, arts), "the host's kernel settings are left alone"


OOM = dataclasses.replace(SINGLE, restrict_oom_score_adj=True)
CONTAINERD = f"{k3s.DEFAULT_DATA_DIR}/agent/etc/containerd"


@pytest.mark.parametrize(
    "node", [OOM, dataclasses.replace(AGENT, restrict_oom_score_adj=True)], ids=["server", "agent"]
)
def test_restricted_oom_score_adj_reaches_containerd_through_a_drop_in(node: NodeSpec) -> None:
    files = K3S.config_files(node)
    template, _ = files[f"{CONTAINERD}/config-v3.toml.tmpl"]
    drop_in, mode = files[f"{CONTAINERD}/config.d/10-edgefleet.toml"]
    assert mode == 0o600
    # K3s renders the template with Go's text/template: its own base, then containerd reads the import.
    first, base = template.splitlines()
    imports = tomllib.loads(first)["imports"]
    assert base == '{{ template "base" . }}'
    assert [fnmatch.fnmatch(f"{CONTAINERD}/config.d/10-edgefleet.toml", pattern) for pattern in imports] == [True]
    parsed = tomllib.loads(drop_in)
    assert parsed["version"] == 3
    assert parsed["plugins"]["io.containerd.cri.v1.runtime"] == {"restrict_oom_score_adj": True}
    script = K3S.render_install(node, [UploadedArtifact("k3s", "dist/k3s", "1" * 64, "/a/k3s")])
    assert f"put_file {CONTAINERD}/config.d/10-edgefleet.toml 0600" in script
    assert f"drop_file {CONTAINERD}" not in script


def test_containerd_keeps_its_defaults_unless_asked_and_without_a_kubelet() -> None:
    arts = [UploadedArtifact("k3s", "dist/k3s", "1" * 64, "/a/k3s")]
    assert not [p for p in K3S.config_files(SINGLE) if p.startswith(CONTAINERD)]
    # Turned off again: the drop-in goes; a template alone imports nothing.
    assert f"drop_file {CONTAINERD}/config.d/10-edgefleet.toml\n" in K3S.render_install(SINGLE, arts)
    agentless = dataclasses.replace(AGENTLESS, restrict_oom_score_adj=True)
    assert not [p for p in K3S.config_files(agentless) if p.startswith(CONTAINERD)]
    assert CONTAINERD not in K3S.render_install(agentless, arts)
    assert K3S.install_facts(OOM) == K3S.install_facts(SINGLE), "a runtime option changes no hardening fact"


def test_restricted_install_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = Path(__file__).resolve().parents[2] / ".venv/bin/shellcheck"
    script = tmp_path / "install.sh"
    script.write_text(K3S.render_install(OOM, [UploadedArtifact("k3s", "dist/k3s", "1" * 64, "/a/k3s")]))
    run = subprocess.run(
        [str(shellcheck), "--shell=bash", "--severity=style", str(script)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout


@pytest.mark.parametrize(
    "command,killed",
    [
        (
            "/usr/local/libexec/runtime/containerd-shim-runc-v2 -namespace k8s.io -id 3f2a"
            " -address /run/k3s/containerd/containerd.sock",
            True,
        ),
        (
            "/var/lib/rancher/k3s/data/abc/bin/containerd-shim-runc-v2 -namespace k8s.io -id 3f2a"
            " -address /run/k3s/containerd/containerd.sock -publish-binary x",
            True,
        ),
        ("/usr/bin/containerd-shim-runc-v2 -namespace moby -id 3f2a -address /run/containerd/containerd.sock", False),
        (
            "/usr/bin/containerd-shim-runc-v2 -namespace k8s.io -address /run/k3s/containerd/containerd.sock.other",
            False,
        ),
        ("/usr/sbin/sshd -D", False),
    ],
)
def test_uninstall_kills_the_shims_of_k3s_containerd_only(command: str, killed: bool) -> None:
    """The pattern the uninstall's kill_matching applies (bash =~ on the joined command line)."""
    [pattern] = next(
        shlex.split(line)[1:] for line in K3S.render_uninstall(SINGLE).splitlines() if line.startswith("kill_matching ")
    )
    run = subprocess.run(["bash", "-c", '[[ "$0" =~ $1 ]]', command, pattern], capture_output=True, timeout=10)
    assert (run.returncode == 0) == killed


def test_uninstall_destroys_the_network_policy_sets_after_their_rules() -> None:
    script = K3S.render_uninstall(SINGLE)
    assert script.index("ipset destroy") > script.index('"$tables-restore"')
    assert "grep -E '^(inet6:)?KUBE-'" in script, "only kube-router's own sets"


def test_the_inventory_asks_only_k3s_for_restricted_oom_scores() -> None:
    from pydantic import ValidationError

    from components.inventory.spec import DistributionSpec

    assert DistributionSpec(name="k3s", version="v1.33.4+k3s1", restrict_oom_score_adj=True).restrict_oom_score_adj
    with pytest.raises(ValidationError, match="only the k3s driver renders this containerd setting, not k0s"):
        DistributionSpec(name="k0s", version="v1.33.4+k0s.0", restrict_oom_score_adj=True)
