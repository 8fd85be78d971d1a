"""Kubernetes distribution drivers: pure renderers of configuration and lifecycle scripts.

``driver_for(name)`` returns the driver of ``k3s``, ``k0s`` or ``microshift``; every driver is a
:class:`Driver` (components/distributions/driver.py).

Modules: ``base`` (node spec, error), ``driver`` (the interface), ``facts`` (install facts),
``checks`` (node validation), ``artifacts`` (release files and their verification), ``bash``
(script building blocks and the bash library), ``templating`` (the files under templates/),
``units`` (systemd, OpenRC, supervisor), ``kube`` (node operations, kubeconfig), ``kubelet``
(settings every distribution renders), ``formats`` (YAML, TOML); one module per distribution.
"""

from __future__ import annotations

from components.distributions.artifacts import UploadedArtifact
from components.distributions.base import DistributionError, NodeSpec
from components.distributions.driver import NODE_NAME_MARK, Driver
from components.distributions.facts import InstallFacts, combine_facts
from components.distributions.k0s import K0sDriver
from components.distributions.k3s import K3sDriver
from components.distributions.kube import KubeAccess
from components.distributions.microshift import MicroShiftDriver

_DRIVERS: dict[str, Driver] = {"k3s": K3sDriver(), "k0s": K0sDriver(), "microshift": MicroShiftDriver()}


def driver_for(name: str) -> Driver:
    """The driver of distribution ``name``."""
    try:
        return _DRIVERS[name]
    except KeyError:
        raise DistributionError(
            "distribution.name",
            f"{name!r} is not a supported distribution",
            f"use one of {', '.join(sorted(_DRIVERS))}",
        ) from None


__all__ = [
    "NODE_NAME_MARK",
    "DistributionError",
    "Driver",
    "InstallFacts",
    "K0sDriver",
    "K3sDriver",
    "KubeAccess",
    "MicroShiftDriver",
    "NodeSpec",
    "UploadedArtifact",
    "combine_facts",
    "driver_for",
]
