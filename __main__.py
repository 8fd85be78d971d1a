"""edgefleet: read the stack's config, load its inventory, build the fleet, export outputs."""

import pulumi

from components.program import build_fleet

outputs = build_fleet(pulumi.Config(), pulumi.get_stack())
for key, value in outputs.items():
    pulumi.export(key, value)
