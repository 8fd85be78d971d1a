"""The node the distribution drivers' tests start from: the first server of a single-node site on
systemd, amd64, with the default pod and service networks and nothing else set."""

from __future__ import annotations

from typing import Any

from components.distributions import NodeSpec


def node_with(**changes: Any) -> NodeSpec:
    """That node with ``changes`` (NodeSpec fields); every call gets its own lists and dicts."""
    fields: dict[str, Any] = {
        "site": "s",
        "host": "n1",
        "address": "10.0.0.11",
        "role": "server",
        "first_server": True,
        "server_url": None,
        "arch": "amd64",
        "labels": {},
        "taints": [],
        "tls_sans": [],
        "cluster_cidr": "10.42.0.0/16",
        "service_cidr": "10.43.0.0/16",
        "profile": "standard",
        "disable_agent": False,
        "service_manager": "systemd",
        "registry_mirrors": {},
    }
    return NodeSpec(**{**fields, **changes})
