"""scripts/pr-preview on crafted engine event streams: every destructive step (uninstall, node
removal, a Kubernetes object deleted) is named per site and host, the headline is then a
warning rather than a green check, and the per-site counts add up to the engine's summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "pr-preview"
STACK = "urn:pulumi:dev::edgefleet::pulumi:pulumi:Stack::edgefleet-dev"
FLEET = "urn:pulumi:dev::edgefleet::edge:fleet:EdgeFleet::fleet"
SITE_T = "edge:fleet:EdgeFleet$edge:site:EdgeSite"
HOST_T = f"{SITE_T}$edge:host:EdgeHost"
DYN_T = f"{HOST_T}$pulumi-python:dynamic:Resource"


def urn(types: str, name: str) -> str:
    return f"urn:pulumi:dev::edgefleet::{types}::{name}"


SITE = urn(SITE_T, "lab-ha")
AGENT = urn(HOST_T, "lab-ha-ha-agent")
LABEL = "site 'lab-ha' host 'ha-agent' (10.213.7.24)"


def state(urn_: str, type_: str, parent: str, inputs: dict) -> dict:
    return {"urn": urn_, "type": type_, "parent": parent, "inputs": inputs, "outputs": inputs}


def command(name: str, label: str, delete: str | None) -> dict:
    return state(
        urn(DYN_T, name),
        "pulumi-python:dynamic:Resource",
        AGENT,
        {"kind": "edgefleet:remote:Command", "label": label, "create": "true", "delete": delete},
    )


def event(seq: int, op: str, old: dict | None = None, new: dict | None = None) -> dict:
    target = new or old
    assert target is not None
    return {
        "sequence": seq,
        "timestamp": 0,
        "resourcePreEvent": {
            "metadata": {"op": op, "urn": target["urn"], "type": target["type"], "old": old, "new": new}
        },
    }


def stream(events: list[dict], summary: dict[str, int]) -> str:
    tail = {"sequence": len(events) + 1, "timestamp": 0, "summaryEvent": {"resourceChanges": summary, "result": ""}}
    return "\n".join(json.dumps(e) for e in [*events, tail]) + "\n"


def pr_preview(text: str, tmp_path: Path) -> str:
    path = tmp_path / "preview.jsonl"
    path.write_text(text)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--stack", "dev", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def site_state() -> dict:
    return state(SITE, "edge:site:EdgeSite", FLEET, {"site": "lab-ha"})


def test_a_removed_host_names_its_uninstall_and_node_removal_and_is_not_green(tmp_path: Path) -> None:
    host = state(AGENT, "edge:host:EdgeHost", SITE, {"site": "lab-ha", "host": "ha-agent", "address": "10.213.7.24"})
    install = command("m-3f9a8c1d2e4b-install", LABEL, "#!/usr/bin/env bash\nuninstall\n")
    # Node operations run on the first server: the label names both, the host is this one.
    node = command("m-3f9a8c1d2e4b-node", f"{LABEL} via site 'lab-ha' host 'ha-1' (10.213.7.21)", "remove node\n")
    drain = command("m-3f9a8c1d2e4b-drain", LABEL, None)
    upload = state(
        urn(DYN_T, "m-3f9a8c1d2e4b-upload-k3s"),
        "pulumi-python:dynamic:Resource",
        AGENT,
        {"kind": "edgefleet:remote:CopyToRemote", "label": LABEL},
    )
    events = [event(1, "same", new=site_state())] + [
        event(i, "delete", old=s) for i, s in enumerate((host, install, node, drain, upload), 2)
    ]
    md = pr_preview(stream(events, {"delete": 5, "same": 1}), tmp_path)
    assert md.splitlines()[1] == "### ⚠️ Pulumi preview of stack `dev`: 2 destructive steps"
    assert "✅" not in md
    rows = [line for line in md.splitlines() if line.startswith("| lab-ha | ha-agent")]
    assert rows == [
        "| lab-ha | ha-agent (10.213.7.24) | uninstall: stops the distribution and removes its data directory "
        "(etcd, volumes) on the host | `m-3f9a8c1d2e4b-install` (delete) |",
        "| lab-ha | ha-agent (10.213.7.24) | drain and delete the Kubernetes node | `m-3f9a8c1d2e4b-node` (delete) |",
    ]
    assert "| lab-ha | 5 |" in md and "| **total** | 5 |" in md


def test_a_replacement_counts_once_per_site_as_in_the_summary_and_is_destructive(tmp_path: Path) -> None:
    old = command("m-3f9a8c1d2e4b-install", LABEL, "uninstall\n")
    new = command("m-3f9a8c1d2e4b-install", LABEL, "uninstall\n")
    host = state(AGENT, "edge:host:EdgeHost", SITE, {"site": "lab-ha", "host": "ha-agent", "address": "10.213.7.24"})
    events = [
        event(1, "same", new=site_state()),
        event(2, "same", new=host),
        event(3, "replace", old=old, new=new),
        event(4, "create-replacement", old=old, new=new),
        event(5, "delete-replaced", old=old, new=new),
    ]
    md = pr_preview(stream(events, {"replace": 1, "same": 2}), tmp_path)
    assert "**Changes:** 1 to replace" in md
    assert "| lab-ha | 1 |" in md and "| **total** | 1 |" in md
    assert "differ from the engine's summary" not in md
    assert "`m-3f9a8c1d2e4b-install` (replace)" in md and md.splitlines()[1].startswith("### ⚠️")


def test_a_deleted_namespace_is_destructive_and_creates_alone_stay_green(tmp_path: Path) -> None:
    ns = state(
        urn(f"{SITE_T}$kubernetes:core/v1:Namespace", "lab-ha-predictive-maintenance"),
        "kubernetes:core/v1:Namespace",
        SITE,
        {"metadata": {"name": "predictive-maintenance"}},
    )
    md = pr_preview(stream([event(1, "same", new=site_state()), event(2, "delete", old=ns)], {"delete": 1}), tmp_path)
    assert "| lab-ha | - | deletes the live Kubernetes Namespace and everything in it |" in md
    created = command("m-3f9a8c1d2e4b-install", LABEL, "uninstall\n")
    md = pr_preview(
        stream([event(1, "same", new=site_state()), event(2, "create", new=created)], {"create": 1}), tmp_path
    )
    assert md.splitlines()[1] == "### ✅ Pulumi preview of stack `dev`" and "Destructive" not in md
