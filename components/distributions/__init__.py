"""Kubernetes distribution drivers: pure renderers of configuration and lifecycle scripts.

``driver_for(name)`` returns the driver of ``k3s``, ``k0s`` or ``microshift``; every driver
implements :class:`components.distributions.common.Driver`.
"""

from __future__ import annotations

from components.distributions import k0s, k3s, microshift
from components.distributions.common import DistributionError, Driver

_DRIVERS: dict[str, Driver] = {"k3s": k3s.DRIVER, "k0s": k0s.DRIVER, "microshift": microshift.DRIVER}


def driver_for(name: str) -> Driver:
    """The driver of distribution ``name``."""
    try:
        return _DRIVERS[name]
    except KeyError:
        raise DistributionError("distribution.name", f"{name!r} is not a supported distribution",
                                f"use one of {', '.join(sorted(_DRIVERS))}") from None


__all__ = ["Driver", "DistributionError", "driver_for"]
