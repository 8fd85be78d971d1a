# shellcheck shell=bash disable=SC2043 # the loop runs over the paths filled in
require_root
if command -v microshift-cleanup-data >/dev/null 2>&1; then
  echo 1 | microshift-cleanup-data --all --keep-images >&2 || log "microshift-cleanup-data reported errors"
fi
svc_stop
mapfile -t packages < <(rpm -qa --qf '%{NAME}\n' 'microshift*' 2>/dev/null || true)
if ((${#packages[@]})); then
  if [[ -e /run/ostree-booted ]]; then
    rpm-ostree uninstall "${packages[@]}" >&2
    mkdir -p -- "$(dirname -- @@REBOOT_MARKER@@)"
    printf 'microshift-removed\n' >@@REBOOT_MARKER@@
    log "MicroShift packages removed from the next deployment; reboot $HOST to finish"
  else
    dnf remove -y "${packages[@]}" >&2
    log "MicroShift packages removed"
  fi
fi
@@FIREWALL@@
for path in @@PATHS@@; do
  if [[ -e "$path" ]]; then
    rm -rf -- "$path"
    log "removed $path"
  fi
done
log "MicroShift is removed from $HOST"
