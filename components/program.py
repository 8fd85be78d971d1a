"""The program behind ``__main__.py``: stack config -> inventory -> guard -> EdgeFleet.

User errors (an invalid inventory, missing config) surface as :class:`pulumi.RunError`, which
the engine shows as a plain message without a traceback, before any resource is registered:
an invalid inventory never leaves a half-applied change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pulumi

from components.fleet import EdgeFleet, FleetArgs
from components.inventory import InventoryError, load_inventory

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEV_PASSPHRASE = "edgefleet-dev-lab-only"


def _check_passphrase(stack: str) -> None:
    if stack == "prod" and os.environ.get("PULUMI_CONFIG_PASSPHRASE") == DEV_PASSPHRASE:
        raise pulumi.RunError(
            "the prod stack must not use the public dev passphrase "
            "(fix: supply PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE from your secret store)"
        )


def build_fleet(config: pulumi.Config, stack: str) -> dict[str, object]:
    """Everything the stack manages; returns the stack outputs."""
    _check_passphrase(stack)
    inventory_path = config.get("inventory")
    if not inventory_path:
        raise pulumi.RunError(f"Pulumi.{stack}.yaml: config edgefleet:inventory is not set (fix: pulumi config set inventory sites/<file>.yaml)")
    try:
        inventory = load_inventory(PROJECT_DIR / inventory_path)
    except InventoryError as exc:
        raise pulumi.RunError("invalid inventory:\n" + str(exc)) from None

    from components.site import check_site

    problems = [p for site in inventory.inventory.sites for p in check_site(site, inventory.base)]
    if problems:
        raise pulumi.RunError(f"{inventory_path}: the sites cannot be installed as described:\n" + "\n".join(problems))

    policy_config = config.get("policyConfig")
    if policy_config:
        from policies.guard import install_guard

        install_guard(stack, PROJECT_DIR / policy_config)

    fleet_secret = config.get_secret("fleetSecret")
    if fleet_secret is None:
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:fleetSecret is not set "
            '(fix: pulumi config set --secret fleetSecret "$(openssl rand -hex 32)")'
        )

    from components.workloads import workload_deployers

    fleet = EdgeFleet(
        "fleet",
        FleetArgs(
            inventory=inventory,
            fleet_secret=fleet_secret,
            dial_timeout_s=config.get_int("sshDialTimeoutSeconds") or 60,
            ready_timeout_s=config.get_int("readyTimeoutSeconds") or 300,
            deployers=workload_deployers(inventory, config, PROJECT_DIR),
            probe_servers=config.get_bool("probeServers") or False,
        ),
    )
    outputs: dict[str, object] = {"fleet": inventory.inventory.fleet, "sites": sorted(fleet.sites)}
    for name, site in fleet.sites.items():
        outputs[f"kubeconfig-{name}"] = site.kubeconfig
    return outputs
