"""The rollout plan: which site stacks a fleet command touches, in which waves, with which
budgets. Pure: inventory (+ catalog) in, plan out; no Pulumi, no network.

A site stack is named ``<base>.<site>`` where ``base`` is the environment's stack (``dev``,
``prod``) whose config file is the template of every site stack's config.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.inventory import LoadedInventory, Rollout, Site
from fleet.errors import FleetError

# Selector keys a `--select key=value` may use besides the site's own labels.
SITE_KEYS = ("name", "wave", "topology", "hardware_class", "latency_class", "distribution", "environment")


@dataclass(frozen=True)
class HostTarget:
    """What preflight dials: the SSH endpoint and the pinned host key."""

    name: str
    address: str
    port: int
    host_key: str


@dataclass(frozen=True)
class SitePlan:
    name: str
    stack: str
    wave: int
    topology: str
    hardware_class: str
    distribution: str
    models: dict[str, str]
    labels: dict[str, str]
    hosts: tuple[HostTarget, ...]
    revision: str  # digest of everything that decides the site's resources
    skip: str | None = None  # "paused" | "maintenance"


@dataclass(frozen=True)
class Wave:
    number: int
    sites: tuple[SitePlan, ...]
    skipped: tuple[SitePlan, ...]
    max_concurrency: int
    max_failures: int | None  # None: only the rollout-wide budget applies
    mandatory: bool


@dataclass(frozen=True)
class Plan:
    fleet: str
    environment: str
    base_stack: str
    rollout: Rollout
    waves: tuple[Wave, ...]
    max_failures_total: int | None  # failure_scope: rollout
    selector: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[SitePlan]:
        return [s for w in self.waves for s in w.sites]

    @property
    def skipped(self) -> list[SitePlan]:
        return [s for w in self.waves for s in w.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "environment": self.environment,
            "base_stack": self.base_stack,
            "selector": self.selector,
            "rollout": self.rollout.model_dump(),
            "max_failures_total": self.max_failures_total,
            "waves": [
                {
                    "wave": w.number,
                    "max_concurrency": w.max_concurrency,
                    "max_failures": w.max_failures,
                    "mandatory": w.mandatory,
                    "sites": [_site_dict(s) for s in w.sites],
                    "skipped": [{"site": s.name, "stack": s.stack, "reason": s.skip} for s in w.skipped],
                }
                for w in self.waves
            ],
        }


def _site_dict(s: SitePlan) -> dict[str, Any]:
    d = asdict(s)
    d.pop("hosts")
    d.pop("skip")
    d["site"] = d.pop("name")
    return d


def scaled(amount: int | str, total: int, *, round_up: bool) -> int:
    """A count or percentage of ``total``: concurrency rounds up (at least 1), failures down."""
    if isinstance(amount, int):
        return amount
    share = int(amount.rstrip("%")) * total / 100
    return max(1, math.ceil(share)) if round_up else math.floor(share)


@dataclass(frozen=True)
class Selector:
    """Sites a command acts on: every condition must hold (names and values accept globs)."""

    sites: tuple[str, ...] = ()
    waves: tuple[int, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, sites: Iterable[str] = (), waves: Iterable[str] = (), select: Iterable[str] = ()) -> Selector:
        names = tuple(n.strip() for item in sites for n in item.split(",") if n.strip())
        try:
            wave_numbers = tuple(int(w) for item in waves for w in item.split(",") if w.strip())
        except ValueError:
            raise FleetError(f"--wave: {list(waves)} is not a list of wave numbers (fix: e.g. --wave 0,1)") from None
        pairs = []
        for item in select:
            for cond in item.split(","):
                key, sep, value = cond.strip().partition("=")
                if not sep or not key:
                    raise FleetError(
                        f"--select: {cond!r} is not key=value (fix: e.g. --select hardware_class=x86-edge)"
                    )
                pairs.append((key.strip(), value.strip()))
        return cls(names, wave_numbers, tuple(pairs))

    def matches(self, site: Site, environment: str) -> bool:
        if self.sites and not any(fnmatch.fnmatchcase(site.name, p) for p in self.sites):
            return False
        if self.waves and site.wave not in self.waves:
            return False
        for key, pattern in self.labels:
            value = site_value(site, key, environment)
            if value is None or not fnmatch.fnmatchcase(value, pattern):
                return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"sites": list(self.sites), "waves": list(self.waves), "select": [f"{k}={v}" for k, v in self.labels]}


def site_value(site: Site, key: str, environment: str) -> str | None:
    if key == "distribution":
        return site.distribution.name
    if key == "environment":
        return environment
    if key in SITE_KEYS:
        return str(getattr(site, key))
    return site.labels.get(key)


def site_stack(base: str, site: str) -> str:
    return f"{base}.{site}"


def _host_targets(site: Site, key_of) -> tuple[HostTarget, ...]:
    return tuple(HostTarget(h.name, h.address, h.ssh.port, key_of(h)) for h in site.hosts)


def build_plan(
    inventory: LoadedInventory,
    base_stack: str,
    *,
    selector: Selector = Selector(),
    models: Mapping[str, Mapping[str, str]] | None = None,
    shared_digest: str = "",
    host_key=None,
) -> Plan:
    """The plan over the sites ``selector`` picks. ``models`` maps site -> {model: version} (the
    catalog's choice, canaries included); ``shared_digest`` covers what every site depends on
    (program, config, catalog); ``host_key(host)`` reads a host's pinned key."""
    inv = inventory.inventory
    rollout = inv.rollout
    models = models or {}
    key_of = host_key or (lambda h: h.ssh.host_key or "")
    chosen = [s for s in inv.sites if selector.matches(s, inv.environment)]
    if not chosen:
        raise FleetError(
            f"{inventory.path.name}: the selector {selector.to_dict()} matches no site "
            "(fix: check the site names, waves and labels with `python -m fleet plan`)"
        )
    by_wave: dict[int, list[SitePlan]] = {}
    for s in chosen:
        site_models = dict(sorted((models.get(s.name) or {}).items()))
        revision = hashlib.sha256(
            json.dumps([s.model_dump(mode="json"), site_models, shared_digest], sort_keys=True).encode()
        ).hexdigest()[:16]
        by_wave.setdefault(s.wave, []).append(
            SitePlan(
                name=s.name,
                stack=site_stack(base_stack, s.name),
                wave=s.wave,
                topology=s.topology,
                hardware_class=s.hardware_class,
                distribution=f"{s.distribution.name} {s.distribution.version}",
                models=site_models,
                labels=dict(s.labels),
                hosts=_host_targets(s, key_of),
                revision=revision,
                skip="paused" if s.paused else "maintenance" if s.maintenance else None,
            )
        )
    total_active = sum(1 for sites in by_wave.values() for s in sites if s.skip is None)
    per_wave = rollout.failure_scope == "wave"
    waves = []
    for number in sorted(by_wave):
        active = tuple(s for s in by_wave[number] if s.skip is None)
        mandatory = number in rollout.mandatory_waves
        budget = scaled(rollout.max_failures, len(active), round_up=False) if per_wave else None
        waves.append(
            Wave(
                number=number,
                sites=active,
                skipped=tuple(s for s in by_wave[number] if s.skip is not None),
                max_concurrency=min(scaled(rollout.max_concurrency, len(active), round_up=True), max(1, len(active))),
                max_failures=0 if mandatory else budget,
                mandatory=mandatory,
            )
        )
    total = None if per_wave else scaled(rollout.max_failures, total_active, round_up=False)
    return Plan(inv.fleet, inv.environment, base_stack, rollout, tuple(waves), total, selector.to_dict())


def catalog_versions(inventory: LoadedInventory, catalog_path: Path) -> dict[str, dict[str, str]]:
    """Each site's model versions as the catalog chooses them (a canary by waves rolls with the
    sites' waves; see components.catalog.select_versions)."""
    from components.catalog import ModelError, SiteRef, load_catalog, select_versions

    sites = inventory.inventory.sites
    if not any(s.workloads for s in sites):
        return {}
    try:
        catalog = load_catalog(catalog_path, check_files=False)
    except ModelError as exc:
        raise FleetError(str(exc)) from None
    refs = [SiteRef(s.name, s.wave) for s in sites]
    pins = {s.name: {w.model: w.version for w in s.workloads} for s in sites}
    out: dict[str, dict[str, str]] = {s.name: {} for s in sites}
    for model in sorted({m for p in pins.values() for m in p}):
        try:
            canary = catalog.model(model).canary
        except ModelError as exc:
            raise FleetError(f"{catalog_path.name}: {exc}") from None
        for site, version in select_versions(model, refs, pins, canary).items():
            out[site][model] = version
    return out
