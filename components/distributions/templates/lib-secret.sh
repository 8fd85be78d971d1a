# shellcheck shell=bash
# write_secret VAR FILE: the secret in environment variable VAR goes to FILE (0600), never to
# the output. Without VAR, an existing FILE is kept (re-runs need not carry the secret).
write_secret() {
  local var="$1" file="$2"
  if [[ -n "${!var:-}" ]]; then
    put_file "$file" 0600 < <(printf '%s' "${!var}")
  elif [[ ! -s "$file" ]]; then
    die "$var is not set and $file does not exist (fix: pass $var in the remote command's environment)"
  fi
}
# seed_secret VAR FILE: FILE (0600) from VAR only when FILE does not exist yet; an existing FILE
# is never replaced (what a running node already presented must stay).
seed_secret() {
  local var="$1" file="$2"
  if [[ ! -s "$file" && -n "${!var:-}" ]]; then
    install -d -m 0700 -- "$(dirname -- "$file")"
    put_file "$file" 0600 < <(printf '%s\n' "${!var}")
  fi
}
