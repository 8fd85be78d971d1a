# shellcheck shell=bash
encryption_template=@@TEMPLATE@@
if [[ -n "${K0S_ENCRYPTION_KEY:-}" ]]; then
  encryption_config="${encryption_template//@@KEY_MARK@@/$K0S_ENCRYPTION_KEY}"
  if [[ -s @@CONFIG_PATH@@ ]]; then
    encryption_current="$(<@@CONFIG_PATH@@)"
    if [[ "$encryption_current" != *"$K0S_ENCRYPTION_KEY"* ]]; then
      die "the Secrets encryption key of this site changed and @@CONFIG_TEXT@@ does not list the new key (fix: rotate the key as the README says: add the new key to that file on every controller first)"
    fi
  fi
  put_file @@CONFIG_PATH@@ 0600 < <(printf '%s' "$encryption_config")
  unset encryption_config encryption_current
elif [[ ! -s @@CONFIG_PATH@@ ]]; then
  die "K0S_ENCRYPTION_KEY is not set and @@CONFIG_TEXT@@ does not exist (fix: pass K0S_ENCRYPTION_KEY in the remote command's environment)"
fi
chown @@USER@@:root -- @@CONFIG_PATH@@
