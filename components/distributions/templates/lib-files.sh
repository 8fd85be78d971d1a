# shellcheck shell=bash disable=SC2034 # CHANGED is read by the scripts this library is part of
CHANGED=0
# put_file DEST MODE < CONTENT: replace DEST atomically, only when content or mode differ.
put_file() {
  local dest="$1" mode="$2" tmp
  mkdir -p -- "$(dirname -- "$dest")"
  tmp="$(mktemp "$dest.edgefleet.XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f "$dest" ]] && cmp -s -- "$tmp" "$dest" && [[ "$(stat -c %a -- "$dest")" == "${mode#0}" ]]; then
    rm -f -- "$tmp"
    return 0
  fi
  mv -f -- "$tmp" "$dest"
  CHANGED=1
  log "wrote $dest"
}
# drop_file DEST: remove a file this install no longer manages.
drop_file() {
  if [[ -e "$1" ]]; then
    rm -f -- "$1"
    CHANGED=1
    log "removed $1"
  fi
}
# install_copy SRC DEST MODE SHA256: copy a verified artifact into place atomically.
install_copy() {
  local src="$1" dest="$2" mode="$3" sha="$4" tmp
  if [[ -f "$dest" ]] && printf '%s  %s\n' "$sha" "$dest" | sha256sum --check --status -; then
    chmod "$mode" "$dest"
    return 0
  fi
  mkdir -p -- "$(dirname -- "$dest")"
  tmp="$(mktemp "$dest.edgefleet.XXXXXX")"
  cp -- "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f -- "$tmp" "$dest"
  CHANGED=1
  log "installed $dest"
}
