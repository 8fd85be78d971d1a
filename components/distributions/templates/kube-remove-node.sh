# shellcheck shell=bash
# K3s's own node controller puts wrangler.cattle.io/node on every node (it keeps CoreDNS's
# NodeHosts) and now and then fails to take it off again (k3s-io/k3s#2669): a deleted node then
# hangs in Terminating. That finalizer, and only that one, is released after a grace period;
# any other (the embedded etcd's member removal on a server) is left to its controller.
RELEASABLE_FINALIZER=wrangler.cattle.io/node
node_uid() { "${KUBECTL[@]}" get node "$NODE" --ignore-not-found -o jsonpath='{.metadata.uid}'; }
# shellcheck disable=SC2329 # called through wait_for
node_gone() { [[ "$(node_uid)" != "$UID0" ]]; }
finalizers() { "${KUBECTL[@]}" get node "$NODE" --ignore-not-found -o jsonpath='{range .metadata.finalizers[*]}{@}{" "}{end}'; }

if ! node_exists; then
  log "node $NODE is not registered; nothing to remove"
else
  UID0="$(node_uid)"
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
  "${KUBECTL[@]}" delete node "$NODE" --ignore-not-found --wait=false >/dev/null
  if ! wait_for @@GRACE@@ "removal of node $NODE" node_gone; then
    held="$(finalizers)"
    if [[ "${held% }" == "$RELEASABLE_FINALIZER" ]]; then
      log "node $NODE is held only by $RELEASABLE_FINALIZER after @@GRACE@@s; releasing it"
      "${KUBECTL[@]}" patch node "$NODE" --type=json \
        -p "[{\"op\":\"test\",\"path\":\"/metadata/uid\",\"value\":\"$UID0\"},{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}]" >/dev/null ||
        node_gone || die "node $NODE: releasing $RELEASABLE_FINALIZER failed (fix: retry; the node is already deleted)"
    fi
    wait_for @@GRACE@@ "removal of node $NODE" node_gone ||
      die "node $NODE is still terminating, held by finalizers: $(finalizers)(fix: check the controller that owns each one, then retry)"
  fi
  log "node $NODE drained and deleted"
fi
