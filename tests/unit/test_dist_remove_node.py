"""Removing a node, executed against a stand-in kubectl: the node is drained and deleted, a
deletion held only by K3s's own wrangler.cattle.io/node finalizer (k3s-io/k3s#2669) is released
after the grace period, and any other finalizer stops the step naming it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from components.distributions import kube
from components.distributions.kube import KubeAccess

# One node kept in files under $FAKE_KUBE: uid (absent once deleted), finalizers (space-separated,
# as the jsonpath range prints them), every call logged. A delete with finalizers left leaves the
# node terminating; a JSON patch that tests the uid and removes the finalizers completes it.
FAKE_KUBECTL = r"""#!/usr/bin/env bash
k="$FAKE_KUBE"
shift  # --kubeconfig=...
printf '%s\n' "$*" >>"$k/calls"
case "$*" in
  "get --raw /readyz") echo ok ;;
  "get node agent-1 --ignore-not-found -o name") [[ -f "$k/uid" ]] && echo node/agent-1 ;;
  "get node agent-1 --ignore-not-found -o jsonpath={.metadata.uid}") cat "$k/uid" 2>/dev/null || true ;;
  "get node agent-1 --ignore-not-found -o jsonpath={range .metadata.finalizers[*]}{@}{\" \"}{end}")
    [[ -f "$k/uid" ]] && cat "$k/finalizers" ;;
  *"jsonpath={.status.conditions"*) echo True ;;
  "cordon agent-1" | "drain agent-1 "*) ;;
  "delete node agent-1 --ignore-not-found --wait=false")
    if [[ ! -s "$k/finalizers" ]]; then rm -f "$k/uid"; fi
    if [[ -f "$k/reregister" ]]; then echo new-uid >"$k/uid"; : >"$k/finalizers"; fi ;;
  "patch node agent-1 --type=json -p "*)
    [[ "$*" == *"\"value\":\"$(cat "$k/uid")\""* && "$*" == *'"op":"remove","path":"/metadata/finalizers"'* ]] || exit 1
    rm -f "$k/uid" ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def run_remove(
    tmp_path: Path, finalizers: str, *, reregister: bool = False
) -> tuple[subprocess.CompletedProcess[str], str]:
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL)
    fake.chmod(0o755)
    state = tmp_path / "kube"
    state.mkdir()
    (state / "uid").write_text("uid-1")
    (state / "finalizers").write_text(finalizers)
    if reregister:
        (state / "reregister").touch()
    access = KubeAccess(kubectl=(str(fake), "--kubeconfig=/k"), binary=str(fake), kubeconfig="/k")
    script = kube.kube_script("remove agent-1", access, kube.remove_node_body(access, "agent-1", timeout_s=2))
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "FAKE_KUBE": str(state)},
        timeout=60,
    )
    return done, (state / "calls").read_text()


def test_a_node_without_finalizers_is_drained_and_deleted(tmp_path: Path) -> None:
    done, calls = run_remove(tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert "node agent-1 drained and deleted" in done.stderr
    verbs = [c.split()[0] for c in calls.splitlines() if not c.startswith("get")]
    assert verbs == ["cordon", "drain", "delete"]


def test_a_node_registered_again_under_a_new_uid_counts_as_deleted(tmp_path: Path) -> None:
    done, calls = run_remove(tmp_path, "", reregister=True)
    assert done.returncode == 0, done.stderr
    assert "patch" not in calls


def test_only_k3s_node_finalizer_is_released_after_the_grace_period(tmp_path: Path) -> None:
    done, calls = run_remove(tmp_path, "wrangler.cattle.io/node ")
    assert done.returncode == 0, done.stderr
    assert "held only by wrangler.cattle.io/node after 2s; releasing it" in done.stderr
    patch = next(c for c in calls.splitlines() if c.startswith("patch"))
    assert '"op":"test","path":"/metadata/uid","value":"uid-1"' in patch, "only the node that was deleted"


@pytest.mark.parametrize(
    "finalizers", ["wrangler.cattle.io/managed-etcd-controller wrangler.cattle.io/node ", "example.com/keep "]
)
def test_any_other_finalizer_stops_the_removal_naming_it(tmp_path: Path, finalizers: str) -> None:
    done, calls = run_remove(tmp_path, finalizers)
    assert done.returncode == 1
    assert f"node agent-1 is still terminating, held by finalizers: {finalizers}(fix:" in done.stderr
    assert "patch" not in calls, "a controller's own cleanup is never skipped"
