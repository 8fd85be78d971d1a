# shellcheck shell=bash
svc_apply() {
  if ! svc_running; then
    svc_start
    log "started @@NAME@@"
  elif ((CHANGED)); then
    svc_restart
    log "restarted @@NAME@@: its binary or configuration changed"
  else
    log "@@NAME@@ is running and unchanged; not restarted"
  fi
}
