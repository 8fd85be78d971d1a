"""The driver interface: what the site and host components need from a distribution.

A driver is stateless and pure: typed inputs in, text out. The host component runs what it
renders in this order: install (again, with a drain before it, when the version, an artifact or
a steady setting changes), then node-ready; on removal remove-node, then uninstall.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from components.distributions.artifacts import UploadedArtifact
from components.distributions.base import NodeSpec
from components.distributions.bash import render_cat
from components.distributions.facts import InstallFacts
from components.distributions.kube import (
    KubeAccess,
    drain_body,
    kube_script,
    node_check_body,
    node_ready_body,
    remove_node_body,
    rewrite_kubeconfig,
)

# An install prints ``<mark><node name>`` when the name the node registered with may differ from
# the inventory's (the node keeps the name of its first install).
NODE_NAME_MARK = "edgefleet-node-name="


class Driver(ABC):
    """One Kubernetes distribution's renderers."""

    name: ClassVar[str]
    token_env: ClassVar[str]  # environment variable the install script reads the join secret from
    title: ClassVar[str]  # the distribution's name in scripts' descriptions
    on_server: ClassVar[str]  # where node operations run, as their descriptions say it
    access: ClassVar[KubeAccess]  # how a server reaches its own API, at the distribution's default paths

    @abstractmethod
    def config_files(self, node: NodeSpec) -> dict[str, tuple[str, int]]:
        """Every configuration file of the node: path -> (content, mode)."""

    @abstractmethod
    def render_install(
        self, node: NodeSpec, artifacts: Sequence[UploadedArtifact], *, ready_timeout_s: int = 300
    ) -> str:
        """Install, configure and start the distribution on one node, or bring it to the
        rendered state (idempotent: restarts only on change). Every artifact is verified
        first, so re-running it with a new release's artifacts is the upgrade."""

    @abstractmethod
    def render_join_token(self, node: NodeSpec) -> str | None:
        """A script the first server runs to mint ``node``'s join secret (printed alone on
        stdout), or None when the install reads a secret the site already has."""

    @abstractmethod
    def render_uninstall(self, node: NodeSpec) -> str:
        """Remove the distribution from the node (idempotent)."""

    @abstractmethod
    def kubeconfig_path(self, node: NodeSpec) -> str:
        """Where a server keeps the admin kubeconfig for clients outside the site."""

    @abstractmethod
    def install_facts(self, node: NodeSpec) -> InstallFacts:
        """The hardening the node really gets, read from what is rendered for it."""

    def has_node(self, node: NodeSpec) -> bool:
        """The node runs a kubelet, so it registers a Node object."""
        return True

    def render_check(self, node: NodeSpec, artifacts: Sequence[UploadedArtifact]) -> str | None:
        """A script that reads the install back (run on refresh): it prints ``CHECK_PRESENT``
        (components.contract) when the binary, the applied configuration and the running service
        are the ones rendered, else ``CHECK_ABSENT`` and what is missing. None: this
        distribution is not read back."""
        return None

    def kube_access(self, node: NodeSpec) -> KubeAccess:
        """How ``node`` (a server) reaches its own API with admin rights."""
        return self.access

    def render_fetch_kubeconfig(self, node: NodeSpec) -> str:
        return render_cat(self.kubeconfig_path(node), "admin kubeconfig", node.host)

    def rewrite_kubeconfig(self, text: str, server_url: str) -> str:
        return rewrite_kubeconfig(text, server_url)

    def render_drain(self, node_name: str, *, timeout_s: int = 300, own_api: bool = False) -> str:
        """Cordon and drain a node before its install re-runs (run on a server; ``own_api``: on
        the node itself, the first server, through its own API)."""
        return kube_script(
            f"Cordon and drain {self.title} node {node_name}{self.on_server}.",
            self.access,
            drain_body(self.access, node_name, timeout_s, own_api=own_api),
        )

    def render_node_ready(self, node: NodeSpec, *, timeout_s: int = 300) -> str:
        """Wait until the node is Ready and uncordon it if a drain cordoned it (run on a server)."""
        return kube_script(
            f"Wait until {self.title} node {node.host} is Ready; uncordon it after an upgrade drain{self.on_server}.",
            self.access,
            node_ready_body(self.access, node.host, timeout_s, has_node=self.has_node(node)),
        )

    def render_node_check(self, node: NodeSpec) -> str:
        """Fails unless the API answers and the node is registered (run on a server; the
        read-back of :meth:`render_node_ready`)."""
        return kube_script(
            f"Check that the {self.title} API answers and node {node.host} is registered{self.on_server}.",
            self.access,
            node_check_body(self.access, node.host, has_node=self.has_node(node)),
        )

    def render_remove_node(self, node_name: str, *, timeout_s: int = 300) -> str:
        """Drain and delete a node leaving the cluster (run on a server)."""
        return kube_script(
            f"Drain and delete {self.title} node {node_name}{self.on_server}.",
            self.access,
            remove_node_body(self.access, node_name, timeout_s),
        )
