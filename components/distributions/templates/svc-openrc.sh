# shellcheck shell=bash
svc_running() { rc-service @@NAME@@ status >/dev/null 2>&1; }
svc_start() { rc-update add @@NAME@@ default >/dev/null; rc-service @@NAME@@ start; }
svc_restart() { rc-update add @@NAME@@ default >/dev/null; rc-service @@NAME@@ restart; }
svc_stop() {
  if [[ -x @@UNIT@@ ]]; then timeout @@STOP_TIMEOUT@@ rc-service @@NAME@@ stop || true; fi
}
svc_remove() {
  if [[ -x @@UNIT@@ ]]; then rc-update delete @@NAME@@ default >/dev/null 2>&1 || true; fi
  rm -f -- @@UNIT@@ /etc/logrotate.d/@@NAME@@
}
svc_hint() { printf '%s on %s' @@LOG_FILE@@ "$HOST"; }
svc_logs() { tail -n 30 -- @@LOG_FILE@@ >&2 2>/dev/null || true; }
