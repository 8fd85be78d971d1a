# shellcheck shell=bash
MY_MNT_NS="$(readlink /proc/self/ns/mnt)"
# ours PID: the process runs in this host's mount namespace (hosts sharing a kernel, like
# namespaced lab hosts, must never touch each other's processes).
ours() { [[ "$(readlink "/proc/$1/ns/mnt" 2>/dev/null)" == "$MY_MNT_NS" ]]; }
# children PID: direct children, from /proc.
children() {
  local stat rest ppid pid
  for stat in /proc/[0-9]*/stat; do
    read -r rest <"$stat" 2>/dev/null || continue
    rest="${rest##*) }"
    read -r _ ppid _ <<<"$rest"
    [[ "$ppid" == "$1" ]] && { pid="${stat#/proc/}"; printf '%s\n' "${pid%/stat}"; }
  done
  return 0
}
# kill_tree PID: the process and all its descendants.
kill_tree() {
  local child
  for child in $(children "$1"); do kill_tree "$child"; done
  kill -KILL "$1" 2>/dev/null || true
}
# kill_matching REGEX: kill the trees of this host's processes whose command line matches,
# sparing this script's own session (its shell and everything it started).
kill_matching() {
  local dir pid cmd rest sid my_sid
  local -a argv
  read -r rest </proc/$$/stat
  rest="${rest##*) }"
  read -r _ _ _ my_sid _ <<<"$rest"
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    read -r rest <"$dir/stat" 2>/dev/null || continue
    rest="${rest##*) }"
    read -r _ _ _ sid _ <<<"$rest"
    [[ "$sid" == "$my_sid" ]] && continue
    mapfile -d '' -t argv <"$dir/cmdline" 2>/dev/null || continue
    cmd="${argv[*]}"
    if [[ "$cmd" =~ $1 ]] && ours "$pid"; then
      log "killing leftover process $pid (${cmd%% *})"
      kill_tree "$pid"
    fi
  done
}
# unmount_under PREFIX: unmount PREFIX and everything below it, deepest first (a PREFIX
# ending in '-' matches names that start with it, e.g. /run/netns/cni-).
unmount_under() {
  local mp
  while read -r mp; do
    umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || log "could not unmount $mp"
  done < <(awk -v p="$1" '{ d = (p ~ /-$/) ? p : p "/" } $2 == p || index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}
