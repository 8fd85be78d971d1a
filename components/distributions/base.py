"""The typed inputs every distribution renders from, and the error a renderer raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Arch = Literal["amd64", "arm64"]
Role = Literal["server", "agent"]
Profile = Literal["standard", "gateway"]
ServiceManager = Literal["systemd", "openrc", "supervised"]


class DistributionError(Exception):
    """Inputs a distribution cannot render: names the field, what is wrong and the fix."""

    def __init__(self, field: str, message: str, fix: str):
        self.field, self.message, self.fix = field, message, fix
        super().__init__(f"{field}: {message} (fix: {fix})")


@dataclass(frozen=True)
class NodeSpec:
    """One host of a site as a distribution sees it."""

    site: str
    host: str
    address: str  # management address of the node
    role: Role
    first_server: bool  # initialises the cluster
    server_url: str | None  # https://<first server or registration address>:6443 for joiners
    arch: Arch
    labels: dict[str, str]
    taints: list[str]  # key=value:Effect
    tls_sans: list[str]
    cluster_cidr: str
    service_cidr: str
    profile: Profile  # gateway = constrained, egress-only device
    disable_agent: bool  # server without kubelet
    service_manager: ServiceManager
    registry_mirrors: dict[str, list[str]]  # registry -> endpoints
    ha: bool = False  # the site runs several servers on embedded etcd
    data_dir: str | None = None  # None: the distribution's default
    extra_args: tuple[str, ...] = ()  # flags for this node's role
    protect_kernel_defaults: bool = True  # kubelet --protect-kernel-defaults and the sysctls it needs
    # containerd leaves a container's oom_score_adj as it finds it (for runtimes that may not lower it)
    restrict_oom_score_adj: bool = False
