"""Simulated worker nodes (kwok) for sites whose hosts cannot run pods.

Lab hosts have no container runtime, so their servers run without the kubelet agent; kwok,
running next to the first server, registers ``count`` fake nodes and plays the node and pod
lifecycle stages, so scheduled workloads become Ready and Deployments report Available.
Dev inventories only: the inventory refuses simulated nodes in prod.

Pure renderers: node manifests and the start/stop scripts for the first server.
"""

from __future__ import annotations

from typing import Any

from components.distributions import KubeAccess
from components.distributions.bash import Script, heredoc_file, q
from components.distributions.formats import yaml_text
from components.distributions.units import Service

BIN = "/usr/local/bin/kwok"
STAGES = "/etc/kwok/stages.yaml"
ANNOTATION = "kwok.x-k8s.io/node"


def node_name(site: str, index: int) -> str:
    return f"{site}-sim-{index}"


def node_manifests(site: str, count: int) -> list[dict[str, Any]]:
    """Fake Nodes kwok manages (selected by its annotation)."""
    capacity = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node_name(site, i),
                "annotations": {ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {
                    "kubernetes.io/hostname": node_name(site, i),
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "edgefleet.io/site": site,
                    "edgefleet.io/simulated": "true",
                },
            },
            "status": {"allocatable": capacity, "capacity": capacity},
        }
        for i in range(1, count + 1)
    ]


def _service(kubeconfig: str) -> Service:
    return Service(
        name="kwok",
        manager="supervised",
        argv=(
            BIN,
            f"--kubeconfig={kubeconfig}",
            f"--config={STAGES}",
            f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",
        ),
        description="kwok simulated nodes",
    )


def render_start(
    site: str, host: str, count: int, binary_path: str, binary_sha256: str, stages: str, access: KubeAccess
) -> str:
    """Install kwok from its verified artifact, start it, and register the nodes through the
    server's admin access (``driver.kube_access(node)``)."""
    svc = _service(access.kubeconfig)
    body = svc.shell() + access.define
    body += (
        f"echo {q(binary_sha256 + '  ' + binary_path)} | sha256sum -c --quiet - || "
        f'die "kwok artifact {binary_path} does not match its sha256 (fix: re-run scripts/bootstrap kwok)"\n'
    )
    body += f"install -m 0755 {q(binary_path)} {q(BIN)}\n"
    body += heredoc_file(STAGES, stages, 0o644)
    for path, (content, mode) in svc.files().items():
        body += heredoc_file(path, content, mode)
    body += "svc_running || svc_start\n"
    body += heredoc_file("/etc/kwok/nodes.yaml", "---\n".join(yaml_text(m) for m in node_manifests(site, count)), 0o644)
    body += f"{access.command()} apply -f /etc/kwok/nodes.yaml >/dev/null\n"
    body += f'log "{count} simulated node(s) registered"\n'
    return Script(
        purpose=f"Start kwok and register {count} simulated node(s) for site {site}.",
        host=host,
        lib=("log", "root", "files"),
    ).render("require_root\n" + body)


def render_check(site: str, host: str, count: int, access: KubeAccess) -> str:
    """Fails unless kwok runs and every simulated node is registered (the read-back of the start)."""
    svc = _service(access.kubeconfig)
    names = " ".join(q(node_name(site, i)) for i in range(1, count + 1))
    body = svc.shell() + access.define
    body += 'svc_running || die "kwok is not running on $HOST"\n'
    body += f"{access.command()} get node {names} -o name >/dev/null\n"
    return Script(purpose=f"Check kwok and the simulated nodes of site {site}.", host=host, lib=("log",)).render(body)


def render_stop(site: str, host: str, count: int, access: KubeAccess) -> str:
    """Delete the simulated nodes, stop kwok, remove it."""
    svc = _service(access.kubeconfig)
    names = " ".join(q(node_name(site, i)) for i in range(1, count + 1))
    body = svc.shell() + access.define
    body += (
        f"if [[ -s {q(access.kubeconfig)} ]]; then {access.command()} delete node {names} "
        "--ignore-not-found --wait=false >/dev/null 2>&1 || true; fi\n"
    )
    body += "svc_stop\nsvc_remove\n"
    body += f"rm -rf -- {q(BIN)} /etc/kwok\n"
    return Script(purpose=f"Remove the simulated nodes of site {site}.", host=host, lib=("log",)).render(body)
