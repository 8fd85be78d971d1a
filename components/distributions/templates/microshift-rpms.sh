# shellcheck shell=bash disable=SC2034 # STAGED and CHANGED are read by the install that includes this
[[ -d /run/systemd/system ]] || die "MicroShift needs systemd (fix: use a systemd host, or k3s with service_manager: supervised)"
RPMS=(@@RPMS@@)
missing=()
for rpm_file in "${RPMS[@]}"; do
  nevra="$(rpm -qp --qf '%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}' "$rpm_file" 2>/dev/null)" || die "$rpm_file is not a readable RPM"
  rpm -q "$nevra" >/dev/null 2>&1 || missing+=("$rpm_file")
done
STAGED=0
if ((${#missing[@]})); then
  if [[ -e /run/ostree-booted ]]; then
    rpm-ostree install --idempotent --allow-inactive "${RPMS[@]}" >&2
    mkdir -p -- "$(dirname -- @@REBOOT_MARKER@@)"
    printf 'microshift\n' >@@REBOOT_MARKER@@
    STAGED=1
    log "MicroShift packages layered into a new deployment"
  else
    dnf install -y "${RPMS[@]}" >&2
    CHANGED=1
    log "MicroShift packages installed"
  fi
fi
