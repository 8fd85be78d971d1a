"""Reading a live cluster for the audit: plain HTTPS list calls with the kubeconfig's
credentials (client certificate, bearer token or basic auth), no client library.

Controller-owned Pods, ReplicaSets and Jobs are skipped (their owner is audited), and so are
the system namespaces and the objects Kubernetes creates by itself, unless asked for.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from policies.resource import Resource
from policies.sources import InputProblem, resource_from_manifest

# (apiVersion, kind, list path) of every kind the rules read.
KINDS: tuple[tuple[str, str, str], ...] = (
    ("v1", "Namespace", "/api/v1/namespaces"),
    ("v1", "Pod", "/api/v1/pods"),
    ("v1", "Service", "/api/v1/services"),
    ("v1", "ConfigMap", "/api/v1/configmaps"),
    ("apps/v1", "Deployment", "/apis/apps/v1/deployments"),
    ("apps/v1", "StatefulSet", "/apis/apps/v1/statefulsets"),
    ("apps/v1", "DaemonSet", "/apis/apps/v1/daemonsets"),
    ("apps/v1", "ReplicaSet", "/apis/apps/v1/replicasets"),
    ("v1", "ReplicationController", "/api/v1/replicationcontrollers"),
    ("batch/v1", "Job", "/apis/batch/v1/jobs"),
    ("batch/v1", "CronJob", "/apis/batch/v1/cronjobs"),
    ("networking.k8s.io/v1", "NetworkPolicy", "/apis/networking.k8s.io/v1/networkpolicies"),
    ("autoscaling/v2", "HorizontalPodAutoscaler", "/apis/autoscaling/v2/horizontalpodautoscalers"),
    ("policy/v1", "PodDisruptionBudget", "/apis/policy/v1/poddisruptionbudgets"),
)
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
PAGE = 500


class KubeconfigError(Exception):
    """A kubeconfig that cannot be used, with the fix."""


@dataclass
class Cluster:
    server: str
    context: str
    ssl_context: ssl.SSLContext | None
    headers: dict[str, str] = field(default_factory=dict)


def _data_or_file(entry: dict[str, Any], key: str, base: Path) -> bytes | None:
    if entry.get(f"{key}-data"):
        return base64.b64decode(entry[f"{key}-data"])
    if entry.get(key):
        path = Path(os.path.expanduser(entry[key]))
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def _named(items: Any, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return item.get(what) or {}
    raise KubeconfigError(f"{path}: no {what} named {name!r} (fix: check the kubeconfig's contexts)")


def _has_credentials(user: dict[str, Any]) -> bool:
    keys = (
        "token",
        "tokenFile",
        "username",
        "password",
        "client-certificate",
        "client-certificate-data",
        "client-key",
        "client-key-data",
    )
    return any(user.get(k) for k in keys)


def load_cluster(path: Path, context: str | None = None) -> Cluster:
    """The API server and credentials of a kubeconfig context (default: current-context)."""
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as e:
        raise KubeconfigError(f"{path}: cannot read ({e.strerror}) (fix: pass an existing kubeconfig)") from None
    except yaml.YAMLError as e:
        raise KubeconfigError(f"{path}: not valid YAML ({e}) (fix: pass a kubeconfig file)") from None
    if not isinstance(config, dict):
        raise KubeconfigError(f"{path}: not a kubeconfig (fix: pass a kubeconfig file)")
    name = context or config.get("current-context")
    if not name:
        raise KubeconfigError(f"{path}: no current-context (fix: pass --context NAME)")
    ctx = _named(config.get("contexts"), name, "context", path)
    cluster = _named(config.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(config.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    server = str(cluster.get("server", "")).rstrip("/")
    if not server.startswith(("https://", "http://")):
        raise KubeconfigError(
            f"{path}: cluster {ctx.get('cluster')!r} has no https server (fix: set clusters[].cluster.server)"
        )
    if user.get("exec") or user.get("auth-provider"):
        raise KubeconfigError(
            f"{path}: user {ctx.get('user')!r} uses an exec/auth-provider plugin, which the audit "
            "does not run (fix: use a kubeconfig with a client certificate or a token)"
        )
    headers = {"Accept": "application/json"}
    base = path.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user.get("username"):
        basic = base64.b64encode(f"{user['username']}:{user.get('password', '')}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    if server.startswith("http://") and _has_credentials(user):
        # Over plain HTTP a token, password or client key would cross the network readable by
        # anyone on the path; kubectl proxy or an https server needs no such exposure.
        raise KubeconfigError(
            f"{path}: context {name!r} would send the credentials of user {ctx.get('user')!r} "
            f"over plain HTTP to {server} (fix: use the cluster's https:// server address, or a "
            "credential-free context such as one pointing at `kubectl proxy`)"
        )
    ssl_context = None
    if server.startswith("https://"):
        ca = _data_or_file(cluster, "certificate-authority", base)
        ssl_context = ssl.create_default_context(cadata=ca.decode() if ca else None)
        if cluster.get("insecure-skip-tls-verify"):
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
        cert, key = _data_or_file(user, "client-certificate", base), _data_or_file(user, "client-key", base)
        if cert and key:
            # ssl only loads client credentials from files: a private temporary directory.
            with tempfile.TemporaryDirectory(prefix="edgefleet-audit-") as tmp:
                cert_file, key_file = Path(tmp, "client.crt"), Path(tmp, "client.key")
                for f, data in ((cert_file, cert), (key_file, key)):
                    f.touch(mode=0o600)
                    f.write_bytes(data)
                ssl_context.load_cert_chain(cert_file, key_file)
    return Cluster(server, name, ssl_context, headers)


def _get(cluster: Cluster, path: str, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(cluster.server + path, headers=cluster.headers)
    # Only the kubeconfig's server: https://, or http:// without credentials (checked above), never file: etc.
    with urllib.request.urlopen(req, timeout=timeout, context=cluster.ssl_context) as resp:
        body: dict[str, Any] = json.loads(resp.read())
    return body


def _is_system(obj: dict[str, Any], kind: str) -> bool:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") if kind != "Namespace" else meta.get("name")
    if ns in SYSTEM_NAMESPACES:
        return True
    # Created by Kubernetes itself in every cluster or namespace.
    return (kind == "Service" and ns == "default" and meta.get("name") == "kubernetes") or (
        kind == "ConfigMap" and meta.get("name") == "kube-root-ca.crt"
    )


def _controlled(obj: dict[str, Any], kind: str) -> bool:
    if kind not in ("Pod", "ReplicaSet", "Job"):
        return False
    return any(o.get("controller") for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


def list_cluster(
    path: Path, context: str | None = None, include_system: bool = False, timeout: float = 10.0
) -> tuple[list[Resource], list[InputProblem]]:
    """Every object of the audited kinds in the cluster of a kubeconfig."""
    try:
        cluster = load_cluster(path, context)
    except (KubeconfigError, OSError, ValueError, ssl.SSLError) as e:
        return [], [InputProblem(str(path), 0, str(e))]
    resources: list[Resource] = []
    problems: list[InputProblem] = []
    where = f"{cluster.server} (context {cluster.context})"
    for api_version, kind, list_path in KINDS:
        token = ""
        while True:
            query = urllib.parse.urlencode({"limit": PAGE, **({"continue": token} if token else {})})
            try:
                page = _get(cluster, f"{list_path}?{query}", timeout)
            except urllib.error.HTTPError as e:
                fatal = e.code == 401
                hint = "the credentials were refused" if fatal else f"HTTP {e.code}"
                problems.append(InputProblem(where, 0, f"cannot list {kind}: {hint}", fatal=fatal))
                break
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                return resources, [
                    *problems,
                    InputProblem(
                        where,
                        0,
                        f"cannot reach the API server: {reason} (fix: check the kubeconfig server and the network)",
                    ),
                ]
            for obj in page.get("items") or []:
                if (
                    not isinstance(obj, dict)
                    or _controlled(obj, kind)
                    or (not include_system and _is_system(obj, kind))
                ):
                    continue
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                meta = obj.get("metadata") or {}
                ns = meta.get("namespace")
                source = f"{cluster.server}/{kind}/{ns + '/' if ns else ''}{meta.get('name')}"
                resources.append(resource_from_manifest(obj, source))
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
    return resources, problems
