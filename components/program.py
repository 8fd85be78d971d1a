"""The program behind ``__main__.py``: stack config -> inventory -> guard -> EdgeFleet.

User errors (an invalid inventory, missing config) surface as :class:`pulumi.RunError`, which
the engine shows as a plain message without a traceback, before any resource is registered:
an invalid inventory never leaves a half-applied change.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pulumi

from components.fleet import EdgeFleet, FleetArgs
from components.inventory import InventoryError, LoadedInventory, load_inventory

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEV_PASSPHRASE = "edgefleet-dev-lab-only"


def _passphrases() -> list[tuple[str, str]]:
    """The passphrases the CLI may be using, each with where it came from."""
    found = []
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        found.append(("PULUMI_CONFIG_PASSPHRASE", os.environ["PULUMI_CONFIG_PASSPHRASE"]))
    path = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if path:
        try:
            found.append((f"PULUMI_CONFIG_PASSPHRASE_FILE ({path})", Path(path).read_text()))
        except OSError:
            pass  # the CLI itself reports a file it cannot read
    return found


def check_passphrase(stack: str, environment: str) -> None:
    """Refuse the public dev passphrase for a stack whose inventory is prod (or named prod)."""
    if environment != "prod" and stack != "prod":
        return
    for source, value in _passphrases():
        if value.strip() == DEV_PASSPHRASE:
            why = "whose inventory's environment is prod" if environment == "prod" else "the prod stack"
            raise pulumi.RunError(
                f"Pulumi.{stack}.yaml: {source}: the public dev passphrase cannot protect the secrets of stack "
                f"{stack!r} ({why}) (fix: supply the prod passphrase from your secret store through "
                "PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE)"
            )


def select_site(inventory: LoadedInventory, site: str, stack: str, inventory_path: str) -> LoadedInventory:
    """The inventory reduced to the one site a site stack (``edgefleet:site``) manages; the
    whole inventory when the stack names no site. Resources keep the names they have in a
    whole-fleet stack, so a site moves between the two by state alone (``python -m fleet migrate``)."""
    if not site:
        return inventory
    chosen = [s for s in inventory.inventory.sites if s.name == site]
    if not chosen:
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:site: {site!r} is not a site of {inventory_path} "
            "(fix: name one of its sites, or remove the key to manage the whole inventory)"
        )
    return dataclasses.replace(inventory, inventory=inventory.inventory.model_copy(update={"sites": chosen}))


def build_fleet(config: pulumi.Config, stack: str) -> dict[str, object]:
    """Everything the stack manages; returns the stack outputs."""
    inventory_path = config.get("inventory")
    if not inventory_path:
        raise pulumi.RunError(f"Pulumi.{stack}.yaml: config edgefleet:inventory is not set (fix: pulumi config set inventory sites/<file>.yaml)")
    try:
        inventory = load_inventory(PROJECT_DIR / inventory_path)
    except InventoryError as exc:
        raise pulumi.RunError("invalid inventory:\n" + str(exc)) from None
    check_passphrase(stack, inventory.inventory.environment)
    site = config.get("site") or ""
    if not site and config.get_bool("siteStacks"):
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:siteStacks: the sites of stack {stack!r} are managed as site stacks "
            f"({stack}.<site>) (fix: run `python -m fleet up --stack {stack}`; this stack only holds their shared config)"
        )
    inventory = select_site(inventory, site, stack, inventory_path)

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
            '(fix: openssl rand -hex 32 | pulumi config set --secret fleetSecret, which reads the value '
            "from stdin so that it never appears in the process list)"
        )

    command_timeout_s = config.get_int("commandTimeoutSeconds") or None
    if command_timeout_s is not None and command_timeout_s < 60:
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:commandTimeoutSeconds: {command_timeout_s} is too short for any "
            "install step (fix: give at least 60, or unset it to derive each step's deadline from its own timeouts)"
        )

    from components.workloads import workload_deployers

    fleet = EdgeFleet(
        "fleet",
        FleetArgs(
            inventory=inventory,
            fleet_secret=fleet_secret,
            dial_timeout_s=config.get_int("sshDialTimeoutSeconds") or 60,
            ready_timeout_s=config.get_int("readyTimeoutSeconds") or 300,
            command_timeout_s=command_timeout_s,
            deployers=workload_deployers(inventory, config, PROJECT_DIR),
            probe_servers=config.get_bool("probeServers") or False,
        ),
    )
    outputs: dict[str, object] = {"fleet": inventory.inventory.fleet, "sites": sorted(fleet.sites)}
    for name, site in fleet.sites.items():
        outputs[f"kubeconfig-{name}"] = site.kubeconfig
    return outputs
