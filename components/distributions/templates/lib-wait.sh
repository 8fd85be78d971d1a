# shellcheck shell=bash
# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 2 s until it succeeds or time runs out.
wait_for() {
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf '[%s] error: %s not ready after %ss on %s\n' "$HOST" "$what" "$limit" "$HOST" >&2
      return 1
    fi
    sleep 2
  done
}
