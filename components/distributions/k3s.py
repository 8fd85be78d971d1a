"""K3s: configuration and lifecycle scripts, after k3s-ansible and the K3s CIS hardening guide.

A node is configured entirely through files: ``/etc/rancher/k3s/config.yaml`` (flags as
keys), the audit policy and the admission configuration (Pod Security ``restricted`` by
default, EventRateLimit) under the data directory, ``registries.yaml`` for mirrors, and the
kernel parameters ``protect-kernel-defaults`` requires. The join token comes from
``$K3S_TOKEN`` into a 0600 token file the configuration points at.

Tokens: servers hold the server token and the separate agent token (``$K3S_AGENT_TOKEN``);
agents hold only the agent token, so root on an agent is not enough to join as a server.
Joiners get the secure form ``K10<sha256 of the cluster CA>::<user>:<password>`` and refuse a
server whose CA does not match (see :func:`secure_token`).

Identity: ``server:`` and ``cluster-init`` are bootstrap-only (K3s reads them until the node
has joined), and the node name is fixed at the first install (kept from the existing
configuration), so renaming a host in the inventory, reordering the servers or a new
registration address restarts nothing and never registers a node twice. Only a change of
the steady-state settings (:func:`steady_config`) restarts the service.

Artifacts: ``k3s`` (the release binary for the node's architecture) and, for air-gapped
nodes, any number of ``k3s-airgap-images*`` image archives.

Runtime: on hosts whose runtime may not lower a process's ``oom_score_adj`` (unprivileged
containers, the lab), ``restrict_oom_score_adj`` makes the embedded containerd keep the score it
finds instead of failing every pod sandbox: K3s fills its ``config-v3.toml.tmpl`` (the base
template plus an import of ``config.d``), and a drop-in there sets the CRI plugin option (the
base template already defines that table, so the option cannot be appended to it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import yaml

from components.contract import CHECK_ABSENT, CHECK_PRESENT, SHA256
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
from components.distributions.driver import NODE_NAME_MARK, Driver
from components.distributions.facts import InstallFacts, flag_values, is_true, options
from components.distributions.formats import yaml_text
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

NAME = "k3s"
TOKEN_ENV = "K3S_TOKEN"
BIN = "/usr/local/bin/k3s"
CONFIG_DIR = "/etc/rancher/k3s"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
TOKEN_FILE = f"{CONFIG_DIR}/token"
AGENT_TOKEN_ENV = "K3S_AGENT_TOKEN"
AGENT_TOKEN_FILE = f"{CONFIG_DIR}/agent-token"
# The password a node presents when it registers; the servers keep its hash (a Secret
# ``<node>.node-password.k3s``) and reject a node of the same name with another password. K3s
# makes a random one unless the file exists: seeded with one derived per site and machine, a
# reinstalled (wiped, reimaged) host rejoins under its name.
NODE_PASSWORD_ENV = "EDGEFLEET_NODE_PASSWORD"
NODE_PASSWORD_FILE = "/etc/rancher/node/password"
# Digest of the steady-state settings the service last (re)started with.
APPLIED_FILE = f"{CONFIG_DIR}/.edgefleet-applied"
BOOTSTRAP_KEYS = ("server", "cluster-init")
REGISTRIES_FILE = f"{CONFIG_DIR}/registries.yaml"
KUBECONFIG = f"{CONFIG_DIR}/k3s.yaml"
DEFAULT_DATA_DIR = "/var/lib/rancher/k3s"
CONTAINERD_SOCKET = "/run/k3s/containerd/containerd.sock"
IMAGES_PREFIX = "k3s-airgap-images"

CIS_TLS_CIPHERS = (
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,"
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,"
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305,TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
)
GATEWAY_DISABLE = ["traefik", "servicelb", "metrics-server", "local-storage"]
# The K3s binary is multicall: run under the name kubectl it is kubectl. `exec -a` works for
# the release binary and for a build of cmd/server alike (the latter has no `k3s kubectl`).
KUBECTL_FN = (
    "# shellcheck disable=SC2329 # called through KUBECTL / local_ready\n"
    f'k3s_kubectl() {{ (exec -a kubectl {BIN} "$@"); }}\n'
)
ACCESS = KubeAccess(("k3s_kubectl", f"--kubeconfig={KUBECONFIG}"), BIN, KUBECONFIG, define=KUBECTL_FN)


def data_dir(node: NodeSpec) -> str:
    return node.data_dir or DEFAULT_DATA_DIR


def _containerd_path(node: NodeSpec, name: str) -> str:
    return f"{data_dir(node)}/agent/etc/containerd/{name}"


CONTAINERD_TEMPLATE = "config-v3.toml.tmpl"
CONTAINERD_DROP_IN = "config.d/10-edgefleet.toml"


def _server_path(node: NodeSpec, name: str) -> str:
    return f"{data_dir(node)}/server/{name}"


def has_kubelet(node: NodeSpec) -> bool:
    return not (node.role == "server" and node.disable_agent)


def validate(node: NodeSpec) -> None:
    """Refuse node specs K3s cannot run, naming the field and the fix."""
    check_node(node, "K3s")


def _kubelet_args(node: NodeSpec) -> list[str]:
    args = [
        "streaming-connection-idle-timeout=5m",
        "make-iptables-util-chains=true",
        f"tls-cipher-suites={CIS_TLS_CIPHERS}",
    ]
    if node.profile == "gateway":

        def joined(d: dict[str, str], sep: str) -> str:
            return ",".join(f"{k}{sep}{v}" for k, v in d.items())

        args += [
            f"system-reserved={joined(GATEWAY_SYSTEM_RESERVED, '=')}",
            f"kube-reserved={joined(GATEWAY_KUBE_RESERVED, '=')}",
            f"eviction-hard={joined(GATEWAY_EVICTION_HARD, '<')}",
        ]
    return args


def render_config(node: NodeSpec) -> str:
    """``/etc/rancher/k3s/config.yaml`` for this node (flag names as keys)."""
    validate(node)
    cfg: dict[str, object] = {"token-file": TOKEN_FILE}
    if node.role == "server":
        cfg["agent-token-file"] = AGENT_TOKEN_FILE
    if node.server_url:
        cfg["server"] = node.server_url
    cfg["data-dir"] = data_dir(node)
    if node.role == "server":
        if node.first_server and node.ha:
            cfg["cluster-init"] = True
        cfg["tls-san"] = list(node.tls_sans)
        cfg["cluster-cidr"] = node.cluster_cidr
        cfg["service-cidr"] = node.service_cidr
        cfg["secrets-encryption"] = True
        cfg["write-kubeconfig-mode"] = "0600"
        cfg["kube-apiserver-arg"] = [
            "enable-admission-plugins=NodeRestriction,EventRateLimit",
            f"admission-control-config-file={_server_path(node, 'psa.yaml')}",
            f"audit-policy-file={_server_path(node, 'audit.yaml')}",
            f"audit-log-path={_server_path(node, 'logs/audit.log')}",
            "audit-log-maxage=30",
            "audit-log-maxbackup=10",
            "audit-log-maxsize=100",
            "anonymous-auth=false",
            "service-account-extend-token-expiration=false",
        ]
        cfg["kube-controller-manager-arg"] = ["terminated-pod-gc-threshold=100"]
        if node.profile == "gateway":
            cfg["disable"] = list(GATEWAY_DISABLE)
            cfg["bind-address"] = node.address
            cfg["advertise-address"] = node.address
        if node.disable_agent:
            # A control plane without kubelet runs no pod network of its own.
            cfg["disable-agent"] = True
            cfg["flannel-backend"] = "none"
            cfg["disable-network-policy"] = True
    cfg["node-name"] = node.host
    cfg["node-ip"] = node.address
    if has_kubelet(node):
        if node.labels:
            cfg["node-label"] = [f"{k}={v}" for k, v in sorted(node.labels.items())]
        if node.taints:
            cfg["node-taint"] = list(node.taints)
        if node.protect_kernel_defaults:
            cfg["protect-kernel-defaults"] = True
        cfg["kubelet-arg"] = _kubelet_args(node)
    return yaml_text(cfg)


def steady_config(node: NodeSpec) -> str:
    """config.yaml without its bootstrap-only keys and the node name: what a running node
    must be restarted for when it changes."""
    cfg = yaml.safe_load(render_config(node))
    for key in (*BOOTSTRAP_KEYS, "node-name"):
        cfg.pop(key, None)
    return yaml_text(cfg)


def secure_token(ca_sha256: str, user: str, password: str) -> str:
    """K3s's secure token: the joiner checks the server's CA against ``ca_sha256`` (the
    sha256 of the PEM file as stored on the first server) before sending ``user:password``."""
    if not SHA256.fullmatch(ca_sha256):
        raise DistributionError(
            "cluster CA",
            f"{ca_sha256[:80]!r} is not a sha256 hex digest",
            "check that the first server's K3s wrote server/tls/server-ca.crt",
        )
    return f"K10{ca_sha256}::{user}:{password}"


def render_ca_hash(node: NodeSpec) -> str:
    """Print the sha256 of the cluster's server CA (run on the first server, after install)."""
    ca = f"{data_dir(node)}/server/tls/server-ca.crt"
    return Script(
        f"Print the sha256 of the cluster CA of site {node.site} (for joiners' secure tokens).", node.host
    ).render(f"""
[[ -s {q(ca)} ]] || die "{ca} does not exist (fix: install K3s on {node.host} first)"
sha256sum -- {q(ca)} | cut -d' ' -f1
""")


def _pinned_node_name(inventory_name: str) -> str:
    """Lines setting K3S_NODE_NAME and ``put_config``: the node keeps the name of its first
    install, so an inventory rename never registers it again under a new name."""
    return fill("k3s-node-name.sh", CONFIG_FILE=CONFIG_FILE, NODE_NAME=inventory_name, APPLIED_FILE=APPLIED_FILE)


def render_audit_policy() -> str:
    """API audit policy: metadata for every request (never bodies, so no secret values),
    without the health probes' noise."""
    return yaml_text(
        {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived"],
            "rules": [
                {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
                {"level": "None", "users": ["system:kube-proxy"], "verbs": ["watch"]},
                {"level": "Metadata"},
            ],
        }
    )


def render_psa_config() -> str:
    """Admission configuration: Pod Security ``restricted`` enforced by default (kube-system
    exempt, it runs the privileged system components) and EventRateLimit."""
    return yaml_text(
        {
            "apiVersion": "apiserver.config.k8s.io/v1",
            "kind": "AdmissionConfiguration",
            "plugins": [
                {
                    "name": "PodSecurity",
                    "configuration": {
                        "apiVersion": "pod-security.admission.config.k8s.io/v1",
                        "kind": "PodSecurityConfiguration",
                        "defaults": {
                            "enforce": "restricted",
                            "enforce-version": "latest",
                            "audit": "restricted",
                            "audit-version": "latest",
                            "warn": "restricted",
                            "warn-version": "latest",
                        },
                        "exemptions": {"usernames": [], "runtimeClasses": [], "namespaces": ["kube-system"]},
                    },
                },
                {
                    "name": "EventRateLimit",
                    "configuration": {
                        "apiVersion": "eventratelimit.admission.k8s.io/v1alpha1",
                        "kind": "Configuration",
                        "limits": [{"type": "Server", "qps": 5000, "burst": 20000}],
                    },
                },
            ],
        }
    )


def render_containerd_template(node: NodeSpec) -> str:
    """K3s's containerd configuration template: its own base, plus the drop-ins of ``config.d``."""
    imports = _containerd_path(node, "config.d/*.toml")
    return f'imports = ["{imports}"]\n{{{{ template "base" . }}}}\n'


def render_containerd_drop_in() -> str:
    """containerd's CRI option that leaves a container's oom_score_adj as it finds it."""
    return 'version = 3\n\n[plugins."io.containerd.cri.v1.runtime"]\n  restrict_oom_score_adj = true\n'


def containerd_files(node: NodeSpec) -> dict[str, str]:
    """The containerd files this node needs (path -> content): none unless it runs a kubelet with
    ``restrict_oom_score_adj``."""
    if not (has_kubelet(node) and node.restrict_oom_score_adj):
        return {}
    return {
        _containerd_path(node, CONTAINERD_TEMPLATE): render_containerd_template(node),
        _containerd_path(node, CONTAINERD_DROP_IN): render_containerd_drop_in(),
    }


def render_registries(node: NodeSpec) -> str:
    """``registries.yaml``: the site's mirrors for each registry."""
    check_mirrors(node.registry_mirrors)
    return yaml_text({"mirrors": {reg: {"endpoint": list(eps)} for reg, eps in sorted(node.registry_mirrors.items())}})


def service(node: NodeSpec) -> Service:
    """``k3s`` for servers, ``k3s-agent`` for agents, as the upstream installer names them."""
    sub = "server" if node.role == "server" else "agent"
    return Service(
        name="k3s" if sub == "server" else "k3s-agent",
        manager=node.service_manager,
        argv=(BIN, sub, *node.extra_args),
        description="Lightweight Kubernetes",
        notify=sub == "server",
    )


@dataclass(frozen=True)
class _Artifacts:
    binary: UploadedArtifact
    images: tuple[tuple[UploadedArtifact, str], ...]  # artifact -> destination


def _artifacts(node: NodeSpec, artifacts: Sequence[UploadedArtifact]) -> _Artifacts:
    for a in artifacts:
        if a.name != NAME and not a.name.startswith(IMAGES_PREFIX):
            raise DistributionError(
                f"artifacts[{a.name}]",
                "not a K3s artifact",
                f"name the binary {NAME!r} and image archives {IMAGES_PREFIX!r}*",
            )
    binary = pick_artifact(artifacts, node.arch, NAME)
    images: list[tuple[UploadedArtifact, str]] = []
    if has_kubelet(node):
        for a in for_arch(artifacts, node.arch):
            if a.name.startswith(IMAGES_PREFIX):
                images.append((a, f"{data_dir(node)}/agent/images/{a.name}{archive_suffix(a)}"))
    dests = [d for _, d in images]
    if len(set(dests)) != len(dests):
        raise DistributionError(
            "artifacts",
            f"several image archives for {node.arch} share a name",
            "give every image archive of one architecture its own name",
        )
    return _Artifacts(binary, tuple(images))


def _ready_functions(node: NodeSpec) -> str:
    if node.role == "server":
        return KUBECTL_FN + ready_function(f"k3s_kubectl --kubeconfig={q(KUBECONFIG)} get --raw /readyz")
    return ready_function("svc_running && kubelet_healthy")


def _wait_ready(node: NodeSpec, timeout_s: int) -> str:
    return wait_ready_lines("the K3s API" if node.role == "server" else "the K3s agent (kubelet)", timeout_s)


_INSTALL_LIB = ("root", "verify_artifact", "arch", "files", "secret", "sysctl", "wait", "kubelet_health")


def _binary_lines(node: NodeSpec, arts: _Artifacts) -> str:
    lines = f"require_arch {UNAME_ARCH[node.arch]}\n"
    lines += f"install_copy {q(arts.binary.dest)} {BIN} 0755 {arts.binary.sha256}\n"
    for a, dest in arts.images:
        lines += f"install_copy {q(a.dest)} {q(dest)} 0644 {a.sha256}\n"
    return lines


class K3sDriver(Driver):
    """K3s. Node operations run on a server; deleting a server's node also removes its etcd member."""

    name = NAME
    token_env = TOKEN_ENV
    title = "K3s"
    on_server = " (runs on a server)"
    access = ACCESS

    def has_node(self, node: NodeSpec) -> bool:
        return has_kubelet(node)

    def config_files(self, node: NodeSpec) -> dict[str, tuple[str, int]]:
        files = {CONFIG_FILE: (render_config(node), 0o600)}
        if node.role == "server":
            files[_server_path(node, "audit.yaml")] = (render_audit_policy(), 0o600)
            files[_server_path(node, "psa.yaml")] = (render_psa_config(), 0o600)
        if node.registry_mirrors:
            files[REGISTRIES_FILE] = (render_registries(node), 0o600)
        if has_kubelet(node) and node.protect_kernel_defaults:
            files[SYSCTL_FILE] = (render_sysctl(), 0o644)
        files.update({path: (content, 0o600) for path, content in containerd_files(node).items()})
        return files

    def install_facts(self, node: NodeSpec) -> InstallFacts:
        """Read from the rendered config.yaml and the service's command line (a flag on the
        command line wins over the file)."""
        cfg = yaml.safe_load(render_config(node))
        argv = service(node).argv[2:]

        def values(name: str) -> list[str]:
            in_file = cfg.get(name, [])
            return [str(v) for v in (in_file if isinstance(in_file, list) else [in_file])] + flag_values(argv, name)

        def last(name: str) -> str | None:
            found = values(name)
            return found[-1] if found else None

        facts: InstallFacts = {}
        if node.role == "server":
            api = options(values("kube-apiserver-arg"))
            facts["secretsEncryption"] = is_true(last("secrets-encryption")) or bool(
                api.get("encryption-provider-config")
            )
            facts["auditLog"] = bool(api.get("audit-log-path")) and bool(api.get("audit-policy-file"))
            facts["anonymousAuth"] = api.get("anonymous-auth", "true").lower() != "false"
            facts["kubeconfigMode"] = last("write-kubeconfig-mode")
        if has_kubelet(node):
            kubelet = options(values("kubelet-arg"))
            facts["protectKernelDefaults"] = is_true(last("protect-kernel-defaults")) and is_true(
                kubelet.get("protect-kernel-defaults", "true")
            )
        return facts

    def render_install(
        self, node: NodeSpec, artifacts: Sequence[UploadedArtifact], *, ready_timeout_s: int = 300
    ) -> str:
        """Re-running with the same inputs changes nothing and restarts nothing; a changed
        binary or configuration restarts the service. Joining nodes use the same script (their
        configuration carries ``server:``). Prints the node name it registered with."""
        validate(node)
        arts = _artifacts(node, artifacts)
        svc = service(node)
        body = svc.shell() + _ready_functions(node) + "require_root\n"
        body += "# Every artifact is verified before anything on the host changes.\n" + verify_lines(artifacts)
        body += _binary_lines(node, arts)
        if has_kubelet(node) and node.protect_kernel_defaults:
            body += sysctl_lines()
        if node.role == "server":
            body += f"install -d -m 0700 -- {q(_server_path(node, 'logs'))}\n"
        body += _pinned_node_name(node.host)
        for path, (content, mode) in {**self.config_files(node), **svc.files()}.items():
            if path == CONFIG_FILE:
                body += heredoc_file(path, content, mode).replace("put_file ", "put_config ", 1)
                applied = hashlib.sha256(steady_config(node).encode()).hexdigest()
                body += f"put_file {APPLIED_FILE} 0600 <<<{applied}\n"
            else:
                body += heredoc_file(path, content, mode)
        if not node.registry_mirrors:
            body += f"drop_file {REGISTRIES_FILE}\n"
        if has_kubelet(node) and not containerd_files(node):
            # The option turned off: the template alone imports nothing (it may be an operator's own).
            body += f"drop_file {q(_containerd_path(node, CONTAINERD_DROP_IN))}\n"
        body += f"write_secret {TOKEN_ENV} {TOKEN_FILE}\n"
        if node.role == "server":
            body += f"write_secret {AGENT_TOKEN_ENV} {AGENT_TOKEN_FILE}\n"
        body += f"seed_secret {NODE_PASSWORD_ENV} {NODE_PASSWORD_FILE}\n"
        body += "svc_apply\n" + _wait_ready(node, ready_timeout_s)
        body += f"printf '{NODE_NAME_MARK}%s\\n' \"$K3S_NODE_NAME\"\n"
        role = "server" if node.role == "server" else "agent"
        return Script(
            f"Install or update K3s ({role}) on {node.host} of site {node.site}.\n"
            f"Reads the join token from ${TOKEN_ENV}; idempotent.",
            node.host,
            lib=_INSTALL_LIB,
        ).render(body)

    def render_check(self, node: NodeSpec, artifacts: Sequence[UploadedArtifact]) -> str:
        validate(node)
        arts = _artifacts(node, artifacts)
        applied = hashlib.sha256(steady_config(node).encode()).hexdigest()
        body = service(node).shell() + fill(
            "k3s-check.sh",
            BIN=BIN,
            BIN_SHA256=arts.binary.sha256,
            APPLIED_FILE=APPLIED_FILE,
            APPLIED=applied,
            PRESENT=q(CHECK_PRESENT),
            ABSENT=q(CHECK_ABSENT),
        )
        return Script(
            f"Read back the K3s install on {node.host} of site {node.site}: present, or absent and why.",
            node.host,
        ).render(body)

    def render_join_token(self, node: NodeSpec) -> str | None:
        """None: every K3s node reads the site's shared token from ``$K3S_TOKEN``."""
        validate(node)
        return None

    def render_uninstall(self, node: NodeSpec) -> str:
        """Stop K3s, kill what it left running on this host (only this host's processes), undo
        its mounts, interfaces and iptables chains, remove service, configuration, data, token
        and binary. Idempotent: running it on a clean host changes nothing."""
        svc = service(node)
        dd = data_dir(node)
        # Container shims may live outside the data directory (a runtime on the PATH): they are
        # K3s's when they serve its containerd socket.
        shims = rf"containerd-shim[^ ]* .*-address {ere_literal(CONTAINERD_SOCKET)}( |$)"
        processes = (
            rf"^({ere_literal(BIN)}|k3s) (server|agent)|{ere_literal(dd)}/|{ere_literal(svc.supervisor)} __run|{shims}"
        )
        paths = [
            CONFIG_DIR,
            "/etc/rancher/node",
            dd,
            "/var/lib/kubelet",
            "/var/lib/cni",
            "/run/k3s",
            "/run/flannel",
            BIN,
            SYSCTL_FILE,
            svc.log_file,
        ]
        rmdirs = "/etc/rancher /var/lib/rancher" if dd == DEFAULT_DATA_DIR else "/etc/rancher"
        body = svc.shell() + fill(
            "k3s-uninstall.sh",
            PROCESSES=q(processes),
            DATA_DIR=q(dd),
            PATHS=" ".join(q(p) for p in paths),
            RMDIRS=rmdirs,
        )
        return Script(
            f"Uninstall K3s from {node.host} of site {node.site}; idempotent.", node.host, lib=("root", "procs")
        ).render(body)

    def kubeconfig_path(self, node: NodeSpec) -> str:
        return KUBECONFIG
