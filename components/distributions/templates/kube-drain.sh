# shellcheck shell=bash
if ! node_exists; then
  log "node $NODE is not registered; nothing to drain"
else
  if [[ "$("${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.spec.unschedulable}')" != true ]]; then
    "${KUBECTL[@]}" annotate node "$NODE" --overwrite edgefleet.io/cordoned-by=edgefleet >/dev/null
    "${KUBECTL[@]}" cordon "$NODE" >/dev/null
  fi
  log "draining $NODE (at most @@TIMEOUT@@s)"
  if ! "${KUBECTL[@]}" drain "$NODE" --ignore-daemonsets --delete-emptydir-data --timeout=@@TIMEOUT@@s >&2; then
    die "node $NODE did not drain within @@TIMEOUT@@s (fix: check PodDisruptionBudgets and pods without a controller on $NODE; the node stays cordoned)"
  fi
  log "node $NODE drained"
fi
