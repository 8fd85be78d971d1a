"""Fleet inventory: the schema of ``sites/*.yaml`` and its loader.

An inventory is data only. :func:`load_inventory` validates one file completely and raises
:class:`InventoryError` listing *every* problem as ``file: field: message (fix: ...)``, so
``pulumi preview`` can refuse an invalid inventory before any resource is registered.

``spec`` is the schema, ``paths`` what an inventory path may name, ``checks`` the rules that
span fields and files, ``loader`` the YAML and the error report.
"""

from components.inventory.checks import artifact_sha256
from components.inventory.loader import InventoryError, LoadedInventory, load_inventory, parse_yaml
from components.inventory.paths import expand_path, path_problem
from components.inventory.spec import (
    ArtifactSpec,
    DistributionSpec,
    Gpu,
    Host,
    Inventory,
    Monitoring,
    MonitoringCore,
    Network,
    Rollout,
    SecretRef,
    SimulatedNodes,
    Site,
    Ssh,
    Workload,
)

__all__ = [
    "ArtifactSpec",
    "DistributionSpec",
    "Gpu",
    "Host",
    "Inventory",
    "InventoryError",
    "LoadedInventory",
    "Monitoring",
    "MonitoringCore",
    "Network",
    "Rollout",
    "SecretRef",
    "SimulatedNodes",
    "Site",
    "Ssh",
    "Workload",
    "artifact_sha256",
    "expand_path",
    "load_inventory",
    "parse_yaml",
    "path_problem",
]
