"""Heal what a host lost: read every host back, then update.

A host that was wiped, reimaged or had its distribution removed behind the stack's back still
looks installed in the state, so a plain ``up`` changes nothing, and a plain refresh fails on
every Kubernetes object of a site whose API went away with its install. Healing takes three
steps on one stack:

1. refresh the remote resources alone: each reads its host back (components/remote.py), and
   what a host no longer has leaves the state;
2. for each site that lost an install, refresh its Kubernetes objects with
   ``PULUMI_K8S_DELETE_UNREACHABLE=true``: when the site's API is unreachable *because* its
   install is gone, the objects leave the state too (a reachable API keeps them as they are,
   and a site that only dropped off the network never gets here: its hosts fail step 1);
3. ``up``: the install runs again, the node and kubeconfig are read again, and the objects
   are created again on the new cluster.

``scripts/stack STACK heal`` runs it on one stack; the fleet command's ``up --refresh`` runs it
per site stack.

An update that was killed half way (``clear_interrupted``) leaves pending operations, and may
have stopped a site's server between an install's stop and start: its API refuses the refresh
that clears them. Then the hosts alone are read back (pending creates cleared); the update that
follows runs the interrupted install again, which starts the server. ``scripts/recover`` and
the fleet command's recovery of a dead run both use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pulumi import automation as auto

DYNAMIC = "pulumi-python:dynamic:Resource"
SITE = "edge:site:EdgeSite"
DELETE_UNREACHABLE = "PULUMI_K8S_DELETE_UNREACHABLE"
UNREACHABLE_CLUSTER = "unreachable cluster"


@dataclass
class Healing:
    """What the read-back found: remote resources the hosts no longer have, the sites that lost
    an install, and how many of their Kubernetes objects left the state with it."""

    gone: list[str] = field(default_factory=list)
    sites: list[str] = field(default_factory=list)
    objects_dropped: int = 0


def resources(stack: auto.Stack) -> list[dict[str, Any]]:
    return list((stack.export_stack().deployment or {}).get("resources") or [])


def site_of(urn: str, parents: Mapping[str, str | None]) -> str | None:
    """The EdgeSite a resource belongs to (its nearest ancestor of that type), if any."""
    seen = set()
    current: str | None = urn
    while current and current not in seen:
        seen.add(current)
        if current.split("::")[-2].endswith(SITE):
            return current
        current = parents.get(current)
    return None


def lost_sites(before: list[dict[str, Any]], after_urns: set[str]) -> tuple[list[str], list[str]]:
    """(remote resources gone, the sites whose install is among them)."""
    parents = {r["urn"]: r.get("parent") for r in before}
    gone = [r["urn"] for r in before if r["type"] == DYNAMIC and r["urn"] not in after_urns]
    sites = {site_of(u, parents) for u in gone if u.endswith("-install")}
    return gone, sorted(s for s in sites if s)


def site_objects(resources: list[dict[str, Any]], sites: list[str]) -> list[str]:
    """The Kubernetes objects deployed through the sites' own providers."""
    parents = {r["urn"]: r.get("parent") for r in resources}
    out = []
    for r in resources:
        provider = (r.get("provider") or "").rsplit("::", 1)[0]
        if r.get("custom") and not r["type"].startswith("pulumi:providers:") and parents.get(provider) in sites:
            out.append(r["urn"])
    return out


@contextmanager
def _env(stack: auto.Stack, name: str, value: str) -> Iterator[None]:
    ws = stack.workspace
    saved = dict(ws.env_vars or {})
    ws.env_vars = {**saved, name: value}
    try:
        yield
    finally:
        ws.env_vars = saved


def read_back(stack: auto.Stack, log: Callable[[str], Any]) -> Healing:
    """Steps 1 and 2: the state then holds only what the hosts and sites really have."""
    before = resources(stack)
    remote = [r["urn"] for r in before if r["type"] == DYNAMIC]
    if not remote:
        return Healing()
    stack.refresh(target=remote, on_output=log, color="never", message="heal: read the hosts back", show_secrets=False)
    after = resources(stack)
    gone, sites = lost_sites(before, {r["urn"] for r in after})
    healing = Healing(gone=gone, sites=sites)
    if sites:
        objects = site_objects(after, sites)
        if objects:
            with _env(stack, DELETE_UNREACHABLE, "true"):
                stack.refresh(
                    target=objects,
                    on_output=log,
                    color="never",
                    message="heal: objects of sites that lost an install",
                    show_secrets=False,
                )
            healing.objects_dropped = len(set(objects) - {r["urn"] for r in resources(stack)})
    return healing


def pending(stack: auto.Stack) -> int:
    deployment = stack.export_stack().deployment or {}
    return len(deployment.get("pending_operations") or [])


def clear_interrupted(stack: auto.Stack, log: Callable[[str], Any]) -> str:
    """Clear the pending operations of an interrupted update; returns how ("" if none)."""
    if not pending(stack):
        return ""
    try:
        stack.refresh(clear_pending_creates=True, on_output=log, color="never", message="recover an interrupted update")
        return "refreshed"
    except auto.CommandError as exc:
        remote = [r["urn"] for r in resources(stack) if r["type"] == DYNAMIC]
        if UNREACHABLE_CLUSTER not in str(exc) or not remote:
            raise
    log(
        "a site's Kubernetes API is down (the interrupted update may have stopped its server): "
        "reading the hosts back alone; the update that follows runs the install again\n"
    )
    stack.refresh(
        target=remote,
        clear_pending_creates=True,
        on_output=log,
        color="never",
        message="recover an interrupted update (hosts only: a site's API is down)",
    )
    return "hosts-only"


def _print(line: str) -> None:
    print(line, end="" if line.endswith("\n") else "\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fleet.heal", description=__doc__.split("\n\n")[0])
    p.add_argument("--stack", required=True)
    p.add_argument("--repo", default=".")
    p.add_argument("--policy-pack", action="append", default=[])
    p.add_argument("--policy-pack-config", action="append", default=[])
    p.add_argument("--yes", action="store_true", help="accepted for symmetry with pulumi up (never prompts)")
    p.add_argument(
        "--clear-pending",
        action="store_true",
        help="only clear the pending operations of an interrupted update (scripts/recover), no update",
    )
    args = p.parse_args(argv)
    opts = auto.LocalWorkspaceOptions(work_dir=args.repo, pulumi_command=auto.PulumiCommand(skip_version_check=True))
    try:
        stack = auto.create_or_select_stack(args.stack, work_dir=args.repo, opts=opts)
        if args.clear_pending:
            how = clear_interrupted(stack, _print)
            print(f"heal: pending operations: {how or 'none'}", flush=True)
            return 0
        healing = read_back(stack, _print)
        for urn in healing.gone:
            print(f"heal: gone from its host: {urn.split('::')[-1]}", flush=True)
        for site in healing.sites:
            print(
                f"heal: site {site.split('::')[-1]} lost an install; "
                f"{healing.objects_dropped} Kubernetes object(s) of such sites left the state to be created again",
                flush=True,
            )
        stack.up(
            on_output=_print,
            color="never",
            policy_packs=args.policy_pack or None,
            policy_pack_configs=args.policy_pack_config or None,
            message="heal",
            show_secrets=False,
        )
    except auto.CommandError as exc:
        print(f"heal: stack {args.stack}: {str(exc).strip()[-4000:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
