# shellcheck shell=bash
if ! id -u @@USER@@ >/dev/null 2>&1; then
  if command -v useradd >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir @@DATA_DIR@@ --shell /sbin/nologin @@USER@@
  else
    adduser -S -D -H -h @@DATA_DIR@@ -s /sbin/nologin @@USER@@
  fi
  log "created the @@USER@@ user"
fi
install -d -m 0700 -o @@USER@@ -- @@AUDIT_DIR@@
