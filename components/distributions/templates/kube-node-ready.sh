# shellcheck shell=bash
# shellcheck disable=SC2329 # called through wait_for
node_ready() {
  [[ "$("${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}
wait_for @@TIMEOUT@@ "node $NODE" node_ready || die "node $NODE did not become Ready within @@TIMEOUT@@s (fix: check the node's service and its kubelet log)"
if [[ "$("${KUBECTL[@]}" get node "$NODE" -o jsonpath='{.metadata.annotations.edgefleet\.io/cordoned-by}')" == edgefleet ]]; then
  "${KUBECTL[@]}" uncordon "$NODE" >/dev/null
  "${KUBECTL[@]}" annotate node "$NODE" edgefleet.io/cordoned-by- >/dev/null
  log "node $NODE is Ready and uncordoned"
else
  log "node $NODE is Ready"
fi
