"""One operation on one site stack, in its own process (``python -m fleet.worker``).

The fleet command starts one worker per site and operation, so that a site past its progress
deadline can be stopped as a whole (SIGINT lets the engine cancel cleanly, SIGKILL follows a
grace period) without touching the others. The request arrives as JSON on stdin; the result
leaves as one JSON line on stdout; the engine's own output goes to the site's log file.
Secrets (the kubeconfig output) stay in this process.

If the fleet command dies, its workers are told (PR_SET_PDEATHSIG) and take their engine
process group down with them, as a crash would: the next fleet run recovers those stacks.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from fleet import heal, health

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: a crashed fleet command leaves its workers running to completion

    def stop(signum, _frame):
        # The signal comes once per thread of the dying parent (the kernel hands its children to
        # each remaining thread in turn and signals them every time): later ones are ignored, or
        # their default action would end this process before it has stopped its engine.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            # The engine's plugins (language host, providers, policy pack) run in process groups
            # of their own: found through the process tree while their CLI still holds them.
            # The tree is frozen first, so that nothing in it starts a process (or loses its
            # parent) between the walk and the kill.
            for pid in freeze(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            os.killpg(os.getpgid(0), signal.SIGKILL)
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def freeze(root: int, rounds: int = 50) -> list[int]:
    """SIGSTOP every process below ``root`` until the walk finds no new one; returns them."""
    frozen: list[int] = []
    for _ in range(rounds):
        new = [pid for pid in descendants(root) if pid not in frozen]
        if not new:
            break
        for pid in new:
            try:
                os.kill(pid, signal.SIGSTOP)
            except OSError:
                continue  # gone meanwhile
            frozen.append(pid)
    return frozen


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Every process below ``root`` (Linux /proc), parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after the command name, which may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _stack(req: dict[str, Any], create: bool) -> auto.Stack:
    opts = auto.LocalWorkspaceOptions(
        work_dir=req["repo"],
        pulumi_command=auto.PulumiCommand(skip_version_check=True),
    )
    if create:
        return auto.create_or_select_stack(req["stack"], work_dir=req["repo"], opts=opts)
    return auto.select_stack(req["stack"], work_dir=req["repo"], opts=opts)


def _changes(summary: Mapping[str, int] | Mapping[auto.events.OpType, int] | None) -> int:
    return sum(n for op, n in (summary or {}).items() if op != "same")


def _last_update(stack: auto.Stack) -> auto.UpdateSummary | None:
    history = stack.history(page_size=1, page=1)
    return history[0] if history else None


def _recover(stack: auto.Stack, log, took_over: bool) -> list[str]:
    """What scripts/recover does: drop a dead run's lock (only when the fleet lock of this site
    was taken over from a dead run: a live lock may be someone's update), clear pending
    operations."""
    notes = []
    if took_over:
        try:
            stack.cancel()
            notes.append("removed the lock a dead run left")
        except auto.CommandError:
            pass  # no lock to remove
    how = heal.clear_interrupted(stack, log)
    if how == "hosts-only":
        notes.append(
            "cleared the pending operations of an interrupted update (hosts read back alone: the site's API was down)"
        )
    elif how:
        notes.append("cleared the pending operations of an interrupted update")
    return notes


def _gate(stack: auto.Stack, req: dict[str, Any], soak: bool, deadline: float) -> str | None:
    gate = req.get("health") or {}
    if not gate.get("enabled"):
        return None
    outputs = stack.outputs()
    key = f"kubeconfig-{req['site']}"
    if key not in outputs or not outputs[key].value:
        return f"health gate: the stack has no {key} output to reach the site's API with"
    get = health.getter_from_kubeconfig(str(outputs[key].value))
    return health.hold(lambda: health.problems(get), float(gate.get("soak_s", 0)) if soak else 0.0, deadline)


def run(req: dict[str, Any]) -> dict[str, Any]:
    op = req["op"]
    started = time.monotonic()
    deadline = started + float(req.get("deadline_s") or 1800)
    log_path = Path(req["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log_file:

        def log(line: str) -> None:
            log_file.write(line if line.endswith("\n") else line + "\n")
            log_file.flush()

        log(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {op} {req['stack']}")
        policy = req.get("policy") or {}
        packs = [policy["pack"]] if policy else None
        pack_configs = [policy["config"]] if policy else None
        try:
            if op in ("drift", "unlock"):
                try:
                    stack = _stack(req, create=False)
                except auto.StackNotFoundError:
                    return {"status": "absent", "reason": "the site stack does not exist yet"}
                if op == "unlock":
                    stack.cancel()
                    return {"status": "succeeded"}
                return drift(stack, log)
            if op == "status":
                try:
                    stack = _stack(req, create=False)
                except auto.StackNotFoundError:
                    return {"status": "absent"}
                return {"status": "succeeded", **stack_status(stack, req), "health": health_now(stack, req["site"])}
            stack = _stack(req, create=op in ("up", "preview"))
            notes = _recover(stack, log, bool(req.get("recover"))) if op in ("up", "refresh", "destroy") else []
            if op == "preview":
                preview = stack.preview(
                    on_output=log,
                    color="never",
                    refresh=req.get("refresh") or None,
                    policy_packs=packs,
                    policy_pack_configs=pack_configs,
                )
                return {
                    "status": "succeeded",
                    "changes": _changes(preview.change_summary),
                    "summary": dict(preview.change_summary or {}),
                    "notes": notes,
                }
            if op == "up":
                last = _last_update(stack)
                if (
                    not req.get("force")
                    and not req.get("refresh")
                    and last is not None
                    and last.kind == "update"
                    and last.result == "succeeded"
                    and req["message"] in (last.message or "")
                ):
                    reason = _gate(stack, req, soak=False, deadline=deadline)
                    return {
                        "status": "failed" if reason else "unchanged",
                        "reason": reason or "",
                        "notes": notes,
                        "changes": 0,
                        "already": True,
                    }
                if req.get("refresh"):
                    # Hosts read back first: a wiped or reimaged host is reinstalled by this update.
                    healing = heal.read_back(stack, log)
                    notes += [f"gone from its host: {urn.split('::')[-1]}" for urn in healing.gone]
                update = stack.up(
                    message=req["message"],
                    on_output=log,
                    color="never",
                    refresh=req.get("refresh") or None,
                    policy_packs=packs,
                    policy_pack_configs=pack_configs,
                )
                changes = _changes(update.summary.resource_changes)
                reason = _gate(stack, req, soak=changes > 0, deadline=deadline)
                return {
                    "status": "failed" if reason else ("succeeded" if changes else "unchanged"),
                    "reason": reason or "",
                    "changes": changes,
                    "notes": notes,
                    "summary": dict(update.summary.resource_changes or {}),
                }
            if op == "refresh":
                refresh = stack.refresh(message=req["message"], on_output=log, color="never")
                return {"status": "succeeded", "changes": _changes(refresh.summary.resource_changes), "notes": notes}
            if op == "destroy":
                destroy = stack.destroy(message=req["message"], on_output=log, color="never")
                return {"status": "succeeded", "changes": _changes(destroy.summary.resource_changes), "notes": notes}
            return {"status": "failed", "reason": f"unknown operation {op!r}"}
        except auto.CommandError as exc:
            log(str(exc))
            return {"status": "failed", "reason": engine_error(str(exc))}


def drift(stack: auto.Stack, log) -> dict[str, Any]:
    """A preview-refresh in two passes: the hosts first (each remote resource reads its host
    back), then the Kubernetes objects. A site whose install is gone from a host cannot answer
    for its objects (its API went with the install): it is reported drifted by what the hosts
    lost, and ``up --refresh`` reinstalls it and creates its objects again."""
    resources = heal.resources(stack)
    remote = [r["urn"] for r in resources if r["type"] == heal.DYNAMIC]
    objects = [
        r["urn"]
        for r in resources
        if r.get("custom") and r["type"] != heal.DYNAMIC and not r["type"].startswith("pulumi:providers:")
    ]
    drifted: list[dict[str, Any]] = []

    def on_event(event: auto.events.EngineEvent) -> None:
        meta = getattr(event.res_outputs_event, "metadata", None) if event.res_outputs_event else None
        if meta is None or meta.op == auto.events.OpType.SAME:
            return
        gone = meta.new is None or meta.op == auto.events.OpType.DELETE
        if meta.op != auto.events.OpType.REFRESH or meta.diffs or gone:
            drifted.append(
                {
                    "urn": meta.urn,
                    "type": meta.type,
                    "op": str(meta.op.value),
                    "diffs": list(meta.diffs or []),
                    "gone": gone,
                }
            )

    changes, reason = 0, ""
    for targets in (remote, objects):
        if not targets:
            continue
        preview = stack.preview_refresh(target=targets, on_output=log, on_event=on_event, color="never")
        changes += _changes(preview.change_summary)
        gone = {d["urn"] for d in drifted if d["gone"]}
        _, lost = heal.lost_sites(resources, {r["urn"] for r in resources} - gone)
        if lost:
            reason = (
                f"install gone from its host ({', '.join(s.rsplit('::', 1)[-1] for s in lost)}): its Kubernetes "
                "objects cannot be read; `up --refresh` reinstalls it and creates them again"
            )
            break
    return {
        "status": "drifted" if drifted or changes else "in-sync",
        "changes": changes,
        "resources": drifted,
        "reason": reason,
    }


def health_now(stack: auto.Stack, site: str) -> list[str] | None:
    """The health gate's checks, once (None when the stack has no kubeconfig output yet)."""
    outputs = stack.outputs()
    key = f"kubeconfig-{site}"
    if key not in outputs or not outputs[key].value:
        return None
    return health.problems(health.getter_from_kubeconfig(str(outputs[key].value), timeout_s=5.0))


REVISION = re.compile(r"\brev=([0-9a-f]{16})\b")


def stack_status(stack: auto.Stack, req: dict[str, Any]) -> dict[str, Any]:
    """The last update (and the last successful one) from the stack's history; the policy
    findings of its current state under the stack's enforcement file."""
    out: dict[str, Any] = {}
    history = stack.history(page_size=20, page=1)
    if history:
        last = history[0]
        out["last"] = _update_dict(last)
        ok = next((u for u in history if u.kind == "update" and u.result == "succeeded"), None)
        if ok is not None:
            out["last_ok"] = _update_dict(ok)
    policy = req.get("policy")
    if policy:
        from policies.engine import evaluate, load_settings
        from policies.sources import resources_from_stack_export

        deployment = stack.export_stack()
        resources, _ = resources_from_stack_export(
            {"version": deployment.version, "deployment": deployment.deployment}, req["stack"]
        )
        report = evaluate(resources, load_settings(policy["config"]))
        counted = [f for f in report.findings if not f.exempt]
        out["policy"] = {
            "mandatory": sum(f.level == "mandatory" for f in counted),
            "advisory": sum(f.level == "advisory" for f in counted),
        }
    return out


def _update_dict(u: auto.UpdateSummary) -> dict[str, Any]:
    m = REVISION.search(u.message or "")
    return {
        "kind": u.kind,
        "result": u.result,
        "start": u.start_time.isoformat(),
        "end": u.end_time.isoformat() if u.end_time else None,
        "duration_s": (u.end_time - u.start_time).total_seconds() if u.end_time else None,
        "revision": m.group(1) if m else None,
    }


def engine_error(text: str) -> str:
    """The lines of an engine failure that say why (diagnostics), not the command echo."""
    keep = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(
            (
                "code:",
                "stdout:",
                "stderr:",
                "Previewing",
                "Updating",
                "View Live",
                "Resources:",
                "Duration:",
                "Type ",
                "+ ",
                "~ ",
                "- ",
                "@ ",
                "pulumi:pulumi:Stack",
                "Outputs:",
                "Destroying",
                "Refreshing",
                "cmd:",
            )
        ):
            continue
        if "error" in s.lower() or "fix:" in s or "failed" in s.lower() or "locked" in s.lower():
            keep.append(s)
    text = " | ".join(dict.fromkeys(keep)) or "the engine failed (see the site's log)"
    return text[:600]


def main() -> int:
    _die_with_parent()
    # At a deadline the fleet command interrupts the whole process group: the engine cancels
    # cleanly while this process waits for it and reports, instead of dying first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    req = json.loads(sys.stdin.read())
    out = run(req)
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
