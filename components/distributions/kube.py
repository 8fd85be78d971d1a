"""Kubernetes operations a server runs on a node through its own API (drain before an upgrade,
Ready and uncordon after it, drain and delete on removal), and the admin kubeconfig as a
client outside the site sees it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

from components.distributions.base import DistributionError
from components.distributions.bash import Script, q
from components.distributions.formats import yaml_text
from components.distributions.templating import fill


@dataclass(frozen=True)
class KubeAccess:
    """How a server reaches its own API with admin rights."""

    kubectl: tuple[str, ...]  # argv prefix, e.g. (k3s, kubectl, --kubeconfig=...)
    binary: str  # present when the distribution is installed here
    kubeconfig: str  # the admin kubeconfig kubectl reads (for other clients on the server, e.g. kwok)
    client_fix: str = "install the cluster's command-line client"  # when kubectl[0] is a separate tool
    define: str = ""  # shell definitions kubectl[0] needs (e.g. a function)

    def command(self) -> str:
        """The kubectl prefix as shell words (after ``define``)."""
        return " ".join(q(a) for a in self.kubectl)

    def prelude(self) -> str:
        """KUBECTL and api_ready; the bodies below expect them."""
        client = self.kubectl[0]
        check = ""
        if not client.startswith("/") and client != "env":
            check = (
                f'command -v {q(client)} >/dev/null 2>&1 || die "{client} is not installed on $HOST '
                f'(fix: {self.client_fix})"\n'
            )
        return (
            self.define + f"KUBECTL=({self.command()})\n"
            f'[[ -x {q(self.binary)} ]] || die "{self.binary} is not installed on $HOST '
            '(fix: run this on a server of the site)"\n'
            + check
            + "# shellcheck disable=SC2329 # called through wait_for\n"
            'api_ready() { "${KUBECTL[@]}" get --raw /readyz; }\n'
        )

    def wait_api(self, timeout_s: int) -> str:
        return (
            f'wait_for {int(timeout_s)} "the Kubernetes API" api_ready || '
            'die "the API on $HOST does not answer (fix: check the server\'s service)"\n'
        )

    def node_exists(self) -> str:
        return 'node_exists() { [[ -n "$("${KUBECTL[@]}" get node "$NODE" --ignore-not-found -o name)" ]]; }\n'


def drain_body(access: KubeAccess, node_name: str, timeout_s: int, *, own_api: bool = False) -> str:
    """Cordon and drain a node before its upgrade. A node not (yet) registered has nothing to
    drain; a node an operator had already cordoned stays cordoned after the upgrade. ``own_api``:
    the node is the server whose API the drain goes through (the first server); when that API
    does not answer, the upgrade is what may bring it back, so the node is upgraded in place."""
    if own_api:
        wait = (
            f'if ! wait_for {min(int(timeout_s), 30)} "the Kubernetes API" api_ready; then\n'
            '  log "the API on $HOST does not answer: $NODE is upgraded in place, without a drain"\n'
            "  exit 0\n"
            "fi\n"
        )
    else:
        wait = access.wait_api(min(timeout_s, 120))
    return f"NODE={q(node_name)}\n" + wait + access.node_exists() + "\n" + fill("kube-drain.sh", TIMEOUT=int(timeout_s))


def node_ready_body(access: KubeAccess, node_name: str, timeout_s: int, *, has_node: bool = True) -> str:
    """Wait until the node is Ready, then uncordon it if an upgrade drain cordoned it."""
    head = f"NODE={q(node_name)}\n" + access.wait_api(timeout_s)
    if not has_node:
        return head + 'log "$NODE runs no kubelet; the API answers"\n'
    return head + "\n" + fill("kube-node-ready.sh", TIMEOUT=int(timeout_s))


def remove_node_body(access: KubeAccess, node_name: str, timeout_s: int) -> str:
    """Drain and delete a node leaving the cluster (idempotent). A deletion still pending after
    a grace period is explained by the finalizers that hold it."""
    return (
        f"NODE={q(node_name)}\n"
        + access.wait_api(min(timeout_s, 120))
        + access.node_exists()
        + "\n"
        + fill("kube-remove-node.sh", TIMEOUT=int(timeout_s), GRACE=min(int(timeout_s), 60))
    )


def node_check_body(access: KubeAccess, node_name: str, *, has_node: bool) -> str:
    """Fails unless the API answers (within 10 s) and, for a node with a kubelet, the node is
    registered: the read-back of a node's readiness step."""
    body = f"NODE={q(node_name)}\n" + access.wait_api(10)
    if has_node:
        body += access.node_exists() + 'node_exists || die "node $NODE is not registered"\n'
    return body


def kube_script(purpose: str, access: KubeAccess, body: str) -> str:
    """A script run on a server with admin access to the API (host name taken at run time)."""
    return Script(purpose, None, lib=("wait",)).render(access.prelude() + body)


def rewrite_kubeconfig(text: str, server_url: str) -> str:
    """The kubeconfig with every cluster's server replaced by ``server_url``; everything else
    (users, credentials, contexts, formatting) is kept as it was."""
    if not re.fullmatch(r"https://[^\s/]+(:\d+)?/?", server_url):
        raise DistributionError(
            "server_url", f"{server_url!r} is not an https URL of an API server", "give https://HOST:6443"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DistributionError("kubeconfig", f"not valid YAML: {exc}", "fetch the admin kubeconfig again") from None
    clusters = data.get("clusters") if isinstance(data, dict) else None
    if not clusters or not all(
        isinstance(c, dict) and isinstance(c.get("cluster"), dict) and "server" in c["cluster"] for c in clusters
    ):
        raise DistributionError("kubeconfig", "no clusters with a server address", "fetch the admin kubeconfig again")
    pattern = re.compile(r"^(\s*server:[ \t]*)(\S+)[ \t]*$", re.M)
    out, count = pattern.subn(lambda m: m.group(1) + server_url, text)
    parsed = yaml.safe_load(out)
    if count != len(clusters) or any(c["cluster"]["server"] != server_url for c in parsed["clusters"]):
        for c in data["clusters"]:
            c["cluster"]["server"] = server_url
        return yaml_text(data)
    return out
