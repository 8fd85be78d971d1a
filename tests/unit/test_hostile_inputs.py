"""Hostile inventory strings (quotes, ``$()``, backticks, newlines, NUL, ``../``, unicode, very
long values) in every field that reaches a host: each is either refused with a
``file: field: ... (fix: ...)`` line, or every script, unit and configuration file rendered
for every distribution and service manager carries it only as inert data (scripts parse with
``bash -n``, TOML with tomllib, YAML with yaml.safe_load, units keep their lines, service
command lines round-trip exactly through systemd's, OpenRC's and bash's quoting)."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import tomllib
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.distributions import DistributionError, driver_for
from components.distributions.formats import toml_str
from components.distributions.units import Service
from components.host import NodeSteps
from components.inventory import InventoryError, load_inventory
from components.topology import local_artifacts, node_spec, ordered_hosts

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
SHA = "ab" * 32
CANARY = Path(f"/tmp/edgefleet-hostile-canary-{os.getpid()}")
PIECES = [
    '"',
    "'",
    f"$(touch {CANARY})",
    f"`touch {CANARY}`",
    "\n",
    "\r",
    "\x00",
    "\x7f",
    "../",
    "é",
    "\u202e",
    "\u2028",
    "%n",
    "$HOME",
    "${X}",
    "\\",
    '\\"',
    ";",
    " ",
    "\t",
    "#",
    "=",
    ",",
    ":",
    "/",
    "[",
    "]",
    "{",
    "}",
    "*",
    "..",
    "-",
    ".",
    "x" * 300,
    "ExecStartPre=/bin/sh",
]
hostile = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), min_size=1, max_size=6).map("".join)

VERSIONS = {"k3s": "v1.33.4+k3s1", "k0s": "v1.33.4+k0s.0", "microshift": "4.19.0"}
BINARY = {
    "k3s": ("k3s", "k3s"),
    "k0s": ("k0s", "k0s-v1.33.4+k0s.0-amd64"),
    "microshift": ("microshift", "microshift-4.19.0.x86_64.rpm"),
}
# Extra artifacts whose name is free after the driver's prefix (the name becomes a path on the host).
EXTRA = {
    "k3s": ("k3s-airgap-images", "images.tar.zst"),
    "k0s": ("k0s-airgap-bundle", "bundle.tar"),
    "microshift": ("microshift-", "net.rpm"),
}
MANAGERS = {
    "k3s": ("systemd", "openrc", "supervised"),
    "k0s": ("systemd", "openrc", "supervised"),
    "microshift": ("systemd",),
}


def base_site(dist: str, manager: str) -> dict[str, Any]:
    name, file = BINARY[dist]
    hosts = [{"name": "n1", "address": "10.0.0.11", "ssh": {"host_key": HOST_KEY, "private_key": {"config": "k"}}}]
    if dist != "microshift":
        hosts.append(
            {
                "name": "n2",
                "address": "10.0.0.12",
                "role": "agent",
                "ssh": {"host_key": HOST_KEY, "private_key": {"config": "k"}},
            }
        )
    return {
        "name": "s1",
        "topology": "gateway" if dist == "microshift" else "single-node",
        "distribution": {"name": dist, "version": VERSIONS[dist], "service_manager": manager},
        "artifacts": [{"name": name, "source": f"https://a.example/{file}", "sha256": SHA}],
        "hosts": hosts,
    }


def setter(
    path: str, put: Callable[[dict[str, Any], str, str], None]
) -> tuple[str, Callable[[dict[str, Any], str, str], None]]:
    return path, put


def _extra_artifact(
    site: dict[str, Any], dist: str, v: str, *, name: str | None = None, source: str | None = None
) -> None:
    prefix, file = EXTRA[dist]
    site["artifacts"].append(
        {
            "name": name if name is not None else prefix + v,
            "source": source if source is not None else f"https://a.example/{file}",
            "sha256": SHA,
        }
    )


FIELDS: dict[str, tuple[str, Callable[[dict[str, Any], str, str], None]]] = {
    "site-name": setter("sites[0].name", lambda s, d, v: s.update(name=v)),
    "host-name": setter("sites[0].hosts[0].name", lambda s, d, v: s["hosts"][0].update(name=v)),
    "address": setter("sites[0].hosts[0].address", lambda s, d, v: s["hosts"][0].update(address=v)),
    "label-key": setter("sites[0].hosts[0].labels", lambda s, d, v: s["hosts"][0].update(labels={v: "x"})),
    "label-value": setter("sites[0].hosts[0].labels", lambda s, d, v: s["hosts"][0].update(labels={"tier": v})),
    "taint": setter("sites[0].hosts[0].taints", lambda s, d, v: s["hosts"][0].update(taints=[f"k={v}:NoSchedule"])),
    "ssh-user": setter("sites[0].hosts[0].ssh.user", lambda s, d, v: s["hosts"][0]["ssh"].update(user=v)),
    "host-key-comment": setter(
        "sites[0].hosts[0].ssh.host_key", lambda s, d, v: s["hosts"][0]["ssh"].update(host_key=f"{HOST_KEY} {v}")
    ),
    "tls-san": setter("sites[0].tls_sans", lambda s, d, v: s.update(tls_sans=[v])),
    "registration-address": setter("sites[0].registration_address", lambda s, d, v: s.update(registration_address=v)),
    "registry-key": setter(
        "sites[0].registry_mirrors", lambda s, d, v: s.update(registry_mirrors={v: ["https://m.example"]})
    ),
    "mirror-endpoint": setter(
        "sites[0].registry_mirrors", lambda s, d, v: s.update(registry_mirrors={"docker.io": [v]})
    ),
    "mirror-host": setter(
        "sites[0].registry_mirrors", lambda s, d, v: s.update(registry_mirrors={"docker.io": [f"https://{v}:5000"]})
    ),
    "artifact-name": setter("sites[0].artifacts[1].name", lambda s, d, v: _extra_artifact(s, d, v)),
    "artifact-source": setter(
        "sites[0].artifacts[1].source",
        lambda s, d, v: _extra_artifact(s, d, v, name=EXTRA[d][0] + "x", source=f"https://a.example/{v}{EXTRA[d][1]}"),
    ),
    "extra-arg-value": setter(
        "sites[0].distribution.extra_args", lambda s, d, v: s["distribution"].update(extra_args=[f"--node-label=a={v}"])
    ),
    "extra-arg": setter("sites[0].distribution.extra_args", lambda s, d, v: s["distribution"].update(extra_args=[v])),
    "agent-arg": setter(
        "sites[0].distribution.agent_args", lambda s, d, v: s["distribution"].update(agent_args=["--debug", v])
    ),
    "version": setter(
        "sites[0].distribution.version", lambda s, d, v: s["distribution"].update(version=VERSIONS[d] + v)
    ),
    "cidr": setter("sites[0].network.cluster_cidr", lambda s, d, v: s.update(network={"cluster_cidr": v})),
}


# --- checks on what is rendered -------------------------------------------------------------------


def systemd_words(value: str) -> list[str]:
    """ExecStart= split and unescaped the way systemd does for the forms the unit uses."""
    words, i = [], 0
    while i < len(value):
        if value[i] == " ":
            i += 1
            continue
        quoted = value[i] == '"'
        i += quoted
        word = ""
        while i < len(value) and (value[i] != '"' if quoted else value[i] != " "):
            c = value[i]
            if c == "\\":
                word, i = word + value[i + 1], i + 2
            elif c in "%$":
                assert value[i + 1] == c, f"unescaped {c} in {value!r}: systemd would expand it"
                word, i = word + c, i + 2
            else:
                word, i = word + c, i + 1
        i += quoted
        words.append(word)
    return words


UNIT_KEYS = {
    "Description",
    "Wants",
    "After",
    "WantedBy",
    "Type",
    "EnvironmentFile",
    "KillMode",
    "Delegate",
    "User",
    "LimitNOFILE",
    "LimitNPROC",
    "LimitCORE",
    "TasksMax",
    "TimeoutStartSec",
    "Restart",
    "RestartSec",
    "ExecStartPre",
    "ExecStart",
}


def check_systemd(unit: str, argv: tuple[str, ...]) -> None:
    logical = unit.replace(" \\\n    ", " ").split("\n")
    keys = [ln.split("=", 1)[0] for ln in logical if ln and not ln.startswith("[")]
    assert set(keys) == UNIT_KEYS and keys.count("ExecStartPre") == 2 and keys.count("ExecStart") == 1, keys
    (exec_start,) = [ln.split("=", 1)[1] for ln in logical if ln.startswith("ExecStart=")]
    assert systemd_words(exec_start) == list(argv)


def bash_words(script: str, tmp: Path) -> list[str]:
    """Run ``script`` (which leaves the words in ARGS) and return them."""
    path = tmp / "words.sh"
    path.write_text(script + '\nprintf "%s\\0" "${ARGS[@]}"\n')
    out = subprocess.run(["bash", str(path)], capture_output=True, check=True, timeout=30).stdout.decode()
    assert not CANARY.exists(), "a rendered value ran as a command"
    return out.split("\0")[:-1]


def check_openrc(script: str, argv: tuple[str, ...], tmp: Path) -> None:
    # openrc-run sources the file, then runs `eval supervise-daemon ... -- $command_args`.
    words = bash_words(
        script + '\nsuffix=" >>/var/log/${name}.log 2>&1"\n[[ "$command_args" == *"$suffix" ]] || exit 9\n'
        'set -f\neval "ARGS=(${command_args%"$suffix"})"',
        tmp,
    )
    assert [script.split("command=", 1)[1].split("\n", 1)[0].strip("'"), *words] == list(argv)


def check_supervisor(script: str, argv: tuple[str, ...], tmp: Path) -> None:
    cmd = script[script.index("\nCMD=(") + 1 : script.index("\nSELF=")]
    assert bash_words(cmd + '\nARGS=("${CMD[@]}")', tmp) == list(argv)


def check_service(svc: Service, tmp: Path) -> None:
    for path, (content, _) in svc.files().items():
        if svc.manager == "systemd":
            check_systemd(content, svc.argv)
        elif svc.manager == "openrc" and path.startswith("/etc/init.d/"):
            check_openrc(content, svc.argv, tmp)
        elif svc.manager == "supervised":
            check_supervisor(content, svc.argv, tmp)


def check_config(path: str, content: str) -> None:
    if path.endswith((".yaml", ".yml")):
        yaml.safe_load(content)
    elif path.endswith(".toml") or "registries.conf.d" in path:
        tomllib.loads(content)


def bash_n(scripts: list[str], tmp: Path) -> None:
    files = []
    for i, text in enumerate(scripts):
        (tmp / f"s{i}.sh").write_text(text)
        files.append(str(tmp / f"s{i}.sh"))
    out = subprocess.run(
        ["bash", "-c", 'for f; do bash -n "$f" 2>&1 || echo "BAD $f"; done', "_", *files],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "BAD" not in out, out


def render_everything(path: Path, tmp: Path) -> None:
    """Every script, unit and configuration file of every host of the inventory."""
    loaded = load_inventory(path, check_files=False)
    for site in loaded.inventory.sites:
        driver = driver_for(site.distribution.name)
        module = importlib.import_module(f"components.distributions.{site.distribution.name}")
        hosts = ordered_hosts(site)
        scripts: list[str] = []
        for host in hosts:
            node = node_spec(site, host, hosts[0])
            arts = [a.for_driver() for a in local_artifacts(site, host, loaded.base)]
            steps = NodeSteps(driver, node, arts, joined=not node.first_server)
            scripts += [
                steps.install(),
                steps.ready(node.host),
                driver.render_uninstall(node),
                driver.render_fetch_kubeconfig(node),
                driver.render_drain(node.host),
                driver.render_remove_node(node.host),
            ]
            scripts += [s for s in [driver.render_join_token(node)] if s]
            for p, (content, _) in driver.config_files(node).items():
                check_config(p, content)
                if p.endswith(".sh"):
                    scripts.append(content)
            if site.distribution.name != "microshift":  # MicroShift's RPM ships its unit
                check_service(module.service(node), tmp)
        bash_n(scripts, tmp)


# --- the property -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # errors then name the inventory as unit.yaml


@pytest.mark.parametrize("field", sorted(FIELDS))
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(value=hostile, dist=st.sampled_from(sorted(VERSIONS)), data=st.data())
def test_a_hostile_value_is_refused_or_inert(
    field: str, value: str, dist: str, data: st.DataObject, tmp_path: Path
) -> None:
    where, put = FIELDS[field]
    site = base_site(dist, data.draw(st.sampled_from(MANAGERS[dist])))
    put(site, dist, value)
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump({"fleet": "unit", "environment": "prod", "sites": [site]}, allow_unicode=False))
    try:
        render_everything(path, tmp_path)
    except InventoryError as err:
        assert err.problems and any(line.startswith(f"unit.yaml: {where}: ") for line in err.problems), err.problems
        for line in err.problems:
            assert line.startswith("unit.yaml: ") and "(fix: " in line, line
            assert not re.search(r"[\x00-\x1f\x7f]", line), line
    except DistributionError as err:  # the inventory let through what a renderer refuses
        pytest.fail(f"{field}={value!r} passed the inventory but the driver refused it: {err}")


# --- quoting holds on its own, whatever the allow-lists let through ------------------------------------


def has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


printable = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    args=st.lists(
        st.one_of(printable, st.sampled_from(PIECES).filter(lambda p: not has_control(p))), min_size=1, max_size=4
    )
)
def test_every_service_manager_keeps_arguments_as_data(args: list[str], tmp_path: Path) -> None:
    for manager in ("systemd", "openrc", "supervised"):
        check_service(
            Service("k3s", manager, ("/usr/local/bin/k3s", "server", *args), "Lightweight Kubernetes"), tmp_path
        )


@given(arg=st.text(min_size=1, max_size=20).filter(has_control))
def test_control_characters_never_reach_a_service_definition(arg: str) -> None:
    for manager in ("systemd", "openrc", "supervised"):
        with pytest.raises(DistributionError, match="control character"):
            Service("k3s", manager, ("/usr/local/bin/k3s", "server", arg), "K3s").files()


@given(value=st.text())
def test_toml_strings_hold_any_text(value: str) -> None:
    assert tomllib.loads(f"k = {toml_str(value)}\n") == {"k": value}


def test_the_injections_of_the_report_are_refused(tmp_path: Path) -> None:
    """The concrete attacks: a label that runs a command from an OpenRC init script, a quote
    breaking out of command_args, a newline adding an ExecStartPre= line, a registry key
    writing outside certs.d, an artifact name placing a file anywhere."""
    cases = [
        ("extra-arg-value", "$(id)"),
        ("extra-arg", '--node-label=a\\"'),
        ("agent-arg", "--debug\nExecStartPre=/bin/sh"),
        ("registry-key", "../../../../etc/cron.d"),
        ("registry-key", 'docker.io"\n[x]'),
        ("artifact-name", "/../../../etc/x"),
        ("tls-san", "a b"),
        ("mirror-endpoint", 'http://m.example/"'),
    ]
    for field, value in cases:
        where, put = FIELDS[field]
        site = base_site("k3s", "openrc")
        put(site, "k3s", value)
        path = tmp_path / "unit.yaml"
        path.write_text(yaml.safe_dump({"fleet": "unit", "environment": "prod", "sites": [site]}))
        with pytest.raises(InventoryError) as info:
            render_everything(path, tmp_path)
        assert any(line.startswith(f"unit.yaml: {where}: ") for line in info.value.problems), (
            field,
            info.value.problems,
        )


def test_the_base_sites_render_and_pass_every_check(tmp_path: Path) -> None:
    """The property above is not vacuous: benign values are accepted and fully rendered."""
    for dist in VERSIONS:
        for manager in MANAGERS[dist]:
            site = base_site(dist, manager)
            FIELDS["label-value"][1](site, dist, "edge-1")
            FIELDS["registry-key"][1](site, dist, "registry.local:5000")
            FIELDS["artifact-name"][1](site, dist, "-amd64")
            path = tmp_path / "unit.yaml"
            path.write_text(yaml.safe_dump({"fleet": "unit", "environment": "prod", "sites": [site]}))
            render_everything(path, tmp_path)
