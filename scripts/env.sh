# Source this file (`source scripts/env.sh`) to use the project's offline Pulumi toolchain
# from a shell: `pulumi ...` then runs the CLI and plugins that scripts/bootstrap built.
# Works from bash and zsh; changes nothing but environment variables.
_edgefleet_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
# shellcheck source=scripts/versions.env
source "$_edgefleet_repo/scripts/versions.env"
export EDGEFLEET_CACHE="${EDGEFLEET_CACHE:-$HOME/.cache/edgefleet}"
export EDGEFLEET_TOOLCHAIN="$EDGEFLEET_CACHE/toolchain"
# CLI, language host and the repo's virtualenv first on PATH.
export PATH="$EDGEFLEET_TOOLCHAIN/pulumi-$PULUMI_VERSION:$_edgefleet_repo/.venv/bin:$PATH"
# Plugins and CLI state live in the cache, never in ~/.pulumi.
# The language host runs the program with the repo virtualenv's interpreter.
export PULUMI_PYTHON_CMD="$_edgefleet_repo/.venv/bin/python"
export PULUMI_HOME="${PULUMI_HOME:-$EDGEFLEET_CACHE/pulumi-home}"
# State: a local file backend inside the repo (git-ignored) unless the caller chose one,
# e.g. the team S3 backend (see README).
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$_edgefleet_repo/.pulumi}"
# Offline: no update checks, no automatic plugin downloads, no telemetry.
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK=true
export PULUMI_DIY_BACKEND_NO_LEGACY_WARNING=true
# Secrets provider: passphrase. The dev stack's passphrase is public by design (lab only);
# scripts/stack and the program refuse it for any stack whose inventory is prod, whether it
# comes from PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE. Prod supplies its
# own passphrase through either variable from a secret store.
if [ -z "${PULUMI_CONFIG_PASSPHRASE:-}" ] && [ -z "${PULUMI_CONFIG_PASSPHRASE_FILE:-}" ]; then
  export PULUMI_CONFIG_PASSPHRASE="edgefleet-dev-lab-only"
fi
mkdir -p "$PULUMI_HOME" "$_edgefleet_repo/.pulumi"
unset _edgefleet_repo
