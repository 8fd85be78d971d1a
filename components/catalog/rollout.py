"""Which version of a model each site runs: its pin, or the canary where the canary selects it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from components.catalog.schema import (
    Canary,
)

# --- rollout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRef:
    """A site as the rollout sees it: its name and rollout wave (0 is the canary wave)."""

    name: str
    wave: int = 1


def canary_bucket(site: str) -> int:
    """A site's stable position in [0, 10000): the first 8 bytes of sha256(site name, UTF-8)
    as a big-endian integer, modulo 10000. A canary of ``percent`` P takes the sites whose
    bucket is below P * 100, so the same sites stay in it across runs and raising P only adds
    sites."""
    return int.from_bytes(hashlib.sha256(site.encode()).digest()[:8], "big") % 10_000


def in_canary(site: SiteRef, canary: Canary) -> bool:
    if canary.waves is not None:
        return site.wave in canary.waves
    assert canary.percent is not None
    return canary_bucket(site.name) < round(canary.percent * 100)


def select_versions(
    model: str, sites: Iterable[SiteRef], pins: Mapping[str, Mapping[str, str]], canary: Canary | None
) -> dict[str, str]:
    """The version of ``model`` each site runs. ``pins`` maps site -> {model: version} (a site's
    workloads); sites that do not pin ``model`` do not run it and are left out. Sites the canary
    selects run the canary version, the others their pin."""
    chosen: dict[str, str] = {}
    for site in sites:
        pinned = pins.get(site.name, {}).get(model)
        if pinned is None:
            continue
        chosen[site.name] = canary.version if canary is not None and in_canary(site, canary) else pinned
    return chosen
