# shellcheck shell=bash
# Prints one verdict as the last line and exits 0 either way: a missing install is drift, not a
# failure of the check.
absent() {
  printf '%s%s\n' @@ABSENT@@ "$*"
  exit 0
}
[[ -x @@BIN@@ ]] || absent "@@BIN@@ is not installed on $HOST"
[[ "$(sha256sum @@BIN@@ | cut -d' ' -f1)" == @@BIN_SHA256@@ ]] ||
  absent "@@BIN@@ on $HOST is not the release the inventory pins"
[[ "$(cat @@APPLIED_FILE@@ 2>/dev/null || true)" == @@APPLIED@@ ]] ||
  absent "the configuration on $HOST is missing or not the one rendered"
svc_running || absent "the service on $HOST is not running"
printf '%s\n' @@PRESENT@@
