# shellcheck shell=bash
# Nodes other than $NODE that are Ready and schedulable: where its pods can go.
other_nodes() {
  "${KUBECTL[@]}" get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"|"}{.spec.unschedulable}{"|"}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
    awk -F'|' -v node="$NODE" '$1 != node && $2 != "true" && $3 == "True"' | wc -l
}
if ! node_exists; then
  log "node $NODE is not registered; nothing to drain"
elif (($(other_nodes) == 0)); then
  # Drained, its pods would only wait unscheduled: they keep running through the restart.
  log "no other node can take the pods of $NODE: it is upgraded in place, without a drain"
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
