# shellcheck shell=bash disable=SC2043 # the loop runs over the paths filled in
require_root
svc_stop
kill_matching @@PROCESSES@@
unmount_under /run/k3s
# The kubelet's pod and plugin mounts, and /var/lib/kubelet itself when the kubelet made it
# a (shared) mount point of its own.
unmount_under /var/lib/kubelet
unmount_under @@DATA_DIR@@
unmount_under /run/netns/cni-
if command -v ip >/dev/null 2>&1; then
  ip netns show 2>/dev/null | awk '/^cni-/ { print $1 }' | while read -r ns; do ip netns delete "$ns" || true; done
  for link in cni0 flannel.1 flannel-v6.1 kube-ipvs0 flannel-wg flannel-wg-v6; do
    if ip link show "$link" >/dev/null 2>&1; then ip link delete "$link" || true; fi
  done
fi
for tables in iptables ip6tables; do
  if command -v "$tables-save" >/dev/null 2>&1 && command -v "$tables-restore" >/dev/null 2>&1; then
    # grep reads everything: with -q it would stop early, and pipefail would take the save's
    # SIGPIPE for "nothing to clean".
    if "$tables-save" 2>/dev/null | grep -E 'KUBE-|CNI-|flannel' >/dev/null; then
      "$tables-save" | grep -v KUBE- | grep -v CNI- | grep -iv flannel | "$tables-restore" || log "could not clean $tables rules"
    fi
  fi
done
# kube-router's network policy sets (KUBE-SRC-*, KUBE-DST-*), free once no rule refers to them.
if command -v ipset >/dev/null 2>&1; then
  while read -r set; do
    ipset destroy "$set" 2>/dev/null || log "could not destroy ipset $set"
  done < <(ipset list -n 2>/dev/null | grep -E '^(inet6:)?KUBE-' || true)
fi
svc_remove
for path in @@PATHS@@; do
  if [[ -e "$path" || -L "$path" ]]; then
    rm -rf -- "$path"
    log "removed $path"
  fi
done
rmdir @@RMDIRS@@ 2>/dev/null || true
log "K3s is removed from $HOST"
