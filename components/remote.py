"""Remote commands and uploads over SSH as Pulumi resources.

The resources mirror pulumi-command's ``remote.Command`` and ``remote.CopyToRemote``
(connection, create/update/delete, environment, triggers, stdout) and run in Pulumi's
dynamic-provider host with paramiko, so they work with the toolchain this project builds.

Semantics chosen for host lifecycles:

- ``create`` runs once; a change of ``triggers`` or of the ``update`` script runs ``update``
  (upgrades are in place, never uninstall + install); a change of the target host replaces.
- ``delete`` runs when the resource is deleted (host removed from the inventory, destroy).
- Scripts reach the host on stdin with ``environment`` exported first: secrets never appear
  on a command line, in the process list, or in the state (environment and connection are
  secret outputs).
- The host key is pinned; a host that cannot be reached fails within ``dial_timeout_s``
  with a message naming the resource's ``label`` (site and host).
"""

from __future__ import annotations

import hashlib
import io
import shlex
import time
import uuid
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

OUTPUT_LIMIT = 64 * 1024


class RemoteError(Exception):
    """A host could not be reached or a remote script failed."""


def _connect(conn: dict[str, Any], label: str):
    """An SSH client to ``conn``'s host with its host key pinned, within the dial budget."""
    import paramiko

    host, port = conn["host"], int(conn.get("port") or 22)
    deadline = time.monotonic() + float(conn.get("dialTimeout") or 60)
    per_dial = float(conn.get("perDialTimeout") or 10)
    entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{host} {conn['hostKey']}")
    if entry is None:
        raise RemoteError(f"{label}: the pinned host key is not an OpenSSH public key")
    pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(conn["privateKey"])) if "OPENSSH" in conn["privateKey"] else paramiko.RSAKey.from_private_key(io.StringIO(conn["privateKey"]))
    attempt, last = 0, None
    while True:
        attempt += 1
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        names = [host] if port == 22 else [f"[{host}]:{port}"]
        for name in names:
            client.get_host_keys().add(name, entry.key.get_name(), entry.key)
        try:
            client.connect(host, port=port, username=conn.get("user") or "root", pkey=pkey,
                           timeout=per_dial, banner_timeout=per_dial, auth_timeout=per_dial,
                           allow_agent=False, look_for_keys=False)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise RemoteError(f"{label}: host key of {host}:{port} does not match the pinned key "
                              f"(got {exc.key.get_name()}); refusing to connect") from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            last = exc
            if time.monotonic() + 2 >= deadline:
                raise RemoteError(f"{label}: cannot reach {host}:{port} over SSH after {attempt} attempt(s) "
                                  f"within {conn.get('dialTimeout') or 60}s: {last}") from None
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def run_script(conn: dict[str, Any], script: str, env: dict[str, str], label: str) -> tuple[str, str]:
    """Run ``script`` with bash on the host; environment exported from stdin first."""
    client = _connect(conn, label)
    try:
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
        stdin, stdout, stderr = client.exec_command("bash -s")
        stdin.write(exports + script)
        stdin.channel.shutdown_write()
        out = stdout.read()
        err = stderr.read()
        code = stdout.channel.recv_exit_status()
    finally:
        client.close()
    out_s = out[-OUTPUT_LIMIT:].decode(errors="replace")
    err_s = err[-OUTPUT_LIMIT:].decode(errors="replace")
    if code != 0:
        tail = "\n".join(err_s.strip().splitlines()[-15:]) or "\n".join(out_s.strip().splitlines()[-15:])
        raise RemoteError(f"{label}: remote script exited {code}:\n{tail}")
    return out_s, err_s


def upload(conn: dict[str, Any], local_path: str, remote_path: str, label: str) -> None:
    """Copy a file to the host atomically (temp name, then rename)."""
    client = _connect(conn, label)
    try:
        directory = remote_path.rsplit("/", 1)[0] or "/"
        _, out, _ = client.exec_command(f"mkdir -p {shlex.quote(directory)} && chmod 700 {shlex.quote(directory)}")
        out.channel.recv_exit_status()
        sftp = client.open_sftp()
        tmp = f"{remote_path}.part-{uuid.uuid4().hex[:8]}"
        sftp.put(local_path, tmp)
        sftp.posix_rename(tmp, remote_path)
        sftp.close()
    finally:
        client.close()


class _CommandProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        out, err = run_script(props["connection"], props["create"], props.get("environment") or {}, props["label"])
        return CreateResult(id_=uuid.uuid4().hex, outs={**props, "stdout": out, "stderr": err})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("create", "update", "delete", "environment", "triggers", "connection", "label")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        old_host = (olds.get("connection") or {}).get("host")
        replaces = ["connection"] if old_host != (news.get("connection") or {}).get("host") else []
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        script = news.get("update")
        if not script or news.get("triggers") == olds.get("triggers") and news.get("update") == olds.get("update"):
            # Only metadata (delete script, label, credentials) changed: nothing to run.
            return UpdateResult(outs={**news, "stdout": olds.get("stdout", ""), "stderr": olds.get("stderr", "")})
        out, err = run_script(news["connection"], script, news.get("environment") or {}, news["label"])
        return UpdateResult(outs={**news, "stdout": out, "stderr": err})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("delete"):
            run_script(props["connection"], props["delete"], props.get("environment") or {}, props["label"])


class _CopyProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        upload(props["connection"], props["source"], props["remote_path"], props["label"])
        return CreateResult(id_=uuid.uuid4().hex, outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("source", "remote_path", "triggers", "connection", "label") if olds.get(k) != news.get(k)]
        replaces = [k for k in ("remote_path",) if olds.get(k) != news.get(k)]
        if (olds.get("connection") or {}).get("host") != (news.get("connection") or {}).get("host"):
            replaces.append("connection")
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if news.get("triggers") != olds.get("triggers") or news.get("source") != olds.get("source"):
            upload(news["connection"], news["source"], news["remote_path"], news["label"])
        return UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        run_script(props["connection"], f"rm -f {shlex.quote(props['remote_path'])}\n", {}, props["label"])


def connection(host: str, port: int, user: str, private_key: pulumi.Input[str], host_key: str,
               dial_timeout_s: int = 60) -> dict[str, Any]:
    """Connection settings, named as pulumi-command's ConnectionArgs (the policies read them)."""
    return {"host": host, "port": port, "user": user, "privateKey": private_key, "hostKey": host_key,
            "dialTimeout": dial_timeout_s, "perDialTimeout": min(10, max(1, dial_timeout_s))}


class Command(pulumi.dynamic.Resource):
    """A script run on a host over SSH (see the module docstring for its lifecycle)."""

    stdout: pulumi.Output[str]
    stderr: pulumi.Output[str]

    def __init__(self, name: str, *, connection: dict[str, Any], create: str, label: str,
                 update: str | None = None, delete: str | None = None,
                 environment: dict[str, pulumi.Input[str]] | None = None,
                 triggers: list[Any] | None = None, secret_stdout: bool = False,
                 opts: pulumi.ResourceOptions | None = None):
        secret = ["connection", "environment", *(["stdout"] if secret_stdout else [])]
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=secret))
        super().__init__(
            _CommandProvider(),
            name,
            {"kind": "edgefleet:remote:Command", "label": label, "connection": connection, "create": create,
             "update": update, "delete": delete, "environment": environment or {}, "triggers": triggers or [],
             "stdout": None, "stderr": None},
            opts,
        )


class CopyToRemote(pulumi.dynamic.Resource):
    """A local file copied to a host (re-copied when ``triggers`` change)."""

    def __init__(self, name: str, *, connection: dict[str, Any], source: str, remote_path: str, label: str,
                 triggers: list[Any] | None = None, opts: pulumi.ResourceOptions | None = None):
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["connection"]))
        super().__init__(
            _CopyProvider(),
            name,
            {"kind": "edgefleet:remote:CopyToRemote", "label": label, "connection": connection, "source": source,
             "remote_path": remote_path, "triggers": triggers or []},
            opts,
        )


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
