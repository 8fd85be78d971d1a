# shellcheck shell=bash
changed_before=$CHANGED
CHANGED=0
@@WRITE_ARGS@@
args_changed=$CHANGED
CHANGED=$((changed_before | CHANGED))
if ((args_changed)) || [[ ! -e @@UNIT@@ ]]; then
  @@BIN@@ install @@ROLE@@ --force @@FLAGS@@
  CHANGED=1
  log "installed the @@SERVICE@@ service"
fi
svc_apply
