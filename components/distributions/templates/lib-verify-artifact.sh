# shellcheck shell=bash disable=SC2242 # the exit status is a number once filled in
# verify_artifact NAME FILE SHA256: refuse (exit @@EXIT@@) unless FILE has exactly this digest.
verify_artifact() {
  local name="$1" file="$2" want="$3" got
  if [[ ! -f "$file" ]]; then
    printf '[%s] refusing artifact %s: %s does not exist (fix: upload the artifact again)\n' "$HOST" "$name" "$file" >&2
    exit @@EXIT@@
  fi
  if ! printf '%s  %s\n' "$want" "$file" | sha256sum --check --status -; then
    got="$(sha256sum -- "$file")"
    printf '[%s] refusing artifact %s: %s has sha256 %s, expected %s (fix: upload the published file again or correct its checksum in the inventory)\n' \
      "$HOST" "$name" "$file" "${got%% *}" "$want" >&2
    exit @@EXIT@@
  fi
}
