"""Pod Security Standards (baseline and restricted) for every workload kind.

Each rule reads every pod spec of a resource: where a workload kind keeps it (see
``_k8s.POD_SPEC_PATHS``), in a patch of one (judged on what the patch sets), or wherever one is
found in a custom resource. Values that are unknown at preview never produce a violation.
"""

from __future__ import annotations

from typing import Any

from policies.resource import UNKNOWN, Resource, dig, items, mapping
from policies.rules import Violation, key_path, rule
from policies.rules._k8s import POD_TARGETS, PodSpec, container_label, containers, per_pod_spec

# Sysctls the Pod Security Standards (baseline) allow.
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
# Volume types the restricted profile allows (hostPath has its own rule).
RESTRICTED_VOLUME_TYPES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def _sc(c: dict[str, Any], *path: str) -> Any:
    return dig(c, "securityContext", *path)


@rule(
    name="no-privileged-containers",
    title="No privileged containers",
    category="pod-security",
    severity="critical",
    description="Containers must not run privileged (PSS baseline): a privileged container is root on the node.",
    remediation="Remove securityContext.privileged or set it to false; grant only the specific capability needed.",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_privileged(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    return [
        Violation(f"{container_label(c, p)} sets privileged: true", f"{p}.securityContext.privileged")
        for c, p in containers(spec, base)
        if _sc(c, "privileged") is True
    ]


@rule(
    name="no-host-namespaces",
    title="No host namespaces",
    category="pod-security",
    severity="high",
    description="Pods must not share the node's network, PID or IPC namespace (PSS baseline).",
    remediation=(
        "Remove hostNetwork, hostPID and hostIPC from the pod spec (or set them to false); expose ports through a "
        "Service."
    ),
    targets=POD_TARGETS,
)
@per_pod_spec
def no_host_namespaces(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    return [
        Violation(f"pod sets {field}: true", f"{base}.{field}")
        for field in ("hostNetwork", "hostPID", "hostIPC")
        if dig(spec, field) is True
    ]


@rule(
    name="no-host-path-volumes",
    title="No hostPath volumes",
    category="pod-security",
    severity="high",
    description="Pods must not mount hostPath volumes (PSS baseline): they expose the node's filesystem.",
    remediation="Use an emptyDir, a PersistentVolumeClaim, a ConfigMap or a Secret instead of hostPath.",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_host_path(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    return [
        Violation(f"volume {v.get('name')!r} is a hostPath volume", f"{base}.volumes[{i}].hostPath")
        for i, v in enumerate(items(dig(spec, "volumes")))
        if isinstance(v, dict) and v.get("hostPath") is not None and v.get("hostPath") is not UNKNOWN
    ]


@rule(
    name="no-host-ports",
    title="No host ports",
    category="pod-security",
    severity="medium",
    description=(
        "Containers must not bind host ports (PSS baseline): they bypass NetworkPolicies and pin pods to nodes."
    ),
    remediation="Remove ports[].hostPort and expose the port through a Service.",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_host_ports(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        for i, port in enumerate(items(c.get("ports"))):
            host_port = dig(port, "hostPort")
            if isinstance(host_port, int) and not isinstance(host_port, bool) and host_port != 0:
                out.append(Violation(f"{container_label(c, p)} binds hostPort {host_port}", f"{p}.ports[{i}].hostPort"))
    return out


@rule(
    name="no-privilege-escalation",
    title="Privilege escalation disabled",
    category="pod-security",
    severity="high",
    description="Every container must set allowPrivilegeEscalation: false (PSS restricted).",
    remediation="Set securityContext.allowPrivilegeEscalation: false on every container.",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_privilege_escalation(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        value = _sc(c, "allowPrivilegeEscalation")
        if value is not UNKNOWN and value is not False:
            out.append(
                Violation(
                    f"{container_label(c, p)} does not set allowPrivilegeEscalation: false",
                    f"{p}.securityContext.allowPrivilegeEscalation",
                )
            )
    return out


@rule(
    name="run-as-non-root",
    title="Containers run as non-root",
    category="pod-security",
    severity="high",
    description="Every container must run with runAsNonRoot: true and never as UID 0 (PSS restricted).",
    remediation=(
        "Set securityContext.runAsNonRoot: true (pod or container) and a non-zero runAsUser; build the image with a "
        "non-root USER."
    ),
    targets=POD_TARGETS,
)
@per_pod_spec
def run_as_non_root(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    pod_non_root = dig(spec, "securityContext", "runAsNonRoot")
    pod_user = dig(spec, "securityContext", "runAsUser")
    out = []
    for c, p in containers(spec, base):
        non_root = _sc(c, "runAsNonRoot")
        non_root = pod_non_root if non_root is None else non_root
        user = _sc(c, "runAsUser")
        user = pod_user if user is None else user
        if isinstance(user, int) and not isinstance(user, bool) and user == 0:
            out.append(Violation(f"{container_label(c, p)} runs as UID 0", f"{p}.securityContext.runAsUser"))
        elif non_root is not UNKNOWN and non_root is not True:
            out.append(
                Violation(
                    f"{container_label(c, p)} does not set runAsNonRoot: true", f"{p}.securityContext.runAsNonRoot"
                )
            )
    return out


@rule(
    name="drop-all-capabilities",
    title="All capabilities dropped",
    category="pod-security",
    severity="medium",
    description="Every container must drop ALL Linux capabilities (PSS restricted).",
    remediation=(
        'Set securityContext.capabilities.drop: ["ALL"] and add back only NET_BIND_SERVICE if a port below 1024 is '
        "needed."
    ),
    targets=POD_TARGETS,
)
@per_pod_spec
def drop_all_capabilities(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        drop = _sc(c, "capabilities", "drop")
        if drop is UNKNOWN or any(d is UNKNOWN for d in items(drop)):
            continue
        if "ALL" not in items(drop):
            out.append(
                Violation(
                    f"{container_label(c, p)} does not drop ALL capabilities", f"{p}.securityContext.capabilities.drop"
                )
            )
    return out


@rule(
    name="restricted-added-capabilities",
    title="Only NET_BIND_SERVICE may be added",
    category="pod-security",
    severity="high",
    description="Containers may add no Linux capability other than NET_BIND_SERVICE (PSS restricted).",
    remediation="Remove every entry of securityContext.capabilities.add except NET_BIND_SERVICE.",
    targets=POD_TARGETS,
)
@per_pod_spec
def restricted_added_capabilities(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        extra = [a for a in items(_sc(c, "capabilities", "add")) if a is not UNKNOWN and a != "NET_BIND_SERVICE"]
        if extra:
            out.append(
                Violation(
                    f"{container_label(c, p)} adds capabilities {', '.join(map(str, extra))}",
                    f"{p}.securityContext.capabilities.add",
                )
            )
    return out


@rule(
    name="seccomp-profile",
    title="Seccomp profile set",
    category="pod-security",
    severity="medium",
    description="Every container must run under the RuntimeDefault or a Localhost seccomp profile (PSS restricted).",
    remediation="Set securityContext.seccompProfile.type: RuntimeDefault on the pod (or on each container).",
    targets=POD_TARGETS,
)
@per_pod_spec
def seccomp_profile(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    pod_type = dig(spec, "securityContext", "seccompProfile", "type")
    out = []
    for c, p in containers(spec, base):
        kind = _sc(c, "seccompProfile", "type")
        kind = pod_type if kind is None else kind
        if kind is not UNKNOWN and kind not in ("RuntimeDefault", "Localhost"):
            what = "no seccomp profile" if kind is None else f"seccomp profile {kind}"
            out.append(
                Violation(f"{container_label(c, p)} runs with {what}", f"{p}.securityContext.seccompProfile.type")
            )
    return out


@rule(
    name="read-only-root-filesystem",
    title="Read-only root filesystem",
    category="pod-security",
    severity="medium",
    description="Every container must mount its root filesystem read-only.",
    remediation="Set securityContext.readOnlyRootFilesystem: true and mount an emptyDir where the process must write.",
    targets=POD_TARGETS,
)
@per_pod_spec
def read_only_root_filesystem(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base, ("containers", "initContainers")):
        value = _sc(c, "readOnlyRootFilesystem")
        if value is not UNKNOWN and value is not True:
            out.append(
                Violation(
                    f"{container_label(c, p)} has a writable root filesystem",
                    f"{p}.securityContext.readOnlyRootFilesystem",
                )
            )
    return out


@rule(
    name="no-unsafe-sysctls",
    title="Only safe sysctls",
    category="pod-security",
    severity="high",
    description="Pods may set only the namespaced sysctls the Pod Security Standards call safe (PSS baseline).",
    remediation="Remove the sysctl from securityContext.sysctls or configure it on the node.",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_unsafe_sysctls(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    return [
        Violation(f"pod sets unsafe sysctl {s.get('name')}", f"{base}.securityContext.sysctls[{i}]")
        for i, s in enumerate(items(dig(spec, "securityContext", "sysctls")))
        if isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"] not in SAFE_SYSCTLS
    ]


@rule(
    name="default-proc-mount",
    title="Default /proc mount",
    category="pod-security",
    severity="high",
    description="Containers must use the Default /proc mount type (PSS baseline); Unmasked exposes kernel interfaces.",
    remediation="Remove securityContext.procMount or set it to Default.",
    targets=POD_TARGETS,
)
@per_pod_spec
def default_proc_mount(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        value = _sc(c, "procMount")
        if isinstance(value, str) and value != "Default":
            out.append(Violation(f"{container_label(c, p)} sets procMount: {value}", f"{p}.securityContext.procMount"))
    return out


@rule(
    name="no-service-account-token-automount",
    title="No automounted service account token",
    category="pod-security",
    severity="medium",
    description="Pods must not automount a Kubernetes API token unless they call the API.",
    remediation=(
        "Set automountServiceAccountToken: false in the pod spec; mount a projected token only where the API is used."
    ),
    targets=POD_TARGETS,
)
@per_pod_spec
def no_sa_token_automount(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    if spec is UNKNOWN or spec is None:
        return []
    value = dig(spec, "automountServiceAccountToken")
    if value is UNKNOWN or value is False:
        return []
    return [Violation("pod automounts its service account token", f"{base}.automountServiceAccountToken")]


@rule(
    name="restricted-selinux-options",
    title="No custom SELinux user, role or type",
    category="pod-security",
    severity="medium",
    description="seLinuxOptions may not set a user or role, and only container types (PSS baseline).",
    remediation="Remove seLinuxOptions.user and .role; use a container_t-family type or none.",
    targets=POD_TARGETS,
)
@per_pod_spec
def restricted_selinux(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    places = [(dig(spec, "securityContext", "seLinuxOptions"), f"{base}.securityContext.seLinuxOptions", "pod")]
    places += [
        (_sc(c, "seLinuxOptions"), f"{p}.securityContext.seLinuxOptions", container_label(c, p))
        for c, p in containers(spec, base)
    ]
    out = []
    for opts, path, who in places:
        opts = mapping(opts)
        for key in ("user", "role"):
            if isinstance(opts.get(key), str) and opts[key]:
                out.append(Violation(f"{who} sets SELinux {key} {opts[key]}", f"{path}.{key}"))
        kind = opts.get("type")
        if isinstance(kind, str) and kind not in SELINUX_TYPES:
            out.append(Violation(f"{who} sets SELinux type {kind}", f"{path}.type"))
    return out


@rule(
    name="restricted-volume-types",
    title="Only restricted volume types",
    category="pod-security",
    severity="medium",
    description=(
        "Pods may mount only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected and "
        "secret volumes (PSS restricted)."
    ),
    remediation="Replace the volume with one of the allowed types, typically a PersistentVolumeClaim.",
    targets=POD_TARGETS,
)
@per_pod_spec
def restricted_volume_types(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for i, v in enumerate(items(dig(spec, "volumes"))):
        if not isinstance(v, dict):
            continue
        kinds = [k for k in v if k != "name" and v[k] is not None and v[k] is not UNKNOWN]
        bad = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES and k != "hostPath"]
        if bad:
            out.append(Violation(f"volume {v.get('name')!r} is of type {bad[0]}", f"{base}.volumes[{i}]"))
    return out


@rule(
    name="no-unconfined-apparmor",
    title="AppArmor not unconfined",
    category="pod-security",
    severity="high",
    description="Containers must not run with the AppArmor profile set to unconfined (PSS baseline).",
    remediation="Remove the Unconfined appArmorProfile (or the unconfined annotation); use RuntimeDefault.",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_unconfined_apparmor(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    if dig(spec, "securityContext", "appArmorProfile", "type") == "Unconfined":
        out.append(Violation("pod sets appArmorProfile Unconfined", f"{base}.securityContext.appArmorProfile"))
    for c, p in containers(spec, base):
        if _sc(c, "appArmorProfile", "type") == "Unconfined":
            out.append(
                Violation(
                    f"{container_label(c, p)} sets appArmorProfile Unconfined", f"{p}.securityContext.appArmorProfile"
                )
            )
    for key, value in mapping(dig(pod.metadata, "annotations")).items():
        if key.startswith(APPARMOR_ANNOTATION) and value == "unconfined":
            out.append(Violation(f"annotation {key} is unconfined", key_path(f"{pod.metadata_path}.annotations", key)))
    return out
