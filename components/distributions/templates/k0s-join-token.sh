# shellcheck shell=bash
mint() { @@BIN@@ token create --data-dir=@@DATA_DIR@@ --role=@@ROLE@@ --expiry=@@EXPIRY@@; }
for _ in $(seq 1 30); do
  if token="$(mint 2>/dev/null)" && [[ -n "$token" ]]; then
    log "minted a @@ROLE@@ join token"
    printf '%s\n' "$token"
    exit 0
  fi
  sleep 2
done
die "k0s token create --role=@@ROLE@@ keeps failing on $HOST (fix: check the controller with 'k0s status')"
