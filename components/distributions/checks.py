"""Node specs a distribution refuses before rendering anything: strings outside their syntax,
flags that override the hardening baseline, impossible role combinations, bad mirrors.

The inventory checks the same strings against the same syntax (components.contract); these
checks keep the renderers safe when they are called directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from components.contract import (
    LABEL_VALUE,
    MIRROR_URL,
    NAME,
    REGISTRY,
    bad_label_key,
    flag_problems,
    is_dns_name,
    is_ip,
    taint_ok,
)
from components.distributions.base import DistributionError, NodeSpec


def mirror_host(endpoint: str) -> tuple[str, bool]:
    """``https://mirror:5000`` -> (``mirror:5000``, insecure=False)."""
    m = MIRROR_URL.fullmatch(endpoint)
    if not m:
        raise DistributionError(
            "registry_mirrors",
            f"{endpoint!r} is not a registry endpoint URL",
            "write the mirror as https://HOST[:PORT]",
        )
    port = f":{m.group('port')}" if m.group("port") else ""
    return m.group("host") + port, m.group("scheme") == "http"


def check_mirrors(mirrors: Mapping[str, Sequence[str]]) -> None:
    for registry, endpoints in mirrors.items():
        # The registry name becomes a directory name (containerd's certs.d) and a TOML string.
        m = REGISTRY.fullmatch(registry)
        if m is None or not is_dns_name(m.group("host")):
            raise DistributionError(
                "registry_mirrors",
                f"{registry!r} is not a registry name",
                "key mirrors by the registry's host[:port], e.g. docker.io",
            )
        if not endpoints:
            raise DistributionError(f"registry_mirrors.{registry}", "no endpoints", "list at least one mirror URL")
        for e in endpoints:
            mirror_host(e)


def check_strings(node: NodeSpec) -> None:
    """Every string of the node that lands on the host has its own syntax."""
    at = f"{node.site!r}/{node.host!r}"
    for field, value in (("site", node.site), ("host", node.host)):
        if not NAME.fullmatch(value):
            raise DistributionError(
                f"{at}.{field}", f"{value!r} is not a name", "use lowercase letters, digits and '-'"
            )
    if not is_ip(node.address):
        raise DistributionError(f"{at}.address", f"{node.address!r} is not an IP address", "give the management IP")
    if node.server_url is not None and not re.fullmatch(r"https://[A-Za-z0-9.:\[\]-]+:6443", node.server_url):
        raise DistributionError(
            f"{at}.server_url", f"{node.server_url!r} is not an API server URL", "give https://HOST:6443"
        )
    for key, value in node.labels.items():
        if bad_label_key(key) or not LABEL_VALUE.fullmatch(value):
            raise DistributionError(
                f"{at}.labels", f"{key!r}: {value!r} is not a Kubernetes label", "use Kubernetes label syntax"
            )
    for taint in node.taints:
        if not taint_ok(taint):
            raise DistributionError(f"{at}.taints", f"{taint!r} is not a taint", "write key=value:Effect")
    for san in node.tls_sans:
        if not (is_ip(san) or is_dns_name(san)):
            raise DistributionError(
                f"{at}.tls_sans", f"{san!r} is neither an IP address nor a DNS name", "list names or IPs only"
            )
    check_mirrors(node.registry_mirrors)


def check_flags(node: NodeSpec, distribution: str) -> None:
    """Flags are well-formed and leave the rendered hardening baseline alone."""
    for _, message, fix in flag_problems(list(node.extra_args), distribution.lower())[:1]:
        raise DistributionError(f"{node.site}/{node.host}.extra_args", message, fix)


def check_node(node: NodeSpec, distribution: str) -> None:
    """Rules every multi-node distribution shares: role/agent combinations, flag syntax, mirrors."""
    check_strings(node)
    at = f"{node.site}/{node.host}"
    if node.role == "agent" and not node.server_url:
        raise DistributionError(
            f"{at}.server_url",
            "an agent needs the URL of a server to join",
            "give https://<first server or registration address>:6443",
        )
    if node.role == "server" and node.first_server and node.server_url:
        raise DistributionError(
            f"{at}.server_url",
            "the first server initialises the cluster and joins nothing",
            "leave server_url empty for the first server",
        )
    if node.role == "server" and not node.first_server:
        if not node.server_url:
            raise DistributionError(
                f"{at}.server_url",
                "a joining server needs the URL of the first server",
                "give https://<first server or registration address>:6443",
            )
        if not node.ha:
            raise DistributionError(
                f"{at}.role",
                "a second server needs embedded etcd (topology 'ha')",
                "use topology 'ha' with three servers, or make this host an agent",
            )
    if node.disable_agent and node.role != "server":
        raise DistributionError(f"{at}.disable_agent", "only servers can run without an agent", "drop disable_agent")
    check_flags(node, distribution)
