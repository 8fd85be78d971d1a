# shellcheck shell=bash
svc_running() { [[ -x @@SUPERVISOR@@ ]] && @@SUPERVISOR@@ status >/dev/null 2>&1; }
svc_start() { @@SUPERVISOR@@ start; }
svc_restart() { @@SUPERVISOR@@ restart; }
svc_stop() { if [[ -x @@SUPERVISOR@@ ]]; then @@SUPERVISOR@@ stop; fi; }
svc_remove() { rm -f -- @@SUPERVISOR@@ @@PID_FILE@@; }
svc_hint() { printf '%s on %s' @@LOG_FILE@@ "$HOST"; }
svc_logs() { tail -n 30 -- @@LOG_FILE@@ >&2 2>/dev/null || true; }
