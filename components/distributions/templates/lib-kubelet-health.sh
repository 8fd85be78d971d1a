# shellcheck shell=bash
# kubelet_healthy: the local kubelet answers its health endpoint (no credentials needed).
kubelet_healthy() {
  local reply
  if command -v curl >/dev/null 2>&1; then
    reply="$(curl -fsS -m 3 http://127.0.0.1:10248/healthz 2>/dev/null)" || return 1
  else
    # shellcheck disable=SC2016
    reply="$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/10248 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null)" || return 1
    reply="${reply##*$'\r\n\r\n'}"
  fi
  [[ "$reply" == ok ]]
}
