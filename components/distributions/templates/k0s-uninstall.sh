# shellcheck shell=bash disable=SC2043 # the loop runs over the paths filled in
svc_stop
if [[ -x @@BIN@@ ]]; then
  timeout 300 @@BIN@@ reset --data-dir=@@DATA_DIR@@ >&2 || log "k0s reset reported errors; removing the rest"
fi
kill_matching @@PROCESSES@@
unmount_under /run/k0s
unmount_under @@DATA_DIR@@
unmount_under /run/netns/cni-
svc_remove
for path in @@PATHS@@; do
  if [[ -e "$path" || -L "$path" ]]; then
    rm -rf -- "$path"
    log "removed $path"
  fi
done
log "k0s is removed from $HOST"
