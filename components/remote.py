"""Remote commands and uploads over SSH as Pulumi resources.

The resources mirror pulumi-command's ``remote.Command`` and ``remote.CopyToRemote``
(connection, create/update/delete, environment, triggers, stdout) and run in Pulumi's
dynamic-provider host with paramiko, so they work with the toolchain this project builds.

Semantics chosen for host lifecycles:

- ``create`` runs once; only a change of ``triggers`` runs ``update`` (upgrades are in
  place, never uninstall + install). Every other change (scripts, label, connection: the
  machine's address, or which server relays node operations) is metadata: recorded, nothing
  runs. Resources are named per machine, so a new connection is the same machine reached
  another way, never a reason to delete and recreate (see :func:`in_place_diff`).
- ``delete`` runs when the resource is deleted (host removed from the inventory, destroy).
- On refresh, a Command with a ``check`` script and a copy with its ``sha256`` read the host
  back: what the host no longer has (a wiped disk, a reimaged machine, an install removed behind
  the stack's back) is reported gone, so refresh drops it from the state and the next update
  creates it again. A host that cannot be reached fails the refresh, naming it; it is never
  taken for a host that lost its install.
- Scripts reach the host on stdin with ``environment`` exported first: secrets never appear
  on a command line, in the process list, or in the state (environment and connection are
  secret outputs).
- A user other than root runs every script as ``sudo -n /bin/bash -s``: the script and its
  exports still arrive on stdin, inside the elevated shell, never in sudo's argv or
  environment. Uploads then go to a private directory in the user's home and are installed
  into place by root, their sha256 checked before the final rename.
- The host key is pinned; a host that cannot be reached fails within ``dial_timeout_s``
  with a message naming the resource's ``label`` (site and host).
- Once connected, every step has a deadline (``timeout_s``) and the connection sends
  keepalives: a host that stops answering mid-script fails the step, naming label, step
  and deadline, and the connection is closed, instead of holding the stack lock forever.
"""

from __future__ import annotations

import io
import os
import select
import shlex
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from components.contract import CHECK_ABSENT, CHECK_PRESENT, file_sha256

if TYPE_CHECKING:  # imported where used: the dynamic providers load this module in every step
    import paramiko

OUTPUT_LIMIT = 64 * 1024
# sshd may send a script's exit status before the last of its output (it drains the script's
# pipes after the script exits): output is read until the channel's EOF, or for this long after
# the exit status when a process the script left behind still holds the pipe open.
EOF_GRACE_S = 2.0
KEEPALIVE_S = 15
# A step whose caller gives no deadline: long enough for any install, short enough that a
# dead host does not hold the stack lock for good.
DEFAULT_COMMAND_TIMEOUT_S = 3600
# Slack for what a script does besides its own bounded waits (service stops, copies, restarts).
COMMAND_MARGIN_S = 300
# Slowest link (bytes per second) an upload must get through within its default deadline.
UPLOAD_FLOOR_BPS = 256 * 1024
SUDO_SHELL = "/bin/bash"
# sudo's secure_path differs between distributions (RHEL's lacks /usr/local/bin): an elevated
# shell starts with the PATH a root login gets, so scripts behave as they do for root.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RemoteError(Exception):
    """A host could not be reached or a remote script failed."""


def step_deadline(script_timeout_s: int, waits: int = 2) -> int:
    """The deadline of a script whose own waits are each bounded by ``script_timeout_s``
    (e.g. the API, then the node): every wait plus a margin for the rest."""
    return waits * int(script_timeout_s) + COMMAND_MARGIN_S


def upload_deadline(size_bytes: int) -> int:
    """The deadline of an upload of ``size_bytes`` over the slowest link the fleet accepts."""
    return COMMAND_MARGIN_S + int(size_bytes) // UPLOAD_FLOOR_BPS


def sudoers_line(user: str) -> str:
    """The sudoers entry a non-root SSH user needs (README: Security model)."""
    return f"{user} ALL=(root) NOPASSWD: {SUDO_SHELL} -s"


def _user(conn: dict[str, Any]) -> str:
    return conn.get("user") or "root"


def shell_command(conn: dict[str, Any]) -> str:
    """The command line every script runs under: root's bash, or bash through sudo."""
    return "bash -s" if _user(conn) == "root" else f"sudo -n {SUDO_SHELL} -s"


def load_private_key(text: str, passphrase: str | None, label: str) -> paramiko.PKey:
    """A paramiko key from OpenSSH or PEM text of any type paramiko signs with (Ed25519,
    ECDSA, RSA), decrypted with ``passphrase`` if it is protected. Errors never show the key."""
    import paramiko
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    data = text.strip().encode() + b"\n"
    load = (
        serialization.load_ssh_private_key
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data
        else serialization.load_pem_private_key
    )
    password = passphrase.encode() if passphrase else None
    fix = "(fix: give the private key as an OpenSSH or PEM file: `ssh-keygen -t ed25519` writes one)"
    try:
        try:
            key = load(data, password)
        except TypeError:
            if password is None:
                raise RemoteError(
                    f"{label}: connection.privateKey is passphrase-protected and no passphrase was given "
                    "(fix: set the key's passphrase as a Pulumi secret and reference it as "
                    "privateKeyPassphrase)"
                ) from None
            key = load(data, None)  # a passphrase for a key that has none: the key alone is enough
    except UnsupportedAlgorithm:
        raise RemoteError(f"{label}: connection.privateKey uses a key type paramiko cannot sign with {fix}") from None
    except (ValueError, TypeError):
        if password is not None:
            raise RemoteError(
                f"{label}: connection.privateKey cannot be decrypted: wrong passphrase or damaged key "
                "(fix: check privateKeyPassphrase against the key with `ssh-keygen -y -f KEY`)"
            ) from None
        raise RemoteError(f"{label}: connection.privateKey is not an OpenSSH or PEM private key {fix}") from None
    classes = (
        (ed25519.Ed25519PrivateKey, paramiko.Ed25519Key),
        (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey),
        (rsa.RSAPrivateKey, paramiko.RSAKey),
    )
    for crypto_type, key_class in classes:
        if isinstance(key, crypto_type):
            # paramiko reads every type from the OpenSSH format; the decrypted copy stays in memory.
            openssh = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            return key_class.from_private_key(io.StringIO(openssh.decode()))
    raise RemoteError(
        f"{label}: connection.privateKey is a {type(key).__name__.lstrip('_')}, which SSH cannot use here "
        "(fix: use an Ed25519, ECDSA or RSA key)"
    )


def _connect(conn: dict[str, Any], label: str) -> paramiko.SSHClient:
    """An SSH client to ``conn``'s host with its host key pinned, within the dial budget."""
    import paramiko

    host, port = conn["host"], int(conn.get("port") or 22)
    deadline = time.monotonic() + float(conn.get("dialTimeout") or 60)
    per_dial = float(conn.get("perDialTimeout") or 10)
    entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{host} {conn['hostKey']}")
    if entry is None:
        raise RemoteError(f"{label}: the pinned host key is not an OpenSSH public key")
    pkey = load_private_key(conn["privateKey"], conn.get("privateKeyPassphrase"), label)
    attempt, last = 0, None
    while True:
        attempt += 1
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        names = [host] if port == 22 else [f"[{host}]:{port}"]
        for name in names:
            client.get_host_keys().add(name, entry.key.get_name(), entry.key)
        try:
            client.connect(
                host,
                port=port,
                username=_user(conn),
                pkey=pkey,
                timeout=per_dial,
                banner_timeout=per_dial,
                auth_timeout=per_dial,
                allow_agent=False,
                look_for_keys=False,
            )
            # Keepalives keep NAT and firewall state alive during long, quiet steps.
            transport = client.get_transport()
            assert transport is not None  # connect() succeeded
            transport.set_keepalive(KEEPALIVE_S)
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise RemoteError(
                f"{label}: host key of {host}:{port} does not match the pinned key "
                f"(got {exc.key.get_name()}); refusing to connect"
            ) from None
        except (OSError, paramiko.SSHException) as exc:
            client.close()
            last = exc
            if time.monotonic() + 2 >= deadline:
                raise RemoteError(
                    f"{label}: cannot reach {host}:{port} over SSH after {attempt} attempt(s) "
                    f"within {conn.get('dialTimeout') or 60}s: {last}"
                ) from None
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


class _Deadline:
    """The time budget of one step. When it runs out the connection is closed, which ends any
    read, write or SFTP transfer still blocked on the host."""

    def __init__(self, seconds: float, label: str, step: str):
        self.seconds, self.label, self.step = seconds, label, step
        self._at = time.monotonic() + seconds
        self._fired = threading.Event()

    def remaining(self) -> float:
        return self._at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self._fired.is_set() or self.remaining() <= 0

    @contextmanager
    def guard(self, client: paramiko.SSHClient) -> Iterator[None]:
        """Close ``client`` when the deadline passes; errors inside become this step's error."""
        import paramiko

        def fire() -> None:
            self._fired.set()
            client.close()

        timer = threading.Timer(max(0.0, self.remaining()), fire)
        timer.daemon = True
        timer.start()
        try:
            yield
        except RemoteError:
            if self._fired.is_set():
                raise self.error() from None
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if self.expired:
                raise self.error() from None
            raise RemoteError(
                f"{self.label}: step {self.step!r}: the connection was lost: {str(exc) or type(exc).__name__} "
                "(fix: check the host and its network link, then run the update again)"
            ) from None
        finally:
            timer.cancel()

    def error(self) -> RemoteError:
        return RemoteError(
            f"{self.label}: step {self.step!r} did not finish within its deadline of {self.seconds:g}s; "
            "the connection was closed (fix: check the host and its network link, then run the update "
            "again; raise edgefleet:commandTimeoutSeconds if the step needs longer)"
        )


def _send_all(chan: paramiko.Channel, data: bytes, deadline: _Deadline) -> None:
    view = memoryview(data)
    while view:
        if deadline.expired:
            raise deadline.error()
        chan.settimeout(max(0.01, min(1.0, deadline.remaining())))
        try:
            sent = chan.send(bytes(view[:32768]))
        except TimeoutError:
            continue  # the host's window is full: wait, within the deadline
        view = view[sent:]


def _keep_tail(buf: bytearray) -> None:
    if len(buf) > 2 * OUTPUT_LIMIT:
        del buf[:-OUTPUT_LIMIT]


def _exec(client: paramiko.SSHClient, command: str, stdin: bytes, deadline: _Deadline) -> tuple[int, bytes, bytes]:
    """Run ``command`` with ``stdin``; read both streams without blocking past the deadline.
    Exit status -1: the channel closed without one."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise RemoteError(
            f"{deadline.label}: the SSH connection closed before step {deadline.step!r} started "
            "(fix: run the update again)"
        )
    chan = transport.open_session(timeout=max(1.0, deadline.remaining()))
    try:
        chan.exec_command(command)
        _send_all(chan, stdin, deadline)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        exited: float | None = None
        while True:
            while chan.recv_ready():
                out += chan.recv(65536)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
            _keep_tail(out)
            _keep_tail(err)
            if chan.exit_status_ready():
                exited = exited or time.monotonic()
                drained = not chan.recv_ready() and not chan.recv_stderr_ready()
                if drained and (chan.eof_received or chan.closed or time.monotonic() - exited > EOF_GRACE_S):
                    break
            if deadline.expired:
                raise deadline.error()
            select.select([chan], [], [], max(0.01, min(1.0, deadline.remaining())))
        return chan.recv_exit_status(), bytes(out), bytes(err)
    finally:
        chan.close()


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-15:])


def _run(client: paramiko.SSHClient, conn: dict[str, Any], script: str, deadline: _Deadline) -> tuple[str, str]:
    """``script`` through the connection's shell (elevated for non-root users); failures raise."""
    if _user(conn) != "root":
        script = f"export PATH={ROOT_PATH}\n{script}"
    code, out, err = _exec(client, shell_command(conn), script.encode(), deadline)
    out_s = out[-OUTPUT_LIMIT:].decode(errors="replace")
    err_s = err[-OUTPUT_LIMIT:].decode(errors="replace")
    if code == -1 and not deadline.expired:
        raise RemoteError(
            f"{deadline.label}: step {deadline.step!r}: the connection closed before the script reported "
            "an exit status (fix: check the host and its network link, then run the update again)"
        )
    if code != 0 and _user(conn) != "root" and err_s.startswith("sudo: "):
        user = _user(conn)
        raise RemoteError(
            f"{deadline.label}: step {deadline.step!r}: user {user!r} cannot run {SUDO_SHELL} -s through "
            f"sudo without a password: {err_s.splitlines()[0]} (fix: on the host, add "
            f"`{sudoers_line(user)}` to /etc/sudoers.d/edgefleet, or connect as root)"
        )
    if code != 0:
        raise RemoteError(
            f"{deadline.label}: step {deadline.step!r}: remote script exited {code}:\n{_tail(err_s) or _tail(out_s)}"
        )
    return out_s, err_s


def run_script(
    conn: dict[str, Any],
    script: str,
    env: dict[str, str],
    label: str,
    *,
    step: str = "script",
    timeout_s: float | None = None,
) -> tuple[str, str]:
    """Run ``script`` with bash on the host (through sudo for non-root users), environment
    exported from stdin first, within ``timeout_s`` once connected."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    client = _connect(conn, label)
    deadline = _Deadline(timeout_s or DEFAULT_COMMAND_TIMEOUT_S, label, step)
    try:
        with deadline.guard(client):
            return _run(client, conn, exports + script, deadline)
    finally:
        client.close()


def _placement(staged: str, part: str, remote_path: str, sha256: str, cleanup: str | None) -> str:
    """Root's side of an upload: into place only when the bytes on the host are the ones sent."""
    q = shlex.quote
    directory = str(PurePosixPath(remote_path).parent)
    lines = ["set -euo pipefail", f"mkdir -p {q(directory)}", f"chmod 700 {q(directory)}"]
    if staged != part:
        lines.append(f"install -m 0600 -- {q(staged)} {q(part)}")
    if cleanup:
        lines.append(f"rm -rf -- {q(cleanup)}")
    lines += [
        f'got="$(sha256sum < {q(part)})"',
        f'if [[ "${{got%% *}}" != {sha256} ]]; then',
        f"  rm -f -- {q(part)}",
        f"  printf '%s: sha256 after upload is not %s; removed\\n' {q(remote_path)} {sha256} >&2",
        "  exit 1",
        "fi",
        f"mv -f -- {q(part)} {q(remote_path)}",
    ]
    return "\n".join(lines) + "\n"


def upload(
    conn: dict[str, Any],
    local_path: str,
    remote_path: str,
    label: str,
    *,
    step: str = "upload",
    timeout_s: float | None = None,
) -> None:
    """Copy a file to the host atomically: a temporary name, its sha256 checked there, then a
    rename. A non-root user uploads into a private directory of its home and root installs
    the file into place."""
    sha256 = file_sha256(local_path)
    budget = timeout_s or upload_deadline(os.path.getsize(local_path))
    part = f"{remote_path}.part-{uuid.uuid4().hex[:8]}"
    root = _user(conn) == "root"
    client = _connect(conn, label)
    deadline = _Deadline(budget, label, step)
    try:
        with deadline.guard(client):
            staging = None
            if root:
                directory = str(PurePosixPath(remote_path).parent)
                _run(
                    client, conn, f"mkdir -p {shlex.quote(directory)} && chmod 700 {shlex.quote(directory)}\n", deadline
                )
            sftp = client.open_sftp()
            try:
                if root:
                    staged = part
                else:
                    staging = f"{sftp.normalize('.')}/.edgefleet-upload-{uuid.uuid4().hex[:12]}"
                    sftp.mkdir(staging, 0o700)
                    sftp.chmod(staging, 0o700)
                    staged = f"{staging}/{PurePosixPath(remote_path).name}"
                sftp.put(local_path, staged, callback=lambda *_: _check(deadline))
            finally:
                sftp.close()
            _run(client, conn, _placement(staged, part, remote_path, sha256, staging), deadline)
    finally:
        client.close()


def _check(deadline: _Deadline) -> None:
    if deadline.expired:
        raise deadline.error()


def _step(props: dict[str, Any], operation: str) -> dict[str, Any]:
    """The step's name for messages (resource name and operation) and its deadline."""
    return {
        "step": f"{props.get('step') or props.get('kind', 'remote')}/{operation}",
        "timeout_s": props.get("timeout"),
    }


def in_place_diff(olds: dict[str, Any], news: dict[str, Any], keys: tuple[str, ...]) -> DiffResult:
    """Changes of ``keys``, never a replacement: a replaced Command would run its ``delete``
    (an uninstall, a node removal) on a machine that is still in the inventory."""
    changed = [k for k in keys if olds.get(k) != news.get(k)]
    return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)


def read_verdict(stdout: str, label: str, step: str) -> tuple[bool, str]:
    """A check script's output: (present, what it printed before its verdict line)."""
    lines = stdout.rstrip("\n").split("\n")
    verdict = lines[-1] if lines else ""
    if verdict == CHECK_PRESENT:
        return True, "\n".join(lines[:-1])
    if verdict.startswith(CHECK_ABSENT):
        return False, verdict[len(CHECK_ABSENT) :]
    raise RemoteError(f"{label}: step {step!r}: the read-back printed no verdict (last line: {verdict[:200]!r})")


def _read_back(id_: str, props: dict[str, Any], script: str) -> ReadResult:
    """Run ``script`` on the host: the resource as it is, or gone (an empty id) when the host
    no longer has what it describes."""
    step = _step(props, "read")
    out, _ = run_script(props["connection"], script, {}, props["label"], **step)
    present, printed = read_verdict(out, props["label"], step["step"])
    if present and props.get("check_stdout") and printed.strip() != (props.get("stdout") or "").strip():
        present = False  # what it reads is not what the state holds: made again by the next update
    return ReadResult(id_, props) if present else ReadResult(None, {})


class _CommandProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        out, err = run_script(
            props["connection"],
            props["create"],
            props.get("environment") or {},
            props["label"],
            **_step(props, "create"),
        )
        return CreateResult(id_=uuid.uuid4().hex, outs={**props, "stdout": out, "stderr": err})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        keys = ("create", "update", "delete", "check", "environment", "triggers", "connection", "label")
        return in_place_diff(olds, news, keys)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if not props.get("check"):
            return ReadResult(id_, props)
        return _read_back(id_, props, props["check"])

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        script = news.get("update")
        if not script or news.get("triggers") == olds.get("triggers"):
            # Only metadata (scripts, label, connection, credentials) changed: nothing to run.
            return UpdateResult(outs={**news, "stdout": olds.get("stdout", ""), "stderr": olds.get("stderr", "")})
        out, err = run_script(
            news["connection"], script, news.get("environment") or {}, news["label"], **_step(news, "update")
        )
        return UpdateResult(outs={**news, "stdout": out, "stderr": err})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        if props.get("delete"):
            run_script(
                props["connection"],
                props["delete"],
                props.get("environment") or {},
                props["label"],
                **_step(props, "delete"),
            )


class _CopyProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        upload(props["connection"], props["source"], props["remote_path"], props["label"], **_step(props, "upload"))
        return CreateResult(id_=uuid.uuid4().hex, outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        diff = in_place_diff(olds, news, ("source", "remote_path", "sha256", "triggers", "connection", "label"))
        # A new destination is a new file: written first, the old one removed after.
        replaces = [k for k in ("remote_path",) if olds.get(k) != news.get(k)]
        return DiffResult(changes=diff.changes, replaces=replaces, delete_before_replace=False)

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        if not props.get("sha256"):
            return ReadResult(id_, props)
        path, sha = shlex.quote(props["remote_path"]), props["sha256"]
        check = (
            f'if [[ "$(sha256sum {path} 2>/dev/null | cut -d" " -f1)" == {sha} ]]; then '
            f"echo {shlex.quote(CHECK_PRESENT)}; "
            f'else echo "{CHECK_ABSENT}{props["remote_path"]} is missing or changed on $(hostname)"; fi\n'
        )
        return _read_back(id_, props, check)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if news.get("triggers") != olds.get("triggers") or news.get("source") != olds.get("source"):
            upload(news["connection"], news["source"], news["remote_path"], news["label"], **_step(news, "upload"))
        return UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        run_script(
            props["connection"],
            f"rm -f {shlex.quote(props['remote_path'])}\n",
            {},
            props["label"],
            step=_step(props, "delete")["step"],
            timeout_s=COMMAND_MARGIN_S,
        )


def connection(
    host: str,
    port: int,
    user: str,
    private_key: pulumi.Input[str],
    host_key: str,
    dial_timeout_s: int = 60,
    private_key_passphrase: pulumi.Input[str] | None = None,
) -> dict[str, Any]:
    """Connection settings, named as pulumi-command's ConnectionArgs (the policies read them).
    ``private_key_passphrase`` (a Pulumi secret) decrypts a passphrase-protected key."""
    conn = {
        "host": host,
        "port": port,
        "user": user,
        "privateKey": private_key,
        "hostKey": host_key,
        "dialTimeout": dial_timeout_s,
        "perDialTimeout": min(10, max(1, dial_timeout_s)),
    }
    if private_key_passphrase is not None:
        conn["privateKeyPassphrase"] = pulumi.Output.secret(private_key_passphrase)
    return conn


class Command(pulumi.dynamic.Resource):
    """A script run on a host over SSH (see the module docstring for its lifecycle)."""

    stdout: pulumi.Output[str]
    stderr: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        connection: dict[str, Any],
        create: pulumi.Input[str],
        label: str,
        update: pulumi.Input[str] | None = None,
        delete: pulumi.Input[str] | None = None,
        environment: Mapping[str, pulumi.Input[str]] | None = None,
        triggers: list[Any] | None = None,
        secret_stdout: bool = False,
        timeout_s: int | None = None,
        check: pulumi.Input[str] | None = None,
        check_stdout: bool = False,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """``timeout_s``: the deadline of each run once connected (default
        ``DEFAULT_COMMAND_TIMEOUT_S``; callers derive it with :func:`step_deadline`).
        ``check``: the read-back run on refresh (prints a verdict, see components.contract);
        with ``check_stdout`` the output before the verdict must also equal ``stdout``."""
        secret = ["connection", "environment", *(["stdout"] if secret_stdout else [])]
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=secret))
        super().__init__(
            _CommandProvider(),
            name,
            {
                "kind": "edgefleet:remote:Command",
                "label": label,
                "connection": connection,
                "create": create,
                "update": update,
                "delete": delete,
                "check": check,
                "check_stdout": check_stdout,
                "environment": environment or {},
                "triggers": triggers or [],
                "step": name,
                "timeout": timeout_s,
                "stdout": None,
                "stderr": None,
            },
            opts,
        )


class CopyToRemote(pulumi.dynamic.Resource):
    """A local file copied to a host (re-copied when ``triggers`` change)."""

    def __init__(
        self,
        name: str,
        *,
        connection: dict[str, Any],
        source: str,
        remote_path: str,
        label: str,
        triggers: list[Any] | None = None,
        timeout_s: int | None = None,
        sha256: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        """``timeout_s``: the deadline of the transfer once connected (default: from the file's
        size, :func:`upload_deadline`). ``sha256``: the file's digest, read back on refresh."""
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["connection"]))
        super().__init__(
            _CopyProvider(),
            name,
            {
                "kind": "edgefleet:remote:CopyToRemote",
                "label": label,
                "connection": connection,
                "source": source,
                "remote_path": remote_path,
                "sha256": sha256,
                "triggers": triggers or [],
                "step": name,
                "timeout": timeout_s,
            },
            opts,
        )
