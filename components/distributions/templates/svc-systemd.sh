# shellcheck shell=bash
svc_running() { systemctl is-active --quiet @@NAME@@; }
svc_start() { systemctl daemon-reload; systemctl enable --quiet @@NAME@@; systemctl start --no-block @@NAME@@; }
svc_restart() { systemctl daemon-reload; systemctl enable --quiet @@NAME@@; systemctl restart --no-block @@NAME@@; }
svc_stop() {
  if [[ -f @@UNIT@@ ]]; then timeout @@STOP_TIMEOUT@@ systemctl stop @@NAME@@ || true; fi
}
svc_remove() {
  if [[ -f @@UNIT@@ ]]; then
    systemctl disable --quiet @@NAME@@ || true
    rm -f -- @@UNIT@@
    systemctl daemon-reload
    systemctl reset-failed @@NAME@@ 2>/dev/null || true
  fi
}
svc_hint() { printf 'journalctl -u %s on %s' @@NAME@@ "$HOST"; }
svc_logs() { journalctl -u @@NAME@@ -n 30 --no-pager >&2 2>/dev/null || true; }
