"""Building blocks of the rendered bash scripts: quoting, the function library, here-documents.

Rendered scripts are bash (``set -euo pipefail``, shellcheck-clean), idempotent, bounded in
time, and never carry a secret: a secret reaches a host only as an environment variable of the
remote command and is written to a 0600 file without being echoed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from components.distributions.templating import fill

ARTIFACT_VERIFY_EXIT = 3  # a checksum mismatch is told apart from other failures
# The library: bash functions a script includes by name, each from templates/lib-<name>.sh.
LIBRARY = ("log", "root", "verify_artifact", "arch", "files", "secret", "sysctl", "wait", "kubelet_health", "procs")


def q(value: object) -> str:
    """One shell word."""
    return shlex.quote(str(value))


def _library(name: str) -> str:
    values = {"EXIT": ARTIFACT_VERIFY_EXIT} if name == "verify_artifact" else {}
    return "\n" + fill(f"lib-{name.replace('_', '-')}.sh", **values)


LIB: dict[str, str] = {name: _library(name) for name in LIBRARY}


@dataclass(frozen=True)
class Script:
    """A rendered bash script: header, library functions, variables, body."""

    purpose: str
    host: str | None  # None: the host name is taken at run time
    lib: tuple[str, ...] = ("log",)
    variables: tuple[tuple[str, str], ...] = ()

    def render(self, body: str) -> str:
        head = [
            "#!/usr/bin/env bash",
            *(f"# {line}".rstrip() for line in self.purpose.strip().splitlines()),
            "set -euo pipefail",
            "umask 022",
        ]
        head.append(f"HOST={q(self.host)}" if self.host else 'HOST="$(hostname)"')
        head += [f"{k}={v}" for k, v in self.variables]
        needed = ["log", *(name for name in self.lib if name != "log")]
        libs = "".join(LIB[name] for name in dict.fromkeys(needed))
        return "\n".join(head) + "\n" + libs + "\n" + body.strip("\n") + "\n"


def heredoc_file(path: str, content: str, mode: int) -> str:
    """A ``put_file`` call carrying ``content`` verbatim in a quoted here-document."""
    if not content.endswith("\n"):
        content += "\n"
    delim = "EDGEFLEET_EOF"
    while re.search(rf"^{delim}$", content, re.M):
        delim += "_"
    return f"put_file {q(path)} {mode:04o} <<'{delim}'\n{content}{delim}\n"


def ere_literal(path: str) -> str:
    """A path as a bash regular expression matching it literally."""
    return "".join("\\^" if c == "^" else f"[{c}]" if c in ".[]()*+?{}|$\\" else c for c in path)


def ready_function(command: str) -> str:
    """``local_ready``: the distribution's readiness test, polled by ``wait_for``."""
    return f"# shellcheck disable=SC2329 # called through wait_for\nlocal_ready() {{ {command}; }}\n"


def wait_ready_lines(what: str, timeout_s: int) -> str:
    """Wait (bounded) for ``local_ready``; on timeout show the service's last log lines and
    fail naming the host."""
    return f"""if ! wait_for {int(timeout_s)} "{what}" local_ready; then
  svc_logs
  die "{what} on $HOST is not ready after {int(timeout_s)}s (fix: see $(svc_hint))"
fi
log "{what} is ready"
"""


def render_cat(path: str, what: str, host: str) -> str:
    """Print one file and nothing else (stdout carries only the file)."""
    return Script(f"Print the {what} of {host}; only the file goes to stdout.", host).render(f"""
[[ -s {q(path)} ]] || die "{path} does not exist (fix: install the distribution on {host} first)"
cat -- {q(path)}
""")
