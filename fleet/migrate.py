"""Moving a whole-fleet stack's sites into site stacks, by state alone.

``pulumi state move`` cannot do this without renaming the resources: a site's component has
the fleet component as parent, which every site stack needs too (moved with
``--include-parents`` it leaves the source for the first site stack only; without it the
resources' URNs change and the next ``up`` replaces them). So the move is done on the stacks'
exports: each site stack receives its site's resources with the fleet component, the stack's
root and the providers they use, their URNs rewritten from ``<base>`` to ``<base>.<site>``;
then the base stack keeps everything else. No program runs and no host is contacted: the next
``up`` of a site stack finds every resource where it expects it.

The split itself (:func:`split`) is a pure function of the export.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from fleet.errors import FleetError

SITE_TYPES = ("edge:site:EdgeSite", "sim:fleet:Site")


def _rename(value: Any, old: str, new: str) -> Any:
    """Every URN inside ``value`` moved from one stack (and root resource name) to another."""
    text = json.dumps(value)
    return json.loads(text.replace(old, new))


def _provider_urn(ref: str) -> str:
    return ref.rsplit("::", 1)[0] if ref else ""


def split(deployment: Mapping[str, Any], project: str, base: str, site: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(site stack deployment, remaining base deployment) for ``site``."""
    resources: list[dict[str, Any]] = deployment.get("resources") or []
    if deployment.get("pending_operations"):
        raise FleetError(f"stack {base} has pending operations (fix: scripts/recover {base}, then migrate)")
    by_urn = {r["urn"]: r for r in resources}
    # The site's component: named under the fleet (``fleet-<site>``), or by the site alone in
    # stacks written before that.
    names = (f"::fleet-{site}", f"::{site}")
    roots = [r for r in resources if r["type"] in SITE_TYPES and r["urn"].endswith(names)]
    if not roots:
        raise FleetError(
            f"stack {base} has no resources of site {site!r} (fix: check the name, or the site was "
            "never deployed by this stack)"
        )
    root = roots[0]["urn"]

    def in_site(urn: str) -> bool:
        seen = set()
        while urn and urn not in seen:
            if urn == root:
                return True
            seen.add(urn)
            urn = (by_urn.get(urn) or {}).get("parent", "")
        return False

    moved = [r for r in resources if in_site(r["urn"])]
    moved_urns = {r["urn"] for r in moved}
    needed: set[str] = set()
    for r in moved:
        needed.add(_provider_urn(r.get("provider", "")))
        parent = by_urn.get(r.get("parent", ""))
        while parent is not None and parent["urn"] not in moved_urns:
            needed.add(parent["urn"])
            parent = by_urn.get(parent.get("parent", ""))
    for urn in list(needed):  # providers have parents and providers too (the stack root)
        node = by_urn.get(urn)
        if node is not None and node.get("parent"):
            needed.add(node["parent"])
    remaining_users = {_provider_urn(r.get("provider", "")) for r in resources if r["urn"] not in moved_urns}
    site_stack = f"{base}.{site}"
    kept = [copy.deepcopy(r) for r in resources if r["urn"] in needed or r["urn"] in moved_urns]
    kept = _rename(
        kept,
        f"::{project}::pulumi:pulumi:Stack::{project}-{base}",
        f"::{project}::pulumi:pulumi:Stack::{project}-{site_stack}",
    )
    kept = _rename(kept, f"urn:pulumi:{base}::", f"urn:pulumi:{site_stack}::")
    for r in kept:
        if r["type"] == "pulumi:pulumi:Stack":
            r.pop("outputs", None)  # the site stack's own outputs come with its next update
    dest = {k: v for k, v in deployment.items() if k != "resources"}
    dest["resources"] = kept
    source = {k: v for k, v in deployment.items() if k != "resources"}
    source["resources"] = [
        r
        for r in resources
        if r["urn"] not in moved_urns
        and not (r["type"].startswith("pulumi:providers:") and r["urn"] in needed and r["urn"] not in remaining_users)
    ]
    return dest, source


def migrate(repo, base: str, sites: list[str], env: dict[str, str], log=print) -> None:
    """Move each site of the base stack into its (new, empty) site stack."""
    from pulumi import automation as auto

    from fleet.stacks import project_name, write_site_configs

    project = project_name(repo)
    write_site_configs(repo, base, sites)
    opts = auto.LocalWorkspaceOptions(
        work_dir=str(repo), env_vars=env, pulumi_command=auto.PulumiCommand(skip_version_check=True)
    )
    source = auto.select_stack(base, work_dir=str(repo), opts=opts)
    # From now on the base stack is the site stacks' shared config only: its program refuses
    # to manage the whole fleet again (which would install every site a second time).
    source.set_config(f"{project}:siteStacks", auto.ConfigValue("true"))
    # The hosts keep the claims they carry (``<base>/<machine>``): the site stacks render the
    # same scripts, so their first update changes nothing and no host is contacted.
    source.set_config(f"{project}:claimsAs", auto.ConfigValue(base))
    for site in sites:
        exported = source.export_stack()
        deployment = exported.deployment or {}
        dest_dep, source_dep = split(deployment, project, base, site)
        dest = auto.create_or_select_stack(f"{base}.{site}", work_dir=str(repo), opts=opts)
        current = dest.export_stack().deployment or {}
        if any(r["type"] != "pulumi:pulumi:Stack" for r in current.get("resources") or []):
            raise FleetError(f"stack {base}.{site} already manages resources (fix: migrate only into new site stacks)")
        dest.import_stack(auto.Deployment(version=exported.version, deployment=dest_dep))
        source.import_stack(auto.Deployment(version=exported.version, deployment=source_dep))
        moved = len(deployment.get("resources") or []) - len(source_dep["resources"])
        log(f"migrate: {site}: moved {moved} resource(s) from {base} to {base}.{site}")
