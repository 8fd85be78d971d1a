"""The program behind ``__main__.py``: stack config -> inventory -> guard -> EdgeFleet, then
each site's workloads on its provider.

This is the one place that reads stack config, files named by the inventory and the network
(the optional server probe); the components it composes only wire resources.

User errors (an invalid inventory, missing config) surface as :class:`pulumi.RunError`, which
the engine shows as a plain message without a traceback, before any resource is registered:
an invalid inventory never leaves a half-applied change.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pulumi

from components.fleet import EdgeFleet, FleetArgs
from components.inventory import InventoryError, LoadedInventory, SecretRef, Site, expand_path, load_inventory
from components.monitoring.agent import AgentArgs, AgentError, CoreEndpoint
from components.monitoring.component import SiteMonitoring
from components.network import NetworkPolicyError, RegistryEgress
from components.serving import IMAGE, InferenceArgs, InferenceService, ModelRegistry
from components.site import EdgeSite
from components.topology import SiteSettings, check_site, download_artifacts, host_key, machine_ids, site_args
from components.workload_plan import WorkloadSettings, plan_fleet_workloads

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


FLEET = "fleet"  # the EdgeFleet component's name: every site's resources are named under it


def probe_servers(inventory: LoadedInventory, timeout_s: float = 2.0) -> list[str]:
    """Servers whose Kubernetes API port does not accept a connection, as messages naming
    site and host. All probes run at once, so the whole check takes at most ``timeout_s``."""
    targets = [(s.name, h.name, h.address) for s in inventory.inventory.sites for h in s.servers]

    def down(target: tuple[str, str, str]) -> str | None:
        site, host, address = target
        try:
            socket.create_connection((address, 6443), timeout=timeout_s).close()
            return None
        except OSError as exc:
            return (
                f"site {site!r} host {host!r} ({address}): Kubernetes API not answering on port 6443 "
                f"({exc.strerror or exc}); expected only before its first install"
            )

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        return [m for m in pool.map(down, targets) if m]


def read_secret(ref: SecretRef, base: Path, config: pulumi.Config) -> pulumi.Output[str]:
    """A secret reference as a Pulumi secret: the file's content or a config secret."""
    if ref.config is not None:
        return config.require_secret(ref.config)
    assert ref.file is not None
    return pulumi.Output.secret(expand_path(ref.file, base).read_text())


def fleet_args(
    inventory: LoadedInventory,
    config: pulumi.Config,
    fleet_secret: pulumi.Output[str],
    *,
    dial_timeout_s: int = 60,
    ready_timeout_s: int = 300,
    command_timeout_s: int | None = None,
    whole: LoadedInventory | None = None,
) -> FleetArgs:
    """The fleet component's arguments: every site with its secrets read (key files, config
    secrets) and machine ids computed over the whole fleet (``whole``: the full inventory when
    ``inventory`` is one site of it, as in a site stack), so that a host key pinned twice (a
    cloned image) anywhere falls back to name-based ids, names never collide, and a site is
    named alike in a whole-fleet stack and in its own."""
    inv = inventory.inventory
    base = inventory.base
    every = (whole or inventory).inventory
    machines = machine_ids([(h.name, host_key(h, base)) for s in every.sites for h in s.hosts])
    for host in (h.name for site in inv.sites for h in site.hosts):
        if machines[host].endswith(f"-{host}"):
            pulumi.log.warn(
                f"host {host!r}: its pinned SSH host key is pinned by another host too (a cloned "
                "image?); its resources are named by host name, so renaming it reinstalls it "
                "(fix: give every machine its own host key: ssh-keygen -A)"
            )
    sites = []
    for site in inv.sites:
        settings = SiteSettings(
            environment=inv.environment,
            inventory_dir=base,
            fleet_secret=fleet_secret,
            private_keys={
                h.name: read_secret(h.ssh.private_key, base, config) for h in site.hosts if h.ssh.private_key
            },
            pull_secret=(
                read_secret(site.distribution.pull_secret, base, config) if site.distribution.pull_secret else None
            ),
            dial_timeout_s=dial_timeout_s,
            ready_timeout_s=ready_timeout_s,
            command_timeout_s=command_timeout_s,
            # A passphrase file ends with a newline that is not part of the passphrase.
            private_key_passphrases={
                h.name: read_secret(h.ssh.private_key_passphrase, base, config).apply(lambda s: s.rstrip("\r\n"))
                for h in site.hosts
                if h.ssh.private_key_passphrase
            },
            machines=machines,
            claims_as=config.get("claimsAs") or None,  # checked by build_fleet
        )
        sites.append(site_args(site, settings))
    return FleetArgs(fleet=inv.fleet, environment=inv.environment, sites=tuple(sites))


def _config_error(key: str, message: str, fix: str) -> pulumi.RunError:
    return pulumi.RunError(f"config edgefleet:{key} {message} (fix: {fix})")


def workload_settings(config: pulumi.Config, project_dir: Path, *, need_image: bool) -> WorkloadSettings:
    """The stack config of the workloads (see ``Pulumi.yaml``), checked."""
    image = config.get("inferenceImage") or ""
    if need_image and not image:
        raise _config_error(
            "inferenceImage",
            "is not set",
            "pulumi config set inferenceImage registry.edgefleet.local/edgefleet/inference@sha256:<digest>",
        )
    if image and not IMAGE.match(image):
        raise _config_error(
            "inferenceImage",
            f"{image!r} is not pinned by digest",
            "write registry/repository@sha256:<64 hex> "
            "(e.g. from `crane digest` or `docker buildx imagetools inspect`)",
        )
    # The project's config schema gives these defaults ("" and 0): both mean "not set".
    cidr, port = config.get("modelRegistryCidr"), config.get_int("modelRegistryPort") or None
    endpoint = config.get("modelRegistryEndpoint")
    key_id, secret_key = (
        config.get_secret("modelRegistryAccessKeyId"),
        config.get_secret("modelRegistrySecretAccessKey"),
    )
    registry = None
    if cidr:
        try:
            egress = RegistryEgress(cidr, port if port is not None else 443)
        except NetworkPolicyError as exc:
            raise pulumi.RunError(f"config edgefleet:modelRegistryCidr/modelRegistryPort: {exc}") from None
        if (key_id is None) != (secret_key is None):
            raise _config_error(
                "modelRegistryAccessKeyId",
                "and modelRegistrySecretAccessKey must be set together",
                "set both with `pulumi config set --secret`, or neither for a registry that needs no keys",
            )
        registry = ModelRegistry(egress, endpoint or None, key_id, secret_key)
    elif port is not None or endpoint:
        raise _config_error(
            "modelRegistryCidr",
            "is not set but the registry's port or endpoint is",
            "set modelRegistryCidr to the registry's address block (e.g. 10.0.5.20/32) so pods may reach it",
        )
    catalog = project_dir / (config.get("modelCatalog") or "models/catalog.yaml")
    validate = config.get_bool("validateModels")
    return WorkloadSettings(image, catalog, True if validate is None else validate, registry)


def fetch_artifacts(inventory: LoadedInventory) -> None:
    """Download and verify every https artifact before an update registers anything (a
    preview uploads nothing, so it needs none)."""
    if pulumi.runtime.is_dry_run():
        return
    for site in inventory.inventory.sites:
        download_artifacts(site, inventory.base)


def deploy_workloads(edge_site: EdgeSite, workloads: list[InferenceArgs]) -> list[InferenceService]:
    """One InferenceService per workload, on the site's provider, named after the site."""
    return [
        InferenceService(
            f"{edge_site.resource_name}-{a.model}",
            a,
            pulumi.ResourceOptions(parent=edge_site, provider=edge_site.provider),
        )
        for a in workloads
    ]


def monitoring_settings(config: pulumi.Config, inventory: LoadedInventory) -> str | None:
    """The agent image when the inventory names a monitoring core (stack config
    ``monitoringImage``, pinned by digest); None without monitoring."""
    if inventory.inventory.monitoring is None:
        return None
    image = config.get("monitoringImage") or ""
    if not IMAGE.match(image):
        raise _config_error(
            "monitoringImage",
            f"{image!r} is not an image pinned by digest" if image else "is not set",
            "pulumi config set monitoringImage registry.edgefleet.local/edgefleet/prometheus@sha256:<digest> "
            "(scripts/build-images prints it; the inventory's monitoring section needs an agent image)",
        )
    return image


def agent_args(site: Site, inventory: LoadedInventory, image: str, workloads: list[InferenceArgs]) -> AgentArgs:
    """The site's Prometheus agent: it scrapes its inference servers' namespaces and the
    kubelets of the site's nodes, and writes to the inventory's core."""
    monitoring = inventory.inventory.monitoring
    assert monitoring is not None and site.monitoring_namespace is not None  # checked by the inventory
    core = monitoring.core
    try:
        return AgentArgs(
            site=site.name,
            wave=site.wave,
            hardware_class=site.hardware_class,
            latency_class=site.latency_class,
            image=image,
            core=CoreEndpoint(core.address, core.port, core.scheme),
            nodes={h.name: h.address for h in site.hosts if h.role == "agent" or not site.distribution.disable_agent},
            scrape_namespaces=sorted({w.ns for w in workloads}),
            namespace=site.monitoring_namespace,
        )
    except AgentError as exc:
        raise pulumi.RunError(f"{inventory.path.name}: site {site.name!r}: {exc}") from None


def deploy_monitoring(edge_site: EdgeSite, args: AgentArgs, services: list[InferenceService]) -> SiteMonitoring:
    """The site's agent on its provider, once its inference servers exist."""
    return SiteMonitoring(
        f"{edge_site.resource_name}-monitoring",
        args,
        edge_site.provider,
        pulumi.ResourceOptions(parent=edge_site, depends_on=list(services)),
    )


def build_fleet(config: pulumi.Config, stack: str) -> dict[str, object]:
    """Everything the stack manages; returns the stack outputs."""
    inventory_path = config.get("inventory")
    if not inventory_path:
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:inventory is not set "
            "(fix: pulumi config set inventory sites/<file>.yaml)"
        )
    try:
        inventory = load_inventory(PROJECT_DIR / inventory_path)
    except InventoryError as exc:
        raise pulumi.RunError("invalid inventory:\n" + str(exc)) from None
    check_passphrase(stack, inventory.inventory.environment)
    site = config.get("site") or ""
    if not site and config.get_bool("siteStacks"):
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:siteStacks: the sites of stack {stack!r} are managed as site "
            f"stacks ({stack}.<site>) (fix: run `python -m fleet up --stack {stack}`; this stack only holds their "
            "shared config)"
        )
    claims_as = config.get("claimsAs") or ""
    if claims_as and not (stack == claims_as or stack.startswith(f"{claims_as}.")):
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:claimsAs: {claims_as!r} is neither this stack nor the "
            f"whole-fleet stack its name starts with (fix: unset it, or set the stack `python -m fleet migrate` "
            f"moved this site from, e.g. {stack.split('.', 1)[0]!r})"
        )
    whole = inventory
    inventory = select_site(inventory, site, stack, inventory_path)

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
            "(fix: openssl rand -hex 32 | pulumi config set --secret fleetSecret, which reads the value "
            "from stdin so that it never appears in the process list)"
        )

    command_timeout_s = config.get_int("commandTimeoutSeconds") or None
    if command_timeout_s is not None and command_timeout_s < 60:
        raise pulumi.RunError(
            f"Pulumi.{stack}.yaml: config edgefleet:commandTimeoutSeconds: {command_timeout_s} is too short for any "
            "install step (fix: give at least 60, or unset it to derive each step's deadline from its own timeouts)"
        )

    # Stack config first (cheap), then downloads, then the models' validation (slow).
    serving = workload_settings(config, PROJECT_DIR, need_image=any(s.workloads for s in inventory.inventory.sites))
    monitoring_image = monitoring_settings(config, inventory)
    fetch_artifacts(inventory)
    if config.get_bool("probeServers"):
        for message in probe_servers(inventory):
            pulumi.log.warn(message)
    workloads = plan_fleet_workloads(inventory, serving)
    agents = {
        site.name: agent_args(site, inventory, monitoring_image, workloads.get(site.name, []))
        for site in inventory.inventory.sites
        if monitoring_image
    }

    fleet = EdgeFleet(
        FLEET,
        fleet_args(
            inventory,
            config,
            fleet_secret,
            dial_timeout_s=config.get_int("sshDialTimeoutSeconds") or 60,
            ready_timeout_s=config.get_int("readyTimeoutSeconds") or 300,
            command_timeout_s=command_timeout_s,
            whole=whole,
        ),
    )
    for name, edge_site in fleet.sites.items():
        services = deploy_workloads(edge_site, workloads.get(name, []))
        if name in agents:
            deploy_monitoring(edge_site, agents[name], services)
    outputs: dict[str, object] = {"fleet": inventory.inventory.fleet, "sites": sorted(fleet.sites)}
    for name, edge_site in fleet.sites.items():
        outputs[f"kubeconfig-{name}"] = edge_site.kubeconfig
    return outputs
