"""k0s: ClusterConfig and lifecycle scripts, after the k0s documentation and k0sctl's phases.

Servers are k0s controllers (with ``--enable-worker --no-taints`` unless they run agentless),
agents are k0s workers. Unlike K3s, a k0s join token is minted by the first controller
(``k0s token create``): :func:`render_join_token` prints one on stdout for the component to
capture as a secret and hand to the joining node's install as ``$K0S_TOKEN``.

Artifacts: ``k0s`` (the release binary) and, for air-gapped nodes, ``k0s-airgap-bundle``
image archives, imported by the worker from ``<data dir>/images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from components.distributions.artifacts import (
    UNAME_ARCH,
    UploadedArtifact,
    archive_suffix,
    for_arch,
    pick_artifact,
    verify_lines,
)
from components.distributions.base import DistributionError, NodeSpec
from components.distributions.bash import Script, ere_literal, heredoc_file, q, ready_function, wait_ready_lines
from components.distributions.checks import check_mirrors, check_node
from components.distributions.driver import Driver
from components.distributions.facts import InstallFacts, flag_values
from components.distributions.formats import toml_str, yaml_text
from components.distributions.kube import KubeAccess
from components.distributions.kubelet import (
    GATEWAY_EVICTION_HARD,
    GATEWAY_KUBE_RESERVED,
    GATEWAY_SYSTEM_RESERVED,
    SYSCTL_FILE,
    render_sysctl,
    sysctl_lines,
)
from components.distributions.templating import fill
from components.distributions.units import Service

NAME = "k0s"
TOKEN_ENV = "K0S_TOKEN"
BIN = "/usr/local/bin/k0s"
CONFIG_DIR = "/etc/k0s"
CONFIG_FILE = f"{CONFIG_DIR}/k0s.yaml"
TOKEN_FILE = f"{CONFIG_DIR}/k0stoken"
INSTALL_ARGS_FILE = f"{CONFIG_DIR}/edgefleet-install.args"
CONTAINERD_DIR = f"{CONFIG_DIR}/containerd.d"
REGISTRY_DROPIN = f"{CONTAINERD_DIR}/edgefleet-registry.toml"
CERTS_DIR = f"{CONTAINERD_DIR}/certs.d"
DEFAULT_DATA_DIR = "/var/lib/k0s"
BUNDLE_PREFIX = "k0s-airgap-bundle"
GATEWAY_PROFILE = "edgefleet-gateway"
JOIN_TOKEN_EXPIRY = "1h"
# k0s writes the admin kubeconfig itself; the install narrows it to root once the API is up.
ADMIN_KUBECONFIG_MODE = "0600"
# Secrets encryption and the audit log go through spec.api.extraArgs (as Mirantis MKE 4k
# does on k0s). The key reaches a controller's install in $K0S_ENCRYPTION_KEY (base64 of 32
# bytes), never in the script or on a command line; the install writes the configuration
# for the unprivileged user k0s runs kube-apiserver as.
ENCRYPTION_KEY_ENV = "K0S_ENCRYPTION_KEY"
APISERVER_USER = "kube-apiserver"
ENCRYPTION_KEY_PLACEHOLDER = "@K0S_ENCRYPTION_KEY@"
AUDIT_POLICY_FILE = f"{CONFIG_DIR}/audit-policy.yaml"
AUDIT_LOG_LIMITS = {"audit-log-maxage": "30", "audit-log-maxbackup": "10", "audit-log-maxsize": "100"}
# Metadata only for Secrets, ConfigMaps and tokens (their bodies must not reach the log),
# request bodies for other writes, nothing for the noisy read-only health endpoints.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "nonResourceURLs": ["/healthz*", "/livez*", "/readyz*", "/version"]},
        {
            "level": "Metadata",
            "resources": [
                {"group": "", "resources": ["secrets", "configmaps", "serviceaccounts/token"]},
                {"group": "authentication.k8s.io", "resources": ["tokenreviews"]},
            ],
        },
        {"level": "Request", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "Metadata"},
    ],
}


def data_dir(node: NodeSpec) -> str:
    return node.data_dir or DEFAULT_DATA_DIR


def admin_kubeconfig(data: str = DEFAULT_DATA_DIR) -> str:
    return f"{data}/pki/admin.conf"


def admin_access(data: str = DEFAULT_DATA_DIR) -> KubeAccess:
    return KubeAccess(("env", f"KUBECONFIG={admin_kubeconfig(data)}", BIN, "kubectl"), BIN, admin_kubeconfig(data))


def is_controller(node: NodeSpec) -> bool:
    return node.role == "server"


def has_worker(node: NodeSpec) -> bool:
    return not (is_controller(node) and node.disable_agent)


def validate(node: NodeSpec) -> None:
    """Refuse node specs k0s cannot run, naming the field and the fix."""
    check_node(node, "k0s")


def encryption_config_path(node: NodeSpec) -> str:
    return f"{data_dir(node)}/encryption.cfg"


def audit_log_path(node: NodeSpec) -> str:
    return f"{data_dir(node)}/audit/audit.log"


def api_extra_args(node: NodeSpec) -> dict[str, str]:
    """kube-apiserver flags k0s passes through (``spec.api.extraArgs``)."""
    return {
        "anonymous-auth": "false",
        "encryption-provider-config": encryption_config_path(node),
        "audit-policy-file": AUDIT_POLICY_FILE,
        "audit-log-path": audit_log_path(node),
        **AUDIT_LOG_LIMITS,
    }


def render_encryption_config() -> str:
    """The EncryptionConfiguration with the key left as a placeholder the install fills in
    from ``$K0S_ENCRYPTION_KEY``. Secrets written before encryption stay readable (identity
    is the last provider) and are encrypted on their next write."""
    return yaml_text(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "EncryptionConfiguration",
            "resources": [
                {
                    "resources": ["secrets"],
                    "providers": [
                        {"secretbox": {"keys": [{"name": "edgefleet", "secret": ENCRYPTION_KEY_PLACEHOLDER}]}},
                        {"identity": {}},
                    ],
                }
            ],
        }
    )


def render_audit_policy() -> str:
    return yaml_text(AUDIT_POLICY)


def render_config(node: NodeSpec) -> str:
    """``/etc/k0s/k0s.yaml``: the ClusterConfig of a controller."""
    validate(node)
    if not is_controller(node):
        raise DistributionError(
            f"{node.site}/{node.host}.role", "workers take no ClusterConfig", "render the configuration of a controller"
        )
    spec: dict[str, object] = {
        "api": {
            "address": node.address,
            "port": 6443,
            "k0sApiPort": 9443,
            "sans": list(dict.fromkeys([node.address, *node.tls_sans])),
            "extraArgs": api_extra_args(node),
        },
        "network": {
            "provider": "kuberouter",
            "podCIDR": node.cluster_cidr,
            "serviceCIDR": node.service_cidr,
            "clusterDomain": "cluster.local",
        },
        # Etcd on every controller of an HA site; a single controller keeps state in kine's
        # SQLite, the lighter choice for one node.
        "storage": ({"type": "etcd", "etcd": {"peerAddress": node.address}} if node.ha else {"type": "kine"}),
        "telemetry": {"enabled": False},
        "installConfig": {
            "users": {
                "etcdUser": "etcd",
                "kineUser": "kube-apiserver",
                "konnectivityUser": "konnectivity-server",
                "kubeAPIserverUser": "kube-apiserver",
                "kubeSchedulerUser": "kube-scheduler",
            }
        },
        # Images imported from an air-gap bundle are used as they are; others are pulled once.
        "images": {"default_pull_policy": "IfNotPresent"},
    }
    if node.profile == "gateway":
        spec["workerProfiles"] = [
            {
                "name": GATEWAY_PROFILE,
                "values": {
                    "systemReserved": dict(GATEWAY_SYSTEM_RESERVED),
                    "kubeReserved": dict(GATEWAY_KUBE_RESERVED),
                    "evictionHard": dict(GATEWAY_EVICTION_HARD),
                },
            }
        ]
    return yaml_text(
        {
            "apiVersion": "k0s.k0sproject.io/v1beta1",
            "kind": "ClusterConfig",
            "metadata": {"name": node.site},
            "spec": spec,
        }
    )


def _encrypts_secrets(config: str) -> bool:
    """The first provider for ``secrets`` (the one that writes) is a real cipher."""
    for res in yaml.safe_load(config).get("resources") or []:
        if "secrets" in res.get("resources", []):
            first = (res.get("providers") or [{}])[0]
            return bool(first) and "identity" not in first
    return False


def _kubeconfig_mode_line(node: NodeSpec) -> str:
    return f"chmod {ADMIN_KUBECONFIG_MODE} -- {q(admin_kubeconfig(data_dir(node)))}\n" if is_controller(node) else ""


def render_registry_hosts(registry: str, endpoints: Sequence[str]) -> str:
    """containerd ``hosts.toml`` sending pulls of ``registry`` to its mirrors."""
    check_mirrors({registry: endpoints})
    server = "https://registry-1.docker.io" if registry == "docker.io" else f"https://{registry}"
    out = f"server = {toml_str(server)}\n"
    for e in endpoints:
        out += f'\n[host.{toml_str(e.rstrip("/"))}]\n  capabilities = ["pull", "resolve"]\n'
    return out


def install_flags(node: NodeSpec) -> tuple[str, ...]:
    """The flags of ``k0s install controller|worker`` (and of the supervised command)."""
    validate(node)
    flags = [f"--data-dir={data_dir(node)}"]
    if is_controller(node):
        flags.append(f"--config={CONFIG_FILE}")
        if has_worker(node):
            flags += ["--enable-worker", "--no-taints"]
        if node.profile == "gateway":
            flags.append("--disable-components=metrics-server")
    if not node.first_server:
        flags.append(f"--token-file={TOKEN_FILE}")
    if has_worker(node):
        if node.labels:
            flags.append("--labels=" + ",".join(f"{k}={v}" for k, v in sorted(node.labels.items())))
        if node.taints:
            flags.append("--taints=" + ",".join(node.taints))
        protect = " --protect-kernel-defaults=true" if node.protect_kernel_defaults else ""
        flags.append(f"--kubelet-extra-args=--node-ip={node.address} --hostname-override={node.host}{protect}")
        if node.profile == "gateway":
            flags.append(f"--profile={GATEWAY_PROFILE}")
    return (*flags, *node.extra_args)


def service(node: NodeSpec) -> Service:
    """``k0scontroller`` / ``k0sworker``, the names ``k0s install`` gives the services."""
    role = "controller" if is_controller(node) else "worker"
    return Service(
        name=f"k0s{role}",
        manager=node.service_manager,
        argv=(BIN, role, *install_flags(node)),
        description=f"k0s - Zero Friction Kubernetes ({role})",
    )


@dataclass(frozen=True)
class _Artifacts:
    binary: UploadedArtifact
    bundles: tuple[tuple[UploadedArtifact, str], ...]


def _artifacts(node: NodeSpec, artifacts: Sequence[UploadedArtifact]) -> _Artifacts:
    for a in artifacts:
        if a.name != NAME and not a.name.startswith(BUNDLE_PREFIX):
            raise DistributionError(
                f"artifacts[{a.name}]",
                "not a k0s artifact",
                f"name the binary {NAME!r} and image bundles {BUNDLE_PREFIX!r}*",
            )
    binary = pick_artifact(artifacts, node.arch, NAME)
    bundles = []
    if has_worker(node):
        bundles = [
            (a, f"{data_dir(node)}/images/{a.name}{archive_suffix(a)}")
            for a in for_arch(artifacts, node.arch)
            if a.name.startswith(BUNDLE_PREFIX)
        ]
    return _Artifacts(binary, tuple(bundles))


def _ready_functions(node: NodeSpec) -> str:
    kubectl = admin_access(data_dir(node)).command()
    if is_controller(node):
        return ready_function(f"{kubectl} get --raw /readyz")
    return ready_function("svc_running && kubelet_healthy")


def _wait_ready(node: NodeSpec, timeout_s: int) -> str:
    return wait_ready_lines("the k0s API" if is_controller(node) else "the k0s worker (kubelet)", timeout_s)


def _service_lines(node: NodeSpec) -> str:
    """Bring the service to the rendered state. Under systemd/OpenRC ``k0s install`` writes
    the unit (again with --force when the flags changed); supervised hosts use the supervisor."""
    svc = service(node)
    if svc.manager == "supervised":
        return "".join(heredoc_file(p, c, m) for p, (c, m) in svc.files().items()) + "svc_apply\n"
    flags = install_flags(node)
    return fill(
        "k0s-service.sh",
        WRITE_ARGS=heredoc_file(INSTALL_ARGS_FILE, "".join(f"{f}\n" for f in flags), 0o600),
        UNIT=q(svc.unit_path()),
        BIN=q(BIN),
        ROLE="controller" if is_controller(node) else "worker",
        FLAGS=" ".join(q(f) for f in flags),
        SERVICE=svc.name,
    )


def _containerd_dropin_lines() -> str:
    return fill("k0s-containerd.sh", BIN=q(BIN), DROPIN=REGISTRY_DROPIN, CERTS_DIR=q(CERTS_DIR))


def _api_user_lines(node: NodeSpec) -> str:
    """The user k0s runs kube-apiserver as, created as ``k0s install`` creates it (k0s starts
    the API server as root only when that user is missing), and the directory it logs to."""
    return fill(
        "k0s-api-user.sh",
        USER=APISERVER_USER,
        DATA_DIR=q(data_dir(node)),
        AUDIT_DIR=q(audit_log_path(node).rsplit("/", 1)[0]),
    )


def _encryption_lines(node: NodeSpec) -> str:
    """Write the EncryptionConfiguration from ``$K0S_ENCRYPTION_KEY`` (0600, owned by the API
    server's user). A key that differs from the one in place is refused unless the file on
    the host already lists it: replacing the key outright would leave every Secret written
    under the old one unreadable."""
    path = encryption_config_path(node)
    return fill(
        "k0s-encryption.sh",
        TEMPLATE=q(render_encryption_config()),
        KEY_MARK=ENCRYPTION_KEY_PLACEHOLDER,
        CONFIG_PATH=q(path),
        CONFIG_TEXT=path,
        USER=APISERVER_USER,
    )


_INSTALL_LIB = ("root", "verify_artifact", "arch", "files", "secret", "sysctl", "wait", "kubelet_health")


class K0sDriver(Driver):
    """k0s. Node operations run on a controller."""

    name = NAME
    token_env = TOKEN_ENV
    title = "k0s"
    on_server = " (runs on a controller)"
    access = admin_access()

    def has_node(self, node: NodeSpec) -> bool:
        return has_worker(node)

    def kube_access(self, node: NodeSpec) -> KubeAccess:
        return admin_access(data_dir(node))

    def config_files(self, node: NodeSpec) -> dict[str, tuple[str, int]]:
        files: dict[str, tuple[str, int]] = {}
        if is_controller(node):
            files[CONFIG_FILE] = (render_config(node), 0o600)
            files[AUDIT_POLICY_FILE] = (render_audit_policy(), 0o644)
        if has_worker(node):
            for registry, endpoints in sorted(node.registry_mirrors.items()):
                files[f"{CERTS_DIR}/{registry}/hosts.toml"] = (render_registry_hosts(registry, endpoints), 0o644)
            if node.protect_kernel_defaults:
                files[SYSCTL_FILE] = (render_sysctl(), 0o644)
        return files

    def install_facts(self, node: NodeSpec) -> InstallFacts:
        """Read from the rendered ClusterConfig and the ``k0s controller|worker`` command line."""
        facts: InstallFacts = {}
        if is_controller(node):
            api = yaml.safe_load(render_config(node))["spec"]["api"].get("extraArgs") or {}
            files = self.config_files(node)
            facts["secretsEncryption"] = api.get("encryption-provider-config") == encryption_config_path(
                node
            ) and _encrypts_secrets(render_encryption_config())
            facts["auditLog"] = bool(api.get("audit-log-path")) and api.get("audit-policy-file") in files
            facts["anonymousAuth"] = str(api.get("anonymous-auth", "true")).lower() != "false"
            facts["kubeconfigMode"] = ADMIN_KUBECONFIG_MODE if _kubeconfig_mode_line(node) else None
        if has_worker(node):
            kubelet = flag_values(install_flags(node), "kubelet-extra-args")
            # k0s keeps the last --kubelet-extra-args; its words are kubelet flags.
            words = kubelet[-1].split() if kubelet else []
            facts["protectKernelDefaults"] = "--protect-kernel-defaults=true" in words
        return facts

    def render_install(
        self, node: NodeSpec, artifacts: Sequence[UploadedArtifact], *, ready_timeout_s: int = 300
    ) -> str:
        """Joining nodes read the token the first controller minted from ``$K0S_TOKEN``."""
        validate(node)
        arts = _artifacts(node, artifacts)
        svc = service(node)
        body = svc.shell() + _ready_functions(node) + "require_root\n"
        body += "# Every artifact is verified before anything on the host changes.\n" + verify_lines(artifacts)
        body += f"require_arch {UNAME_ARCH[node.arch]}\n"
        body += f"install_copy {q(arts.binary.dest)} {BIN} 0755 {arts.binary.sha256}\n"
        for a, dest in arts.bundles:
            body += f"install_copy {q(a.dest)} {q(dest)} 0644 {a.sha256}\n"
        if has_worker(node) and node.protect_kernel_defaults:
            body += sysctl_lines()
        for path, (content, mode) in self.config_files(node).items():
            body += heredoc_file(path, content, mode)
        if is_controller(node):
            body += _api_user_lines(node) + _encryption_lines(node)
        if has_worker(node) and node.registry_mirrors:
            body += _containerd_dropin_lines()
        elif has_worker(node):
            body += f"drop_file {REGISTRY_DROPIN}\n"
        if not node.first_server:
            body += f"write_secret {TOKEN_ENV} {TOKEN_FILE}\n"
        body += _service_lines(node) + _wait_ready(node, ready_timeout_s) + _kubeconfig_mode_line(node)
        role = "controller" if is_controller(node) else "worker"
        return Script(
            f"Install or update k0s ({role}) on {node.host} of site {node.site}; idempotent.",
            node.host,
            lib=_INSTALL_LIB,
        ).render(body)

    def render_join_token(self, node: NodeSpec) -> str | None:
        """Run on the first controller: prints a join token for ``node`` (and nothing else) on
        stdout. None for the first controller, which joins nothing."""
        validate(node)
        if node.first_server:
            return None
        role = "controller" if is_controller(node) else "worker"
        acc = admin_access()
        body = (
            acc.prelude()
            + acc.wait_api(300)
            + fill("k0s-join-token.sh", BIN=q(BIN), DATA_DIR=DEFAULT_DATA_DIR, ROLE=role, EXPIRY=JOIN_TOKEN_EXPIRY)
        )
        return Script(
            f"Mint a k0s {role} join token for {node.host} on the first controller; stdout carries only the token.",
            None,
            lib=("wait",),
        ).render(body)

    def render_uninstall(self, node: NodeSpec) -> str:
        """Leave etcd (HA controllers), stop k0s, ``k0s reset``, then remove what remains:
        leftover processes of this host, mounts, service, configuration, data and binary."""
        svc = service(node)
        dd = data_dir(node)
        leave = ""
        if is_controller(node) and node.ha:
            leave = (
                f"if [[ -x {q(BIN)} ]] && svc_running; then\n"
                f'  timeout 120 {q(BIN)} etcd leave --data-dir={q(dd)} >&2 || log "could not leave etcd '
                '(the node is removed from the member list when the cluster notices)"\nfi\n'
            )
        processes = (
            rf"^({ere_literal(BIN)}|k0s) (controller|worker)|{ere_literal(dd)}/"
            rf"|{ere_literal(svc.supervisor)} __run"
        )
        paths = [CONFIG_DIR, dd, "/run/k0s", BIN, SYSCTL_FILE, svc.log_file, svc.unit_path()]
        body = (
            svc.shell()
            + "require_root\n"
            + leave
            + fill(
                "k0s-uninstall.sh",
                BIN=q(BIN),
                DATA_DIR=q(dd),
                PROCESSES=q(processes),
                PATHS=" ".join(q(p) for p in paths),
            )
        )
        return Script(
            f"Uninstall k0s from {node.host} of site {node.site}; idempotent.", node.host, lib=("root", "procs")
        ).render(body)

    def kubeconfig_path(self, node: NodeSpec) -> str:
        return admin_kubeconfig(data_dir(node))
