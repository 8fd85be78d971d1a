#!/usr/bin/env bash
# greenboot required check (edgefleet): MicroShift's API and core pods are ready on @@HOST@@.
set -euo pipefail
KUBECONFIG_FILE=@@KUBECONFIG@@
TIMEOUT=@@TIMEOUT@@
NAMESPACES=(@@NAMESPACES@@)

if [[ "$(systemctl is-enabled microshift.service 2>/dev/null || true)" != enabled ]]; then
  echo "MicroShift is not enabled; nothing to check"
  exit 0
fi
client="$(command -v oc || command -v kubectl || true)"
[[ -n "$client" ]] || { echo "neither oc nor kubectl is installed (fix: install openshift-clients)" >&2; exit 1; }
kube() { "$client" --kubeconfig="$KUBECONFIG_FILE" "$@"; }
deadline=$((SECONDS + TIMEOUT))
remaining() { local left=$((deadline - SECONDS)); ((left > 0)) && echo "$left" || echo 1; }

until systemctl is-active --quiet microshift.service && kube get --raw /readyz >/dev/null 2>&1; do
  if [[ "$(systemctl is-failed microshift.service 2>/dev/null || true)" == failed ]]; then
    echo "microshift.service failed" >&2
    exit 1
  fi
  ((SECONDS < deadline)) || { echo "MicroShift API not ready after ${TIMEOUT}s" >&2; exit 1; }
  sleep 5
done
for ns in "${NAMESPACES[@]}"; do
  until [[ -n "$(kube get pods -n "$ns" -o name 2>/dev/null)" ]]; do
    ((SECONDS < deadline)) || { echo "no pods in $ns after ${TIMEOUT}s" >&2; exit 1; }
    sleep 5
  done
  if ! kube wait --for=condition=Ready pod --all --field-selector=status.phase!=Succeeded -n "$ns" --timeout="$(remaining)s" >/dev/null; then
    echo "pods in $ns not Ready within ${TIMEOUT}s" >&2
    exit 1
  fi
done
echo "MicroShift is healthy"
