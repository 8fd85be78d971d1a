"""Fleet operations over site stacks: plan, preview, up, refresh, drift, status, destroy.

Every site of the inventory is its own stack ``<base>.<site>`` of the same project and program
(config ``edgefleet:site`` selects it), on the same backend as the whole-fleet stack ``<base>``
whose config the site stacks share. ``up`` rolls a change out as the inventory's ``rollout:``
section says: waves in order, bounded concurrency, failure budgets, a reachability preflight
and a health gate per site. The orchestrator keeps no state of its own: what was applied is
read back from each stack's update history (every update names the revision it applied), and
a per-site lock on the backend keeps two fleet commands off the same stacks.

    python -m fleet plan   --stack prod                       # waves, budgets, revisions
    python -m fleet up     --stack prod --wave 0              # the canary wave only
    python -m fleet up     --stack prod                       # the whole rollout (resumes)
    python -m fleet status --stack prod --format markdown     # for a CI summary
    python -m fleet drift  --stack prod --select hardware_class=gateway
"""

# Exit statuses CI can act on.
EXIT = {
    "ok": 0,  # every selected site succeeded (or was skipped: paused, maintenance)
    "stopped": 1,  # a failure budget was exceeded: the rollout stopped, later waves untouched
    "usage": 2,  # bad arguments, inventory or config: nothing ran
    "tolerated": 3,  # finished within budget, but some sites failed or were offline
    "locked": 4,  # another fleet command holds some of the selected site stacks
    "drift": 5,  # drift: some stacks drifted; status --check: some sites not available
    "interrupted": 130,  # interrupted: rerun the same command to resume
}
EXIT["unhealthy"] = EXIT["drift"]
