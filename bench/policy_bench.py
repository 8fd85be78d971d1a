"""Audit throughput: `python -m policies.audit` end to end over generated Kubernetes YAML.

Generates corpora of N manifests (Deployments, Services, ConfigMaps, NetworkPolicies, PDBs,
HPAs in 50 namespaces, a quarter of the workloads with violations, 10 manifests per file),
runs the audit CLI as a user would (a fresh interpreter, JSON report) a bounded number of
times per size, and records wall time and peak RSS of the child process. The budget for
1,000 manifests is 1 s and 200 MB.

    .venv/bin/python bench/policy_bench.py [--repeat 5] [--sizes 250,500,1000,2000]

Writes bench/results/policy.json and bench/results/policy.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
BUDGET_SECONDS = 1.0
BUDGET_MB = 200.0
PER_FILE = 10
DIGEST = "sha256:" + "5e" * 32


def deployment(i: int, ns: str, bad: bool) -> dict:
    container: dict[str, Any] = {
        "name": "server",
        "image": f"registry.edgefleet.local/inference/model-{i % 7}:1.{i % 5}.0@{DIGEST}",
        "ports": [{"name": "http", "containerPort": 8080}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "env": [{"name": "MODEL_NAME", "value": f"model-{i}"}],
    }
    if bad:
        container["securityContext"] = {"privileged": True}
        container["image"] = "docker.io/library/nginx:1.27"
        container["env"].append({"name": "API_TOKEN", "value": "not-a-real-token"})
    name = f"app-{i}"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/name": name,
                "app.kubernetes.io/version": "1.0.0",
                "app.kubernetes.io/part-of": "edgefleet",
            },
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                },
            },
        },
    }


def manifests(n: int) -> list[dict]:
    """n manifests: per application a Deployment, Service, ConfigMap and PDB; per namespace a
    Namespace, a default-deny NetworkPolicy and an HPA."""
    out: list[dict] = []
    namespaces = [f"site-{k}" for k in range(50)]
    for ns in namespaces:
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}},
            }
        )
        out.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "default-deny", "namespace": ns},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
            }
        )
    i = 0
    while len(out) < n:
        ns = namespaces[i % len(namespaces)]
        name = f"app-{i}"
        out.append(deployment(i, ns, bad=i % 4 == 0))
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"selector": {"app.kubernetes.io/name": name}, "ports": [{"port": 80, "targetPort": "http"}]},
            }
        )
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"{name}-config", "namespace": ns},
                "data": {"threshold": "0.6", "labels.txt": "\n".join(f"class-{k}" for k in range(20))},
            }
        )
        out.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": name}}},
            }
        )
        out.append(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": 2,
                    "maxReplicas": 6,
                },
            }
        )
        i += 1
    return out[:n]


def write_corpus(directory: Path, n: int) -> int:
    docs = manifests(n)
    for k in range(0, len(docs), PER_FILE):
        (directory / f"part-{k // PER_FILE:04d}.yaml").write_text(
            yaml.safe_dump_all(docs[k : k + PER_FILE], sort_keys=False)
        )
    return sum(f.stat().st_size for f in directory.iterdir())


def run_once(directory: Path) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MB) of the audit process, and its exit status."""
    start = time.perf_counter()
    # A fresh child per run: ru_maxrss of RUSAGE_CHILDREN is the largest child so far, so
    # each measurement runs in its own intermediate process.
    probe = (
        "import resource, subprocess, sys;"
        "p = subprocess.run([sys.executable, '-m', 'policies.audit', sys.argv[1], '--format', 'json',"
        " '-o', '/dev/null', '--fail-on', 'none']);"
        "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(directory)], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    )
    wall = time.perf_counter() - start
    status, maxrss_kb = out.stdout.split()
    return wall, int(maxrss_kb) / 1024, int(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per size (default 5, at most 20)")
    parser.add_argument("--sizes", default="250,500,1000,2000", help="manifest counts (each at most 5000)")
    args = parser.parse_args()
    repeat = max(1, min(args.repeat, 20))
    sizes = [min(int(s), 5000) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
            size_bytes = write_corpus(Path(tmp), n)
            run_once(Path(tmp))  # warm the page cache and bytecode cache
            runs = [run_once(Path(tmp)) for _ in range(repeat)]
        walls = [w for w, _, _ in runs]
        rss = [r for _, r, _ in runs]
        assert all(s == 0 for _, _, s in runs), "the audit failed"
        rows.append(
            {
                "manifests": n,
                "bytes": size_bytes,
                "runs": repeat,
                "wall_s_median": statistics.median(walls),
                "wall_s_max": max(walls),
                "rss_mb_max": max(rss),
            }
        )
        print(
            f"{n:>5} manifests ({size_bytes / 1e6:.1f} MB): median {statistics.median(walls):.3f} s, "
            f"max {max(walls):.3f} s, peak RSS {max(rss):.0f} MB",
            flush=True,
        )
    at_1000 = next((r for r in rows if r["manifests"] == 1000), None)
    result = {
        "benchmark": "policies.audit over generated Kubernetes YAML (end to end, fresh interpreter, JSON report)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "budget": {"manifests": 1000, "wall_s": BUDGET_SECONDS, "rss_mb": BUDGET_MB},
        "within_budget": None
        if at_1000 is None
        else (at_1000["wall_s_max"] <= BUDGET_SECONDS and at_1000["rss_mb_max"] <= BUDGET_MB),
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "policy.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows)
    print(f"wrote {RESULTS / 'policy.json'} and {RESULTS / 'policy.png'}")
    return 0


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["manifests"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(n, [r["wall_s_median"] for r in rows], "o-", label="median")
    ax1.plot(n, [r["wall_s_max"] for r in rows], "x--", label="max")
    ax1.axhline(BUDGET_SECONDS, color="red", linestyle=":", label="budget at 1,000")
    ax1.set(xlabel="manifests", ylabel="seconds (end to end)", title="audit wall time")
    ax1.legend()
    ax2.plot(n, [r["rss_mb_max"] for r in rows], "o-")
    ax2.axhline(BUDGET_MB, color="red", linestyle=":")
    ax2.set(xlabel="manifests", ylabel="MB", title="audit peak RSS")
    fig.tight_layout()
    fig.savefig(RESULTS / "policy.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
