"""A site's health gate, read through its kubeconfig (plain HTTPS with the kubeconfig's
credentials, as the live policy audit reads a cluster): the API is ready, every node is
Ready, every edgefleet workload is Available with its current revision rolled out.

The judgements are pure functions of the API's JSON; :func:`hold` keeps checking for the soak
time and fails as soon as one check fails after the gate first held.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORKLOADS = "/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fpart-of%3Dedgefleet"
POLL_S = 5.0


def _condition(obj: dict[str, Any], kind: str) -> str | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status")
    return None


def node_problems(nodes: dict[str, Any]) -> list[str]:
    items = nodes.get("items") or []
    if not items:
        return ["no node is registered"]
    return [f"node {n['metadata']['name']} is not Ready" for n in items if _condition(n, "Ready") != "True"]


def workload_problems(deployments: dict[str, Any]) -> list[str]:
    out = []
    for d in deployments.get("items") or []:
        meta, spec, status = d.get("metadata") or {}, d.get("spec") or {}, d.get("status") or {}
        name = f"{meta.get('namespace')}/{meta.get('name')}"
        wanted = spec.get("replicas", 1)
        if _condition(d, "Available") != "True":
            out.append(f"deployment {name} is not Available")
        elif (
            status.get("observedGeneration", 0) < meta.get("generation", 0) or status.get("updatedReplicas", 0) < wanted
        ):
            out.append(
                f"deployment {name} has not rolled out its current revision "
                f"({status.get('updatedReplicas', 0)}/{wanted} updated)"
            )
    return out


Getter = Callable[[str], tuple[int, Any]]


def problems(get: Getter) -> list[str]:
    """Everything that keeps the gate shut, from the API through ``get(path) -> (status, body)``."""
    try:
        code, _ = get("/readyz")
        if code != 200:
            return [f"API not ready (/readyz answered {code})"]
        found = []
        code, nodes = get("/api/v1/nodes")
        found += node_problems(nodes) if code == 200 else [f"cannot list nodes (HTTP {code})"]
        code, deployments = get(WORKLOADS)
        found += workload_problems(deployments) if code == 200 else [f"cannot list deployments (HTTP {code})"]
        return found
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, bad JSON
        return [f"API unreachable ({getattr(exc, 'reason', None) or exc})"]


def getter_from_kubeconfig(kubeconfig: str, timeout_s: float = 10.0) -> Getter:
    """A getter for the cluster a kubeconfig (text) names; the text is written to a private
    temporary file only while the TLS context loads it."""
    from policies.audit.live import load_cluster

    with tempfile.TemporaryDirectory(prefix="edgefleet-fleet-") as tmp:
        path = Path(tmp, "kubeconfig")
        path.touch(mode=0o600)
        path.write_text(kubeconfig)
        cluster = load_cluster(path)

    def get(api_path: str) -> tuple[int, Any]:
        req = urllib.request.Request(cluster.server + api_path, headers=cluster.headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=cluster.ssl_context) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw.strip().startswith(b"{") else raw.decode(errors="replace"))
        except urllib.error.HTTPError as exc:
            return exc.code, None

    return get


def hold(
    check: Callable[[], list[str]],
    soak_s: float,
    deadline: float,
    *,
    poll_s: float = POLL_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """None once the gate held for ``soak_s`` without a break; otherwise why not. Before it
    first holds it may take until ``deadline`` (monotonic); after that any failed check fails."""
    while True:
        found = check()
        if not found:
            break
        if clock() + poll_s > deadline:
            return "health gate did not open before the progress deadline: " + "; ".join(found[:5])
        sleep(poll_s)
    held_since = clock()
    while clock() - held_since < soak_s:
        if clock() + min(poll_s, soak_s) > deadline:
            return f"progress deadline reached {clock() - held_since:.0f}s into the {soak_s:.0f}s soak"
        sleep(min(poll_s, max(0.0, soak_s - (clock() - held_since))))
        found = check()
        if found:
            return f"health gate broke {clock() - held_since:.0f}s into the {soak_s:.0f}s soak: " + "; ".join(found[:5])
    return None
