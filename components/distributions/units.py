"""A distribution's long-running process under systemd, OpenRC, or the pid-file supervisor of
hosts without an init system: its service definition and the bash functions that drive it."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from components.distributions.base import DistributionError, ServiceManager
from components.distributions.bash import q
from components.distributions.templating import fill

SUPERVISE_DIR = "/usr/local/lib/edgefleet"
PID_DIR = "/run/edgefleet"


@dataclass(frozen=True)
class Service:
    """A long-running distribution process under one of the supported service managers."""

    name: str  # unit / init script name, e.g. k3s or k3s-agent
    manager: ServiceManager
    argv: tuple[str, ...]  # the full command line
    description: str
    notify: bool = False  # systemd Type=notify (the process reports readiness)
    stop_timeout_s: int = 60

    @property
    def log_file(self) -> str:
        return f"/var/log/{self.name}.log"

    @property
    def supervisor(self) -> str:
        return f"{SUPERVISE_DIR}/{self.name}-supervise"

    @property
    def pid_file(self) -> str:
        return f"{PID_DIR}/{self.name}.pid"

    def unit_path(self) -> str:
        return {
            "systemd": f"/etc/systemd/system/{self.name}.service",
            "openrc": f"/etc/init.d/{self.name}",
            "supervised": self.supervisor,
        }[self.manager]

    def files(self) -> dict[str, tuple[str, int]]:
        """The service definition for the manager, as path -> (content, mode)."""
        for arg in self.argv:
            # No manager can carry these as data: systemd ends the line, a shell drops NUL.
            if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in arg):
                raise DistributionError(
                    f"{self.name}.argv",
                    f"{arg!r} holds a control character",
                    "give flags without newlines or other control characters",
                )
        if self.manager == "systemd":
            return {self.unit_path(): (self._systemd_unit(), 0o644)}
        if self.manager == "openrc":
            logrotate = f"{self.log_file} {{\n\tmissingok\n\tnotifempty\n\tcopytruncate\n}}\n"
            return {
                self.unit_path(): (self._openrc_script(), 0o755),
                f"/etc/logrotate.d/{self.name}": (logrotate, 0o644),
            }
        return {
            self.supervisor: (
                render_supervisor(
                    self.name, self.argv, self.pid_file, self.log_file, stop_timeout_s=self.stop_timeout_s
                ),
                0o755,
            )
        }

    def _systemd_unit(self) -> str:
        # The upstream installer's unit: KillMode=process keeps pods running across restarts.
        return fill(
            "unit.service",
            DESCRIPTION=self.description,
            TYPE="notify" if self.notify else "exec",
            EXEC_START=" \\\n    ".join(systemd_quote(a) for a in self.argv),
        )

    def _openrc_script(self) -> str:
        # openrc-run sources this file, then its start function runs `eval ... $command_args`:
        # the value is a literal (single-quoted) string of shell-quoted words, so neither the
        # sourcing nor the eval can expand anything in an argument.
        args = q(" ".join(q(a) for a in self.argv[1:]) + f" >>{self.log_file} 2>&1")
        return fill("init.openrc", NAME=self.name, COMMAND=q(self.argv[0]), COMMAND_ARGS=args, LOG_FILE=self.log_file)

    def shell(self) -> str:
        """Bash functions svc_running / svc_start / svc_restart / svc_stop / svc_remove /
        svc_hint / svc_logs, and svc_apply (start, or restart when $CHANGED; otherwise leave
        the service alone)."""
        if self.manager == "systemd":
            funcs = fill(
                "svc-systemd.sh", NAME=q(self.name), UNIT=q(self.unit_path()), STOP_TIMEOUT=self.stop_timeout_s + 30
            )
        elif self.manager == "openrc":
            funcs = fill(
                "svc-openrc.sh",
                NAME=q(self.name),
                UNIT=q(self.unit_path()),
                STOP_TIMEOUT=self.stop_timeout_s + 30,
                LOG_FILE=q(self.log_file),
            )
        else:
            funcs = fill(
                "svc-supervised.sh", SUPERVISOR=q(self.supervisor), PID_FILE=q(self.pid_file), LOG_FILE=q(self.log_file)
            )
        return "\n" + funcs + fill("svc-apply.sh", NAME=self.name)


def systemd_quote(arg: str) -> str:
    """One ExecStart= word: systemd expands ``%`` specifiers and ``$`` variables and splits at
    whitespace; a double-quoted word with those escaped is taken literally."""
    if re.fullmatch(r"[A-Za-z0-9_@+=:,./-]+", arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_supervisor(
    name: str, argv: Sequence[str], pid_file: str, log_file: str, *, stop_timeout_s: int = 60, restart_delay_s: int = 5
) -> str:
    """A pid-file supervisor for hosts without an init system (``start|stop|restart|status``).

    ``start`` launches a respawn loop in its own session (setsid + nohup, all output to the
    log file) and does nothing when the loop is already alive. ``stop`` signals the whole
    process group and waits at most ``stop_timeout_s`` before killing it. Processes that
    leave the group on purpose (container shims) keep running, as under systemd's
    KillMode=process.
    """
    # Commas inside one element are meant (e.g. --labels=a=b,c=d): quote those explicitly.
    cmd = " ".join("'" + a.replace("'", "'\\''") + "'" if "," in a else q(a) for a in argv)
    return fill(
        "supervisor.sh",
        NAME=q(name),
        SUPERVISOR=f"{SUPERVISE_DIR}/{name}-supervise",
        PIDFILE=q(pid_file),
        LOGFILE=q(log_file),
        STOP_TIMEOUT=int(stop_timeout_s),
        RESTART_DELAY=int(restart_delay_s),
        CMD=cmd,
    )
