"""components.remote against an SSH server on loopback (paramiko's server side): the exact
command lines (root's bash or sudo), scripts and secrets on stdin only, uploads checked by
sha256, and deadlines that end a step on a host that stops answering or drops."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from components import remote
from components.remote import RemoteError

LABEL = "site 'unit' host 'h1' (127.0.0.1)"
SUDO = "sudo -n /bin/bash -s"


def openssh_private(key: Any, password: bytes | None = None) -> str:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption).decode()


def public_base64(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
        .split()[1]
    )


@dataclass
class Exec:
    """One command the server received: its exact command line and what came on stdin."""

    command: str
    stdin: bytes = b""


class StubSftp(paramiko.SFTPServerInterface):
    """SFTP on this machine's file system; ``.`` is the fake user's home."""

    host: FakeHost

    def __init__(self, server: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.host = server

    def canonicalize(self, path: str) -> str:
        return str(self.host.home) if path in (".", "") else os.path.normpath(path)

    def open(self, path: str, flags: int, attr: Any) -> Any:
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0), 0o600)
        handle = paramiko.SFTPHandle(flags)
        handle.filename = path
        handle.writefile = handle.readfile = os.fdopen(
            fd, "r+b" if flags & os.O_RDWR else ("wb" if flags & os.O_WRONLY else "rb")
        )
        host = self.host

        def write(offset: int, data: bytes) -> int:
            if host.on_sftp_write is not None:
                data = host.on_sftp_write(data)
            handle.writefile.seek(offset)
            handle.writefile.write(data)
            handle.writefile.flush()
            return paramiko.SFTP_OK

        handle.write = write
        return handle

    def stat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    lstat = stat

    def mkdir(self, path: str, attr: Any) -> int:
        try:
            os.mkdir(path, attr.st_mode if attr.st_mode is not None else 0o777)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        self.host.sftp_ops.append(("mkdir", path))
        return paramiko.SFTP_OK

    def chattr(self, path: str, attr: Any) -> int:
        if attr.st_mode is not None:
            os.chmod(path, attr.st_mode)
        self.host.sftp_ops.append(("chmod", path))
        return paramiko.SFTP_OK

    def posix_rename(self, old: str, new: str) -> int:
        os.replace(old, new)
        return paramiko.SFTP_OK


class FakeHost(paramiko.ServerInterface):
    """An SSH server on loopback. Each exec is recorded, then answered by ``behaviour``:
    "run" runs the script with this machine's bash (the command line is only recorded),
    "hang" reads stdin and never answers, "drop" reads stdin and closes the connection,
    or a function (Exec) -> (exit status, stdout, stderr)."""

    def __init__(self, home: Path, client_key: Any) -> None:
        self.home = home
        self.client_public = public_base64(client_key)
        self.host_key = paramiko.ECDSAKey.generate()
        self.behaviour: str | Callable[[Exec], tuple[int, bytes, bytes]] = "run"
        # "exit-first": the exit status goes before the output (as sshd may send it);
        # "held-open": after output and exit status, no EOF for 30 s (a daemon holds the pipe).
        self.order = "output-first"
        self.execs: list[Exec] = []
        self.users: list[str] = []
        self.keepalives = 0
        self.sftp_ops: list[tuple[str, str]] = []
        self.on_sftp_write: Callable[[bytes], bytes] | None = None
        self.stop = threading.Event()
        self.transports: list[paramiko.Transport] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    # paramiko.ServerInterface
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: Any) -> int:
        self.users.append(username)
        return paramiko.AUTH_SUCCESSFUL if key.get_base64() == self.client_public else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: Any, command: bytes) -> bool:
        record = Exec(command.decode())
        self.execs.append(record)
        threading.Thread(target=self._answer, args=(channel, record), daemon=True).start()
        return True

    def check_global_request(self, kind: str, msg: Any) -> bool:
        if kind.startswith("keepalive@"):
            self.keepalives += 1
        return False

    # serving
    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(self.host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, StubSftp)
            self.transports.append(t)
            t.start_server(server=self)

    def _answer(self, channel: Any, record: Exec) -> None:
        while True:
            chunk = channel.recv(65536)
            if not chunk:
                break
            record.stdin += chunk
        behaviour = self.behaviour
        if behaviour == "hang":
            self.stop.wait()
            return
        if behaviour == "drop":
            channel.get_transport().close()
            return
        if behaviour == "run":
            # The fake host is this machine: run the script with its bash (as the command line
            # would, root's or elevated), whatever the recorded command line says.
            assert record.command in ("bash -s", SUDO), record.command
            proc = subprocess.run(["bash", "-s"], input=record.stdin, capture_output=True, timeout=60)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            code, out, err = behaviour(record)
        if self.order == "exit-first":
            channel.send_exit_status(code)
            time.sleep(1.5)  # past the client's 1 s poll, within its grace for the rest
        channel.sendall(out)
        channel.sendall_stderr(err)
        if self.order != "exit-first":
            channel.send_exit_status(code)
        if self.order == "held-open":
            self.stop.wait(30)
        channel.close()

    def known_host(self) -> str:
        return f"{self.host_key.get_name()} {self.host_key.get_base64()}"

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for t in self.transports:
            t.close()


@pytest.fixture
def client_key() -> Any:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def host(tmp_path: Path, client_key: Any):
    home = tmp_path / "home"
    home.mkdir()
    server = FakeHost(home, client_key)
    yield server
    server.close()


def conn(host: FakeHost, key: Any, user: str = "root", **extra: Any) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": host.port,
        "user": user,
        "privateKey": openssh_private(key),
        "hostKey": host.known_host(),
        "dialTimeout": 5,
        "perDialTimeout": 5,
        **extra,
    }


# --- command lines: root's bash, or bash through sudo; secrets only on stdin ------------------


def test_root_runs_scripts_with_bash_and_the_environment_on_stdin(host: FakeHost, client_key: Any) -> None:
    out, _ = remote.run_script(
        conn(host, client_key), 'echo "token is $JOIN_TOKEN"\n', {"JOIN_TOKEN": "s3cr3t x"}, LABEL
    )
    assert out == "token is s3cr3t x\n"
    (record,) = host.execs
    assert record.command == "bash -s"
    assert record.stdin == b"export JOIN_TOKEN='s3cr3t x'\necho \"token is $JOIN_TOKEN\"\n"
    assert host.users == ["root"]


def test_a_non_root_user_runs_every_script_through_sudo_with_the_secret_on_stdin(
    host: FakeHost, client_key: Any
) -> None:
    out, _ = remote.run_script(
        conn(host, client_key, user="edgeops"), 'echo "$JOIN_TOKEN"\n', {"JOIN_TOKEN": "s3cr3t"}, LABEL
    )
    assert out == "s3cr3t\n"
    (record,) = host.execs
    # Exactly the command the documented sudoers line allows; the secret is not on it.
    assert record.command == SUDO
    assert remote.sudoers_line("edgeops") == "edgeops ALL=(root) NOPASSWD: /bin/bash -s"
    assert record.stdin == f'export PATH={remote.ROOT_PATH}\nexport JOIN_TOKEN=s3cr3t\necho "$JOIN_TOKEN"\n'.encode()
    assert host.users == ["edgeops"]


def test_sudo_that_wants_a_password_fails_with_the_sudoers_line(host: FakeHost, client_key: Any) -> None:
    host.behaviour = lambda record: (1, b"", b"sudo: a password is required\n")
    with pytest.raises(RemoteError) as info:
        remote.run_script(conn(host, client_key, user="edgeops"), "true\n", {}, LABEL, step="h1-install/create")
    message = str(info.value)
    assert message.startswith(f"{LABEL}: step 'h1-install/create': user 'edgeops' cannot run /bin/bash -s through sudo")
    assert "edgeops ALL=(root) NOPASSWD: /bin/bash -s" in message


def test_a_failing_script_names_label_step_and_exit_status(host: FakeHost, client_key: Any) -> None:
    with pytest.raises(RemoteError) as info:
        remote.run_script(conn(host, client_key), "echo broken >&2; exit 3\n", {}, LABEL, step="h1-install/update")
    assert str(info.value) == f"{LABEL}: step 'h1-install/update': remote script exited 3:\nbroken"


def test_output_that_arrives_after_the_exit_status_is_read_whole(host: FakeHost, client_key: Any) -> None:
    # A read-back's verdict is its last line: a script whose exit status overtook its output
    # must not be read as having printed half of it.
    body = "".join(f"line {i}\n" for i in range(2000)) + "present\n"
    host.behaviour = lambda _exec: (0, body.encode(), b"")
    host.order = "exit-first"
    out, _ = remote.run_script(conn(host, client_key), "true\n", {}, LABEL, step="h1-kubeconfig/read")
    assert out == body


def test_a_pipe_held_open_after_the_exit_status_ends_the_read_after_a_grace(host: FakeHost, client_key: Any) -> None:
    host.behaviour = lambda _exec: (0, b"started\n", b"")
    host.order = "held-open"
    t0 = time.monotonic()
    out, _ = remote.run_script(conn(host, client_key), "true\n", {}, LABEL, step="h1-install/create")
    assert out == "started\n"
    assert time.monotonic() - t0 < remote.EOF_GRACE_S + 5, "returned soon after the grace, not at the deadline"


# --- deadlines and keepalives --------------------------------------------------------------------


@pytest.mark.parametrize("user", ["root", "edgeops"])
def test_a_host_that_stops_answering_mid_script_fails_within_the_deadline(
    host: FakeHost, client_key: Any, monkeypatch: pytest.MonkeyPatch, user: str
) -> None:
    monkeypatch.setattr(remote, "KEEPALIVE_S", 1)
    host.behaviour = "hang"
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        remote.run_script(
            conn(host, client_key, user=user), "sleep 600\n", {}, LABEL, step="h1-install/create", timeout_s=3
        )
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 8, elapsed
    assert str(info.value).startswith(
        f"{LABEL}: step 'h1-install/create' did not finish within its deadline of 3s; the connection was closed (fix: "
    )
    assert host.keepalives >= 1, "the client sent keepalives while the host was quiet"
    assert _closed_soon(host.transports[-1]), "the client closed the connection"


def _closed_soon(transport: paramiko.Transport) -> bool:
    for _ in range(50):
        if not transport.is_active():
            return True
        time.sleep(0.1)
    return False


def test_a_host_that_drops_the_connection_mid_script_fails_at_once(host: FakeHost, client_key: Any) -> None:
    host.behaviour = "drop"
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        remote.run_script(conn(host, client_key), "sleep 600\n", {}, LABEL, step="h1-node/update", timeout_s=30)
    assert time.monotonic() - started < 10
    assert str(info.value).startswith(f"{LABEL}: step 'h1-node/update': the connection ")


def test_the_command_resource_passes_its_name_and_deadline_to_every_run(host: FakeHost, client_key: Any) -> None:
    host.behaviour = "hang"
    props = {
        "kind": "edgefleet:remote:Command",
        "label": LABEL,
        "connection": conn(host, client_key),
        "create": "sleep 600\n",
        "environment": {},
        "step": "unit-h1-install",
        "timeout": 2,
    }
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"step 'unit-h1-install/create' did not finish within its deadline of 2s"):
        remote._CommandProvider().create(props)
    assert time.monotonic() - started < 7


# --- uploads: bounded, sha256-checked, installed into place by root ----------------------------


def _artifact(tmp_path: Path, size: int = 300_000) -> tuple[Path, str]:
    src = tmp_path / "k3s"
    src.write_bytes(os.urandom(size))
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_root_uploads_in_place_and_checks_the_sha256(host: FakeHost, client_key: Any, tmp_path: Path) -> None:
    src, _ = _artifact(tmp_path)
    dest = tmp_path / "var/lib/edgefleet/artifacts/abc-k3s"
    remote.upload(conn(host, client_key), str(src), str(dest), LABEL)
    assert dest.read_bytes() == src.read_bytes()
    assert [e.command for e in host.execs] == ["bash -s", "bash -s"]
    assert b"sha256sum <" in host.execs[-1].stdin
    assert sorted(p.name for p in dest.parent.iterdir()) == ["abc-k3s"], "no temporary file is left"


def test_a_non_root_user_uploads_to_its_home_and_root_installs_the_file(
    host: FakeHost, client_key: Any, tmp_path: Path
) -> None:
    src, sha = _artifact(tmp_path)
    dest = tmp_path / "var/lib/edgefleet/artifacts/abc-k3s"
    remote.upload(conn(host, client_key, user="edgeops"), str(src), str(dest), LABEL)
    assert dest.read_bytes() == src.read_bytes()
    assert [e.command for e in host.execs] == [SUDO]
    (staging,) = {path for op, path in host.sftp_ops if op == "mkdir"}
    assert Path(staging).parent == host.home and Path(staging).name.startswith(".edgefleet-upload-")
    assert ("chmod", staging) in host.sftp_ops
    script = host.execs[0].stdin.decode()
    assert f"install -m 0600 -- {staging}/abc-k3s " in script and sha in script
    assert not Path(staging).exists() and list(host.home.iterdir()) == []
    assert (dest.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("user", ["root", "edgeops"])
def test_an_upload_altered_on_the_way_is_refused_and_removed(
    host: FakeHost, client_key: Any, tmp_path: Path, user: str
) -> None:
    src, _ = _artifact(tmp_path)
    dest = tmp_path / "artifacts/abc-k3s"
    host.on_sftp_write = lambda data: bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(RemoteError, match="sha256 after upload is not"):
        remote.upload(conn(host, client_key, user=user), str(src), str(dest), LABEL, step="h1-upload-k3s/upload")
    assert list(dest.parent.iterdir()) == []


def test_an_upload_to_a_host_that_stops_answering_fails_within_the_deadline(
    host: FakeHost, client_key: Any, tmp_path: Path
) -> None:
    src, _ = _artifact(tmp_path, size=4_000_000)
    host.on_sftp_write = lambda data: (host.stop.wait(), data)[1]
    started = time.monotonic()
    with pytest.raises(RemoteError) as info:
        remote.upload(
            conn(host, client_key),
            str(src),
            str(tmp_path / "artifacts/k3s"),
            LABEL,
            step="h1-upload-k3s/upload",
            timeout_s=3,
        )
    assert time.monotonic() - started < 8
    assert str(info.value).startswith(f"{LABEL}: step 'h1-upload-k3s/upload' did not finish within its deadline of 3s")


def test_deadlines_derive_from_the_scripts_own_timeouts_and_the_file_size() -> None:
    assert remote.step_deadline(600) == 2 * 600 + remote.COMMAND_MARGIN_S
    assert remote.upload_deadline(0) == remote.COMMAND_MARGIN_S
    assert remote.upload_deadline(700 * 2**20) > 2800


def test_resources_carry_their_name_and_deadline_as_inputs() -> None:
    import pulumi

    class Mocks(pulumi.runtime.Mocks):
        inputs: ClassVar[dict[str, Any]] = {}

        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            Mocks.inputs[args.name] = dict(args.inputs)
            return f"{args.name}_id", dict(args.inputs)

        def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
            return {}

    import asyncio

    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(Mocks(), project="edgefleet", stack="unit", preview=False)
    c = remote.connection(
        "10.0.0.1",
        22,
        "edgeops",
        pulumi.Output.secret("KEY"),
        "ssh-ed25519 AAAA",
        private_key_passphrase=pulumi.Output.secret("pw"),
    )

    @pulumi.runtime.test
    def program() -> Any:
        remote.Command("h1-install", connection=c, create="true\n", label=LABEL, timeout_s=1500)
        remote.CopyToRemote("h1-upload-k3s", connection=c, source="/dev/null", remote_path="/x", label=LABEL)
        return pulumi.Output.from_input(True)

    program()
    assert (Mocks.inputs["h1-install"]["step"], Mocks.inputs["h1-install"]["timeout"]) == ("h1-install", 1500)
    assert (Mocks.inputs["h1-upload-k3s"]["step"], Mocks.inputs["h1-upload-k3s"].get("timeout")) == (
        "h1-upload-k3s",
        None,
    )


def test_the_placement_script_is_shellcheck_clean() -> None:
    script = remote._placement(
        "/home/edgeops/.edgefleet-upload-1/k3s",
        "/var/lib/edgefleet/artifacts/k3s.part-1",
        "/var/lib/edgefleet/artifacts/k3s",
        "ab" * 32,
        "/home/edgeops/.edgefleet-upload-1",
    )
    shellcheck = (
        Path(os.environ.get("VIRTUAL_ENV", Path(__file__).resolve().parents[2] / ".venv")) / "bin" / "shellcheck"
    )
    run = subprocess.run([str(shellcheck), "-s", "bash", "-"], input=script, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout
