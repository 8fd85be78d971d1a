# shellcheck shell=bash
require_root() { [[ "$(id -u)" -eq 0 ]] || die "must run as root (fix: connect as root or through passwordless sudo)"; }
