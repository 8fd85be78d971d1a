"""Entry point of the CrossGuard policy pack (``pulumi preview --policy-pack policies``).

Only builds the pack from the rule registry; the rules live in ``policies/rules/``.
"""

import sys
from pathlib import Path

# The analyzer runs this file by path with the pack directory on sys.path. The repository root
# is the import root of ``policies`` and of ``components.contract``, the one module outside the
# pack that it imports (it needs nothing but the standard library).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack

from policies.pack import PACK_NAME, build_policies, keep_secrets_visible

keep_secrets_visible()
PolicyPack(
    name=PACK_NAME,
    policies=build_policies(),
    enforcement_level=EnforcementLevel.ADVISORY,
    description=(
        "Edge fleet security baseline: Pod Security Standards, workload hygiene, network isolation, edge install "
        "baseline, secret outputs."
    ),
)
