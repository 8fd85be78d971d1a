#!/usr/bin/env bash
# Supervises @@NAME@@ on a host without an init system: @@SUPERVISOR@@ start|stop|restart|status
set -euo pipefail
NAME=@@NAME@@
PIDFILE=@@PIDFILE@@
LOGFILE=@@LOGFILE@@
STOP_TIMEOUT=@@STOP_TIMEOUT@@
RESTART_DELAY=@@RESTART_DELAY@@
CMD=(@@CMD@@)
SELF="$(readlink -f -- "${BASH_SOURCE[0]}")"

# running_pid: the supervisor's pid, if it is alive and really this host's supervisor (not a
# reused pid, nor the same supervisor of another host sharing this kernel).
running_pid() {
  local pid
  [[ -s "$PIDFILE" ]] || return 1
  pid="$(<"$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$SELF __run"* ]] || return 1
  [[ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" == "$(readlink /proc/self/ns/mnt)" ]] || return 1
  printf '%s\n' "$pid"
}

# group_alive PGID: a live (non-zombie) process is still in the group.
group_alive() {
  local stat rest state pgrp
  for stat in /proc/[0-9]*/stat; do
    read -r rest <"$stat" 2>/dev/null || continue
    rest="${rest##*) }"
    read -r state _ pgrp _ <<<"$rest"
    [[ "$pgrp" == "$1" && "$state" != Z ]] && return 0
  done
  return 1
}

run() {
  printf '%s\n' "$$" >"$PIDFILE"
  local rc
  while true; do
    rc=0
    "${CMD[@]}" || rc=$?
    printf '%s supervise: %s exited with status %s; restarting in %ss\n' "$(date -Is)" "$NAME" "$rc" "$RESTART_DELAY"
    sleep "$RESTART_DELAY"
  done
}

start() {
  local pid i
  if pid="$(running_pid)"; then
    echo "$NAME: already running (pid $pid)"
    return 0
  fi
  mkdir -p -- "$(dirname -- "$PIDFILE")" "$(dirname -- "$LOGFILE")"
  rm -f -- "$PIDFILE"
  setsid nohup "$SELF" __run >>"$LOGFILE" 2>&1 </dev/null &
  for ((i = 0; i < 100; i++)); do
    if pid="$(running_pid)"; then
      echo "$NAME: started (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  echo "$NAME: did not start within 10s (see $LOGFILE)" >&2
  return 1
}

stop() {
  local pid deadline
  if ! pid="$(running_pid)"; then
    rm -f -- "$PIDFILE"
    echo "$NAME: not running"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while group_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      echo "$NAME: still running after ${STOP_TIMEOUT}s; killing process group $pid" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while group_alive "$pid"; do
        if ((SECONDS >= deadline)); then
          echo "$NAME: process group $pid survived SIGKILL" >&2
          return 1
        fi
        sleep 0.2
      done
      break
    fi
    sleep 0.2
  done
  rm -f -- "$PIDFILE"
  echo "$NAME: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status)
    if pid="$(running_pid)"; then echo "$NAME: running (pid $pid)"; else echo "$NAME: stopped"; exit 3; fi
    ;;
  __run) run ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
