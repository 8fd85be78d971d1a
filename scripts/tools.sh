# shellcheck shell=bash
# Extra Go tools the policy tests and CI use, built from their Go modules into the toolchain
# cache (one folder per name and version). Source this file and call a function; each is
# idempotent (a second call only checks the binary runs) and prints the binary's path:
#
#   source scripts/tools.sh && install_kube_score && install_actionlint
#
# Safe under `set -euo pipefail`: a function returns non-zero with one clear line on failure.

# Versions: scripts/versions.env (KUBE_SCORE_VERSION, ACTIONLINT_VERSION).
# shellcheck source=scripts/versions.env
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/versions.env"

_tools_cache() { printf '%s\n' "${EDGEFLEET_CACHE:-$HOME/.cache/edgefleet}/toolchain"; }

# _tools_go_install DIR MODULE@VERSION BINARY VERSION_ARG: build one Go command into DIR
# unless it is already there and `BINARY VERSION_ARG` runs.
_tools_go_install() {
  local dir="$1" spec="$2" bin="$3" version_arg="$4"
  if [[ -x "$dir/$bin" ]] && "$dir/$bin" "$version_arg" >/dev/null 2>&1; then
    printf '%s\n' "$dir/$bin"
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "tools.sh: go is not on PATH, cannot build $spec (fix: install Go >= 1.22)" >&2
    return 1
  fi
  mkdir -p "$dir"
  local log="$dir/build.log"
  if ! GOBIN="$dir" GOTOOLCHAIN=local go install "$spec" >"$log" 2>&1; then
    # The checksum database is not reachable for every module here; the proxy is.
    if grep -q "sum.golang.org\|verifying module" "$log" &&
      GOBIN="$dir" GOTOOLCHAIN=local GONOSUMDB="*" go install "$spec" >>"$log" 2>&1; then
      :
    else
      echo "tools.sh: go install $spec failed (log: $log)" >&2
      tail -n 5 "$log" >&2
      return 1
    fi
  fi
  printf '%s\n' "$dir/$bin"
}

# install_kube_score: kube-score, the second opinion on the audit's Kubernetes findings
# (tests/policy/test_kube_score.py, policies/KUBE-SCORE.md).
install_kube_score() {
  local v="${KUBE_SCORE_VERSION#v}"
  _tools_go_install "$(_tools_cache)/kube-score-$v" \
    "github.com/zegl/kube-score/cmd/kube-score@v$v" kube-score version
}

# install_actionlint: actionlint for .github/workflows (tests/policy/test_workflows.py).
install_actionlint() {
  local v="${ACTIONLINT_VERSION#v}"
  _tools_go_install "$(_tools_cache)/actionlint-$v" \
    "github.com/rhysd/actionlint/cmd/actionlint@v$v" actionlint -version
}
