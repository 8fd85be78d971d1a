# shellcheck shell=bash
if command -v firewall-cmd >/dev/null 2>&1 && firewall-cmd --state >/dev/null 2>&1; then
  FW_CHANGED=0
  fw_add() {
    if ! firewall-cmd --permanent --zone="$2" "--query-$1=$3" >/dev/null 2>&1; then
      firewall-cmd --permanent --zone="$2" "--add-$1=$3" >/dev/null
      FW_CHANGED=1
      log "firewall: $2 zone allows $1 $3"
    fi
  }
  fw_remove() {
    if firewall-cmd --permanent --zone="$2" "--query-$1=$3" >/dev/null 2>&1; then
      firewall-cmd --permanent --zone="$2" "--remove-$1=$3" >/dev/null
      FW_CHANGED=1
      log "firewall: $2 zone no longer allows $1 $3"
    fi
  }
@@RULES@@
  if ((FW_CHANGED)); then firewall-cmd --reload >/dev/null; fi
else
  log "firewalld is not running; no firewall rules changed"
fi
