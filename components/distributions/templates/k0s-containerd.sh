# The CRI registry section moved between containerd 1.7 (config v2) and 2.x (config v3); k0s bundles
# containerd 2 from 1.36 on.
# shellcheck shell=bash
k0s_minor="$(@@BIN@@ version | sed -E 's/^v?1\.([0-9]+)\..*/\1/')"
if [[ "$k0s_minor" =~ ^[0-9]+$ ]] && ((k0s_minor >= 36)); then
  cri_version=3 cri_plugin=io.containerd.cri.v1.images
else
  cri_version=2 cri_plugin=io.containerd.grpc.v1.cri
fi
put_file @@DROPIN@@ 0644 < <(printf 'version = %s\n\n[plugins."%s".registry]\nconfig_path = "%s"\n' "$cri_version" "$cri_plugin" @@CERTS_DIR@@)
