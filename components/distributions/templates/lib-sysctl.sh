# shellcheck shell=bash
# ensure_sysctl KEY VALUE: set a kernel parameter the kubelet insists on.
ensure_sysctl() {
  local cur
  cur="$(sysctl -n "$1" 2>/dev/null || true)"
  [[ "$cur" == "$2" ]] && return 0
  sysctl -q -w "$1=$2" >/dev/null 2>&1 ||
    die "cannot set kernel parameter $1=$2 (currently '$cur'; fix: set it on the host, e.g. in /etc/sysctl.d)"
  log "set $1=$2"
}
