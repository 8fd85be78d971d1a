# shellcheck shell=bash
# require_arch UNAME_M: the host must be the architecture the artifacts were chosen for.
require_arch() {
  local have
  have="$(uname -m)"
  [[ "$have" == "$1" ]] || die "this host is $have but the inventory declares $1 (fix: correct the host's arch in the inventory)"
}
