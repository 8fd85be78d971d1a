# shellcheck shell=bash
log() { printf '[%s] %s\n' "$HOST" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$HOST" "$*" >&2; exit 1; }
