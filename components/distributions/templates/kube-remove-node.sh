# shellcheck shell=bash
if ! node_exists; then
  log "node $NODE is not registered; nothing to remove"
else
  "${KUBECTL[@]}" cordon "$NODE" >/dev/null
  # A node whose kubelet is gone cannot stop its pods: evict them without waiting.
  no_wait=()
  if [[ "$("${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" != True ]]; then
    log "node $NODE is not ready: its pods are evicted without waiting for them to stop"
    no_wait=(--skip-wait-for-delete-timeout=1)
  fi
  if ! "${KUBECTL[@]}" drain "$NODE" --ignore-daemonsets --delete-emptydir-data --timeout=@@TIMEOUT@@s "${no_wait[@]}" >&2; then
    die "node $NODE did not drain within @@TIMEOUT@@s (fix: check PodDisruptionBudgets on $NODE, then retry)"
  fi
  "${KUBECTL[@]}" delete node "$NODE" --ignore-not-found --wait=true --timeout=@@TIMEOUT@@s >/dev/null
  log "node $NODE drained and deleted"
fi
