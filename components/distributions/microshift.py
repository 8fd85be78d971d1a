"""MicroShift: configuration and lifecycle scripts, after the Red Hat build of MicroShift
documentation (RPM and rpm-ostree installs, firewall settings, greenboot health checks).

MicroShift runs a single node under systemd; an ``ha`` topology, agents and other service
managers are refused. Its one secret is the pull secret: the install reads it from
``$MICROSHIFT_PULL_SECRET`` into ``/etc/crio/openshift-pull-secret`` (0600).

Artifacts: the release's RPM files (one of them named ``microshift``), installed with dnf, or
layered with rpm-ostree on image-based hosts (a reboot then activates them).
"""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from components.distributions.artifacts import UNAME_ARCH, UploadedArtifact, for_arch, verify_lines
from components.distributions.base import DistributionError, NodeSpec
from components.distributions.bash import Script, heredoc_file, q, wait_ready_lines
from components.distributions.checks import check_mirrors, check_strings, mirror_host
from components.distributions.driver import Driver
from components.distributions.facts import InstallFacts
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

NAME = "microshift"
TOKEN_ENV = "MICROSHIFT_PULL_SECRET"
BIN = "/usr/bin/microshift"
CONFIG_FILE = "/etc/microshift/config.yaml"
PULL_SECRET_FILE = "/etc/crio/openshift-pull-secret"
MIRRORS_FILE = "/etc/containers/registries.conf.d/900-edgefleet-mirrors.conf"
GREENBOOT_CHECK = "/etc/greenboot/check/required.d/40-microshift-edgefleet.sh"
DATA_DIR = "/var/lib/microshift"
KUBEADMIN_DIR = f"{DATA_DIR}/resources/kubeadmin"
LOCAL_KUBECONFIG = f"{KUBEADMIN_DIR}/kubeconfig"
REBOOT_MARKER = "/var/lib/edgefleet/reboot-required"
OVN_NODE_ADDRESS = "169.254.169.1"  # the OVN-Kubernetes gateway the host must trust
ACCESS = KubeAccess(
    ("oc", f"--kubeconfig={LOCAL_KUBECONFIG}"), BIN, LOCAL_KUBECONFIG, client_fix="install openshift-clients"
)
GREENBOOT_TIMEOUT_S = 300
# MicroShift (re)writes the kubeconfigs under KUBEADMIN_DIR when it starts; the install
# narrows them to root once the API is up.
KUBECONFIG_MODE = "0600"


def validate(node: NodeSpec) -> None:
    """MicroShift is one systemd-managed node; refuse anything else with the fix."""
    at = f"{node.site}/{node.host}"
    if node.ha:
        raise DistributionError(f"{at}.topology", "MicroShift runs single-node only", "use k3s or k0s for an 'ha' site")
    if node.role != "server" or not node.first_server:
        raise DistributionError(
            f"{at}.role",
            "MicroShift runs single-node only; nothing can join it",
            "keep one host with role 'server', or use k3s or k0s",
        )
    if node.disable_agent:
        raise DistributionError(
            f"{at}.disable_agent", "a MicroShift node always runs its workloads", "drop disable_agent"
        )
    if node.service_manager != "systemd":
        raise DistributionError(
            f"{at}.service_manager",
            f"MicroShift needs systemd, not {node.service_manager!r}",
            "set service_manager: systemd",
        )
    if node.data_dir not in (None, DATA_DIR):
        raise DistributionError(f"{at}.data_dir", f"MicroShift keeps its data in {DATA_DIR}", "drop data_dir")
    if node.extra_args:
        raise DistributionError(
            f"{at}.extra_args", "MicroShift takes its settings from config.yaml, not flags", "drop extra_args"
        )
    check_strings(node)


def ingress_enabled(node: NodeSpec) -> bool:
    return node.profile != "gateway"


def core_namespaces(node: NodeSpec) -> list[str]:
    """Namespaces whose pods must be Ready for the node to be healthy."""
    ns = ["openshift-ovn-kubernetes", "openshift-service-ca", "openshift-dns"]
    if ingress_enabled(node):
        ns.append("openshift-ingress")
    if node.profile != "gateway":
        ns.append("openshift-storage")
    return ns


def render_config(node: NodeSpec) -> str:
    """``/etc/microshift/config.yaml``."""
    validate(node)
    cfg: dict[str, object] = {
        "dns": {"baseDomain": f"{node.site}.edgefleet.internal"},
        "network": {"clusterNetwork": [node.cluster_cidr], "serviceNetwork": [node.service_cidr]},
        "node": {"hostnameOverride": node.host, "nodeIP": node.address},
        "apiServer": {
            # A kubeconfig is generated for every name here; the fleet fetches the node address's.
            "subjectAltNames": list(dict.fromkeys([node.address, *node.tls_sans])),
            "auditLog": {"profile": "Default", "maxFileAge": 30, "maxFiles": 10, "maxFileSize": 100},
        },
        "debugging": {"logLevel": "Normal"},
        "ingress": {"status": "Managed" if ingress_enabled(node) else "Removed"},
    }
    kubelet: dict[str, object] = {"protectKernelDefaults": True} if node.protect_kernel_defaults else {}
    if node.profile == "gateway":
        cfg["etcd"] = {"memoryLimitMB": 128}
        cfg["storage"] = {"driver": "none"}
        kubelet.update(
            systemReserved=dict(GATEWAY_SYSTEM_RESERVED),
            kubeReserved=dict(GATEWAY_KUBE_RESERVED),
            evictionHard=dict(GATEWAY_EVICTION_HARD),
        )
    if kubelet:
        cfg["kubelet"] = kubelet
    return yaml_text(cfg)


def _kubeconfig_mode_lines() -> str:
    return (
        f"if [[ -d {q(KUBEADMIN_DIR)} ]]; then\n"
        f"  find {q(KUBEADMIN_DIR)} -type f -name kubeconfig -exec chmod {KUBECONFIG_MODE} -- {{}} +\n"
        f"  chmod 0700 -- {q(KUBEADMIN_DIR)}\n"
        "fi\n"
    )


def render_mirrors(node: NodeSpec) -> str:
    """containers-registries.conf drop-in sending CRI-O's pulls to the site's mirrors."""
    check_mirrors(node.registry_mirrors)
    out = "# Registry mirrors of this edge site (containers-registries.conf v2).\n"
    for registry, endpoints in sorted(node.registry_mirrors.items()):
        out += f"\n[[registry]]\nprefix = {toml_str(registry)}\nlocation = {toml_str(registry)}\n"
        for e in endpoints:
            host, insecure = mirror_host(e)
            out += f"\n[[registry.mirror]]\nlocation = {toml_str(host)}\n" + ("insecure = true\n" if insecure else "")
    return out


def render_greenboot_check(node: NodeSpec) -> str:
    """greenboot required check: the API and the core pods must be ready within a bounded
    time, otherwise the boot is declared red (and rpm-ostree hosts roll back)."""
    validate(node)
    return fill(
        "microshift-greenboot.sh",
        HOST=node.host,
        KUBECONFIG=LOCAL_KUBECONFIG,
        TIMEOUT=GREENBOOT_TIMEOUT_S,
        NAMESPACES=" ".join(core_namespaces(node)),
    )


def service(node: NodeSpec) -> Service:
    # The RPM ships the unit; only the management functions are used.
    return Service(name="microshift", manager="systemd", argv=(BIN, "run"), description="MicroShift")


def _rpms(node: NodeSpec, artifacts: Sequence[UploadedArtifact]) -> list[UploadedArtifact]:
    rpms = for_arch(artifacts, node.arch)
    for a in artifacts:
        if not a.url_or_path.endswith(".rpm"):
            raise DistributionError(
                f"artifacts[{a.name}]",
                f"{a.url_or_path!r} is not an RPM",
                "give MicroShift's release RPMs (and their dependencies) as artifacts",
            )
    if not any(a.name == NAME for a in rpms):
        raise DistributionError(
            "artifacts", f"no {NAME!r} RPM for {node.arch}", f"add the microshift RPM of the release, named {NAME!r}"
        )
    return rpms


def _firewall_lines(node: NodeSpec, remove: bool = False) -> str:
    ports = ["6443/tcp"] + (["80/tcp", "443/tcp"] if ingress_enabled(node) else [])
    rules = [("source", "trusted", node.cluster_cidr), ("source", "trusted", OVN_NODE_ADDRESS)]
    rules += [("port", "public", p) for p in ports]
    verb = "fw_remove" if remove else "fw_add"
    return fill(
        "microshift-firewall.sh",
        RULES=_indent("".join(f"{verb} {kind} {zone} {q(value)}\n" for kind, zone, value in rules)),
    )


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def _ready_functions() -> str:
    return f"""# shellcheck disable=SC2329 # called through wait_for
local_ready() {{
  local client
  client="$(command -v oc || command -v kubectl)" || return 1
  "$client" --kubeconfig={LOCAL_KUBECONFIG} get --raw /readyz
}}
"""


_INSTALL_LIB = ("root", "verify_artifact", "arch", "files", "secret", "sysctl", "wait")


class MicroShiftDriver(Driver):
    """MicroShift: one node, which runs its own node operations."""

    name = NAME
    token_env = TOKEN_ENV
    title = "MicroShift"
    on_server = ""
    access = ACCESS

    def config_files(self, node: NodeSpec) -> dict[str, tuple[str, int]]:
        files = {CONFIG_FILE: (render_config(node), 0o600), GREENBOOT_CHECK: (render_greenboot_check(node), 0o755)}
        if node.registry_mirrors:
            files[MIRRORS_FILE] = (render_mirrors(node), 0o644)
        if node.protect_kernel_defaults:
            files[SYSCTL_FILE] = (render_sysctl(), 0o644)
        return files

    def install_facts(self, node: NodeSpec) -> InstallFacts:
        """Read from the rendered config.yaml. MicroShift's configuration has no setting for
        Secrets encryption at rest nor for anonymous API requests (its API server keeps them
        for discovery), so those facts are off and the edge-secrets-encryption and
        edge-anonymous-auth-off rules fail for MicroShift sites."""
        cfg = yaml.safe_load(render_config(node))
        audit = (cfg.get("apiServer") or {}).get("auditLog") or {}
        return {
            "secretsEncryption": False,
            "auditLog": audit.get("profile") not in (None, "None"),
            "anonymousAuth": True,
            "kubeconfigMode": KUBECONFIG_MODE if _kubeconfig_mode_lines() else None,
            "protectKernelDefaults": (cfg.get("kubelet") or {}).get("protectKernelDefaults") is True,
        }

    def render_install(
        self, node: NodeSpec, artifacts: Sequence[UploadedArtifact], *, ready_timeout_s: int = 300
    ) -> str:
        """Install or upgrade MicroShift from the verified RPMs, write its configuration, pull
        secret, mirrors, firewall rules and greenboot check, then start it and wait for the
        API. On rpm-ostree hosts the packages are layered and a reboot marker is left instead."""
        validate(node)
        rpms = _rpms(node, artifacts)
        svc = service(node)
        body = svc.shell() + _ready_functions() + "require_root\n"
        body += "# Every artifact is verified before anything on the host changes.\n" + verify_lines(artifacts)
        body += f"require_arch {UNAME_ARCH[node.arch]}\n"
        if node.protect_kernel_defaults:
            body += sysctl_lines()
        body += fill("microshift-rpms.sh", RPMS=" ".join(q(a.dest) for a in rpms), REBOOT_MARKER=REBOOT_MARKER)
        body += f"""if [[ -n "${{{TOKEN_ENV}:-}}" && "${{{TOKEN_ENV}}}" != *'"auths"'* ]]; then
  die "{TOKEN_ENV} does not look like a pull secret (fix: pass the JSON pull secret from console.redhat.com)"
fi
write_secret {TOKEN_ENV} {PULL_SECRET_FILE}
"""
        for path, (content, mode) in self.config_files(node).items():
            body += heredoc_file(path, content, mode)
        if not node.registry_mirrors:
            body += f"drop_file {MIRRORS_FILE}\n"
        body += _firewall_lines(node)
        body += (
            f"""if ((STAGED)); then
  log "reboot $HOST to activate MicroShift (marker: {REBOOT_MARKER}); greenboot checks it after the reboot"
  exit 0
fi
svc_apply
"""
            + wait_ready_lines("the MicroShift API", ready_timeout_s)
            + _kubeconfig_mode_lines()
        )
        return Script(
            f"Install or update MicroShift on {node.host} of site {node.site}.\n"
            f"Reads the pull secret from ${TOKEN_ENV}; idempotent.",
            node.host,
            lib=_INSTALL_LIB,
        ).render(body)

    def render_join_token(self, node: NodeSpec) -> str | None:
        validate(node)
        return None  # a single node joins nothing

    def render_uninstall(self, node: NodeSpec) -> str:
        """Clean MicroShift's data (keeping container images), remove its packages, firewall
        rules and the files this fleet wrote. Idempotent."""
        validate(node)
        svc = service(node)
        paths = [CONFIG_FILE, PULL_SECRET_FILE, MIRRORS_FILE, GREENBOOT_CHECK, SYSCTL_FILE]
        body = svc.shell() + fill(
            "microshift-uninstall.sh",
            REBOOT_MARKER=REBOOT_MARKER,
            FIREWALL=_firewall_lines(node, remove=True),
            PATHS=" ".join(q(p) for p in paths) + f" {DATA_DIR}",
        )
        return Script(
            f"Uninstall MicroShift from {node.host} of site {node.site}; idempotent.", node.host, lib=("root",)
        ).render(body)

    def kubeconfig_path(self, node: NodeSpec) -> str:
        """The kubeconfig MicroShift generates for the node's address (a subjectAltName)."""
        return f"{KUBEADMIN_DIR}/{node.address}/kubeconfig"

    def render_fetch_kubeconfig(self, node: NodeSpec) -> str:
        validate(node)
        return super().render_fetch_kubeconfig(node)
