# shellcheck shell=bash
K3S_NODE_NAME=""
if [[ -f @@CONFIG_FILE@@ ]]; then
  K3S_NODE_NAME="$(sed -n 's/^node-name: *//p' @@CONFIG_FILE@@ | head -n 1)"
fi
K3S_NODE_NAME="${K3S_NODE_NAME:-@@NODE_NAME@@}"
# put_config DEST MODE < CONTENT: config.yaml with the kept node name. Writing it alone
# restarts nothing: only a new steady-state digest in @@APPLIED_FILE@@ does.
put_config() {
  local saved="$CHANGED"
  put_file "$1" "$2" < <(sed "s/^node-name: .*\$/node-name: $K3S_NODE_NAME/")
  CHANGED="$saved"
}
