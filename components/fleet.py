"""EdgeFleet: every site of one stack."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.site import EdgeSite, EdgeSiteArgs


@dataclass(frozen=True)
class FleetArgs:
    fleet: str
    environment: str
    sites: tuple[EdgeSiteArgs, ...]


class EdgeFleet(pulumi.ComponentResource):
    """All sites of a stack; each site's kubeconfig is a secret output."""

    sites: dict[str, EdgeSite]

    def __init__(self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edge:fleet:EdgeFleet", name, {"fleet": args.fleet, "environment": args.environment}, opts)
        self.sites = {}
        for site in args.sites:
            # Sites were named by the site alone before; the alias keeps them (and, through the
            # engine's parent-name prefix rule, every child named after them).
            self.sites[site.site] = EdgeSite(
                f"{name}-{site.site}",
                site,
                pulumi.ResourceOptions(parent=self, aliases=[pulumi.Alias(name=site.site)]),
            )
        self.kubeconfigs = {n: s.kubeconfig for n, s in self.sites.items()}
        self.register_outputs({"sites": list(self.sites)})
