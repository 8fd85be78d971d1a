"""Inventory loading: every bad inventory is refused with one ``file: field: message (fix: ...)``
line per problem and no traceback; good inventories load."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.inventory import InventoryError, LoadedInventory, artifact_sha256, expand_path, load_inventory

REPO = Path(__file__).resolve().parents[2]
INVENTORIES = Path(__file__).parent / "inventories"
BASE = (INVENTORIES / "base.yaml").read_text()
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
PRIVATE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
ARTIFACTS = {"k3s": b"k3s release binary", "kwok": b"kwok release binary", "other": b"another file"}


def lab_files(root: Path) -> Path:
    """The files inventories/lab.yaml names (``${EDGEFLEET_CACHE}`` = ``root``), plus the broken
    variants the bad cases point at. Returns ``root``."""

    def write(rel: str, content: str | bytes, mode: int = 0o644) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(mode)

    write("ssh/id_ed25519", PRIVATE_KEY, 0o600)
    write("ssh/id_world_readable", PRIVATE_KEY, 0o644)
    for host in ("single-1", "ha-agent", "ha-1", "ha-2", "ha-3", "gw-1"):
        write(f"hostkeys/{host}.pub", HOST_KEY + f" root@{host}\n")
    write("hostkeys/garbage.pub", "10.0.0.1 this is not a key\n")
    write("hostkeys/group-writable.pub", HOST_KEY + "\n", 0o664)
    write("hostkeys/world-writable.pub", HOST_KEY + "\n", 0o646)
    for name, content in ARTIFACTS.items():
        write(f"toolchain/{name}", content, 0o755)
    sums = {name: hashlib.sha256(content).hexdigest() for name, content in ARTIFACTS.items()}
    write("toolchain/SHA256SUMS", f"{sums['k3s']}  k3s\n{sums['kwok']}  *kwok\n")
    write("toolchain/OTHER-SHA256SUMS", f"{sums['other']}  other\n")
    write(
        "toolchain/stages.yaml", "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: Stage\nmetadata: {name: node-initialize}\n"
    )
    return root


@pytest.fixture
def unit_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with the lab files under ``files/`` (exported as ``EDGEFLEET_CACHE``)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEFLEET_CACHE", str(lab_files(tmp_path / "files")))
    return tmp_path


# --- the table of bad inventories ---------------------------------------------------------------


def replace(old: str, new: str) -> Callable[[str], str]:
    """One textual change of the base inventory (``old`` must occur exactly once)."""

    def mutate(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in base.yaml"
        return text.replace(old, new)

    return mutate


def line_of(fragment: str) -> int:
    """1-based line of ``fragment`` in the base inventory."""
    return BASE[: BASE.index(fragment)].count("\n") + 1


@dataclass(frozen=True)
class Bad:
    id: str
    mutate: Callable[[str], str]
    field: str  # what the line names after the file (a field path, a YAML position, "(top level)")
    phrase: str  # part of the message the user needs to see


STORE_1 = "{name: store-1, address: 10.0.1.10, ssh: {host_key: *hostkey}}"
HA_GPU_HEAD = "{name: ha-gpu, address: 10.0.0.21, role: agent, "
K3S_SUM = "sha256: 9e1b8c7d6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa9988776655"
KWOK = (
    "\n    simulated_nodes:\n      kwok: {name: kwok, source: https://artifacts.example.internal/kwok, "
    "sha256: " + "ab" * 32 + '}\n      stages: "${EDGEFLEET_CACHE}/toolchain/stages.yaml"'
)


def store_ssh(ssh: str) -> Callable[[str], str]:
    return replace(STORE_1, "{name: store-1, address: 10.0.1.10, ssh: {" + ssh + "}}")


def k3s_artifact(fields: str) -> Callable[[str], str]:
    return replace("source: https://artifacts.example.internal/k3s/v1.33.4+k3s1/k3s, " + K3S_SUM, fields)


BAD = [
    Bad(
        "bad-ip",
        replace("address: 10.0.0.13", "address: 10.0.0.300"),
        "sites[0].hosts[2].address",
        "'10.0.0.300' is not an IP address",
    ),
    Bad(
        "ha-with-2-servers",
        replace("{name: ha-3, address: 10.0.0.13,", "{name: ha-3, address: 10.0.0.13, role: agent,"),
        "sites[0].hosts",
        "topology 'ha' needs exactly 3 servers, found 2",
    ),
    Bad(
        "ha-with-4-servers",
        replace(HA_GPU_HEAD, "{name: ha-gpu, address: 10.0.0.21, role: server, "),
        "sites[0].hosts",
        "topology 'ha' needs exactly 3 servers, found 4",
    ),
    Bad(
        "single-node-with-2-servers",
        replace(STORE_1, STORE_1 + "\n      - {name: store-2, address: 10.0.1.11, ssh: {host_key: *hostkey}}"),
        "sites[1].hosts",
        "topology 'single-node' needs exactly 1 server, found 2",
    ),
    Bad(
        "gateway-with-2-hosts",
        replace(
            "{name: tower-gw, address: 10.0.2.2, ssh: {host_key: *hostkey}}",
            "{name: tower-gw, address: 10.0.2.2, ssh: {host_key: *hostkey}}\n"
            "      - {name: tower-agent, address: 10.0.2.3, role: agent, ssh: {host_key: *hostkey}}",
        ),
        "sites[2].hosts",
        "topology 'gateway' is one constrained host, found 2 host(s)",
    ),
    Bad(
        "duplicate-site-name",
        replace("- name: store\n", "- name: plant\n"),
        "sites[1].name",
        "site name 'plant' is already used by sites[0]",
    ),
    Bad(
        "duplicate-host-name-across-sites",
        replace("{name: store-1,", "{name: ha-1,"),
        "sites[1].hosts[0].name",
        "host name 'ha-1' is already used in site 'plant'",
    ),
    Bad(
        "duplicate-address",
        replace("address: 10.0.1.10", "address: 10.0.0.11"),
        "sites[1].hosts[0].address",
        "address 10.0.0.11 is already used by host 'ha-1'",
    ),
    Bad(
        "cidr-with-host-bits",
        replace("cluster_cidr: 10.42.0.0/16", "cluster_cidr: 10.42.0.1/16"),
        "sites[0].network.cluster_cidr",
        "'10.42.0.1/16' is not a valid CIDR",
    ),
    Bad(
        "cidr-not-a-network",
        replace("service_cidr: 10.43.0.0/16", "service_cidr: ten-43"),
        "sites[0].network.service_cidr",
        "'ten-43' is not a valid CIDR",
    ),
    Bad(
        "overlapping-cidrs",
        replace("service_cidr: 10.43.0.0/16", "service_cidr: 10.42.128.0/17"),
        "sites[0].network.service_cidr",
        "'10.42.128.0/17' overlaps cluster_cidr 10.42.0.0/16",
    ),
    Bad(
        "k3s-channel",
        replace("version: v1.33.4+k3s1}", "version: stable}"),
        "sites[0].distribution.version",
        "'stable' is not an exact k3s version",
    ),
    Bad(
        "k3s-latest",
        replace("version: v1.33.4+k3s1}", "version: latest}"),
        "sites[0].distribution.version",
        "'latest' is not an exact k3s version",
    ),
    Bad(
        "k0s-version-of-k3s",
        replace("version: v1.33.4+k0s.0}", "version: v1.33.4+k3s1}"),
        "sites[1].distribution.version",
        "'v1.33.4+k3s1' is not an exact k0s version",
    ),
    Bad(
        "microshift-ha",
        replace("{name: k3s, version: v1.33.4+k3s1}", "{name: microshift, version: 4.19.0}"),
        "sites[0].distribution.name",
        "MicroShift runs single-node only",
    ),
    Bad(
        "bad-sha256",
        replace(K3S_SUM, "sha256: 9E1B8C7D"),
        "sites[0].artifacts[0].sha256",
        "'9E1B8C7D' is not a sha256 hex digest",
    ),
    Bad(
        "artifact-without-checksum",
        replace(", " + K3S_SUM, ""),
        "sites[0].artifacts[0]",
        "exactly one of 'sha256' or 'sha256_from' must be set",
    ),
    Bad(
        "missing-host-key",
        replace(STORE_1, "{name: store-1, address: 10.0.1.10}"),
        "sites[1].hosts[0].ssh.host_key",
        "no SSH host key is pinned",
    ),
    Bad(
        "bad-host-key-text",
        store_ssh('host_key: "AAAAC3NzaC1lZDI1NTE5 root@store-1"'),
        "sites[1].hosts[0].ssh.host_key",
        "'AAAAC3NzaC1lZDI1NTE5 root@store-1' is not an OpenSSH public host key",
    ),
    Bad(
        "private-key-file-missing",
        store_ssh('host_key: *hostkey, private_key: {file: "${EDGEFLEET_CACHE}/ssh/id_absent"}'),
        "sites[1].hosts[0].ssh.private_key.file",
        "${EDGEFLEET_CACHE}/ssh/id_absent' is not a readable file",
    ),
    Bad(
        "private-key-world-readable",
        store_ssh('host_key: *hostkey, private_key: {file: "${EDGEFLEET_CACHE}/ssh/id_world_readable"}'),
        "sites[1].hosts[0].ssh.private_key.file",
        "${EDGEFLEET_CACHE}/ssh/id_world_readable' is readable by group or others (fix: chmod 600 ",
    ),
    Bad(
        "private-key-two-sources",
        store_ssh('host_key: *hostkey, private_key: {file: "${EDGEFLEET_CACHE}/ssh/id_ed25519", config: sshKey}'),
        "sites[1].hosts[0].ssh.private_key",
        "exactly one of 'file' or 'config' must be set",
    ),
    Bad(
        "host-key-file-missing",
        store_ssh('host_key_file: "${EDGEFLEET_CACHE}/hostkeys/absent.pub"'),
        "sites[1].hosts[0].ssh.host_key_file",
        "${EDGEFLEET_CACHE}/hostkeys/absent.pub' does not exist",
    ),
    Bad(
        "host-key-file-garbage",
        store_ssh('host_key_file: "${EDGEFLEET_CACHE}/hostkeys/garbage.pub"'),
        "sites[1].hosts[0].ssh.host_key_file",
        "${EDGEFLEET_CACHE}/hostkeys/garbage.pub' does not hold an OpenSSH public host key",
    ),
    Bad(
        "ssh-port-out-of-range",
        store_ssh("host_key: *hostkey, port: 70000"),
        "sites[1].hosts[0].ssh.port",
        "70000: Input should be less than or equal to 65535",
    ),
    Bad(
        "unknown-field",
        replace("topology: single-node\n", "topology: single-node\n    latency_clas: video\n"),
        "sites[1].latency_clas",
        "is not a known field",
    ),
    Bad(
        "unknown-topology",
        replace("topology: single-node", "topology: single"),
        "sites[1].topology",
        "'single' is not allowed (fix: use one of 'single-node', 'ha' or 'gateway')",
    ),
    Bad(
        "missing-distribution",
        replace("    distribution: {name: microshift, version: 4.19.0}\n", ""),
        "sites[2].distribution",
        "is required (fix: add this field)",
    ),
    Bad(
        "bad-host-name",
        replace("{name: tower-gw,", "{name: Tower_GW,"),
        "sites[2].hosts[0].name",
        "'Tower_GW' is not a valid host name",
    ),
    Bad(
        "bad-taint",
        replace('"nvidia.com/gpu=present:NoSchedule"', '"nvidia.com/gpu=present:Never"'),
        "sites[0].hosts[3].taints",
        "'nvidia.com/gpu=present:Never' is not a taint",
    ),
    Bad(
        "gpu-workload-without-gpu-host",
        replace("gpu: {vendor: nvidia, count: 1}, ", ""),
        "sites[0].workloads[0].gpu",
        "model 'quality-control' asks for a GPU but no host of site 'plant' declares one",
    ),
    Bad(
        "max-replicas-below-replicas",
        replace("max_replicas: 4", "max_replicas: 1"),
        "sites[0].workloads[0].max_replicas",
        "max_replicas 1 is below replicas 2",
    ),
    Bad(
        "disable-agent-without-nodes",
        replace("{name: k0s, version: v1.33.4+k0s.0}", "{name: k0s, version: v1.33.4+k0s.0, disable_agent: true}"),
        "sites[1].distribution.disable_agent",
        "site 'store' would have no node to run workloads",
    ),
    Bad(
        "simulated-nodes-in-prod",
        replace("    topology: single-node", "    topology: single-node" + KWOK),
        "sites[1].simulated_nodes",
        "simulated (kwok) nodes are for the lab only",
    ),
    Bad(
        "checksums-file-missing",
        k3s_artifact(
            "source: https://artifacts.example.internal/k3s, sha256_from: "
            '"${EDGEFLEET_CACHE}/toolchain/ABSENT-SHA256SUMS"'
        ),
        "sites[0].artifacts[0].sha256_from",
        "${EDGEFLEET_CACHE}/toolchain/ABSENT-SHA256SUMS' does not exist",
    ),
    Bad(
        "checksums-file-without-artifact",
        k3s_artifact(
            "source: https://artifacts.example.internal/k3s, sha256_from: "
            '"${EDGEFLEET_CACHE}/toolchain/OTHER-SHA256SUMS"'
        ),
        "sites[0].artifacts[0].sha256_from",
        "${EDGEFLEET_CACHE}/toolchain/OTHER-SHA256SUMS' lists no checksum for 'k3s'",
    ),
    Bad(
        "local-artifact-missing",
        k3s_artifact('source: "${EDGEFLEET_CACHE}/toolchain/k3s-absent", ' + K3S_SUM),
        "sites[0].artifacts[0].source",
        "${EDGEFLEET_CACHE}/toolchain/k3s-absent' does not exist",
    ),
    Bad(
        "invalid-yaml-tab",
        replace("    topology: gateway", "\ttopology: gateway"),
        f"line {line_of('    topology: gateway')}, column 1",
        "invalid YAML: found character '\\t' that cannot start any token",
    ),
    Bad(
        "invalid-yaml-unclosed-flow",
        replace(STORE_1, "{name: store-1, address: 10.0.1.10, ssh: {host_key: *hostkey}"),
        f"line {line_of(STORE_1) + 1}, column 5",
        "invalid YAML: expected ',' or '}', but got '<scalar>'",
    ),
    Bad(
        "top-level-not-a-mapping",
        lambda text: "- " + text.replace("\n", "\n  "),
        "(top level)",
        "expected a mapping with `fleet`, `environment` and `sites`",
    ),
    Bad(
        "empty-file",
        lambda text: "# nothing yet\n",
        "(top level)",
        "expected a mapping with `fleet`, `environment` and `sites`",
    ),
    Bad(
        "pull-secret-for-k0s",
        replace(
            "distribution: {name: k0s, version: v1.33.4+k0s.0}",
            "distribution: {name: k0s, version: v1.33.4+k0s.0, pull_secret: {config: ps}}",
        ),
        "sites[1].distribution.pull_secret",
        "k0s takes no pull secret (only MicroShift does)",
    ),
    # Every string that reaches a host accepts only its own syntax.
    Bad(
        "host-name-with-newline",
        replace("{name: tower-gw,", '{name: "tower-gw\\n",'),
        "sites[2].hosts[0].name",
        "'tower-gw\\n' is not a valid host name",
    ),
    Bad(
        "ipv6-scope-is-free-text",
        replace("address: 10.0.2.2", 'address: "fe80::1%$(reboot)"'),
        "sites[2].hosts[0].address",
        "'fe80::1%$(reboot)' is not an IP address",
    ),
    Bad(
        "label-key-with-command",
        replace("role: agent, gpu:", 'role: agent, labels: {"a$(id)": x}, gpu:'),
        "sites[0].hosts[3].labels",
        "'a$(id)' is not a Kubernetes label key",
    ),
    Bad(
        "label-value-with-quote",
        replace("role: agent, gpu:", "role: agent, labels: {tier: 'a\"b'}, gpu:"),
        "sites[0].hosts[3].labels",
        "label tier: 'a\"b' is not a Kubernetes label value",
    ),
    Bad(
        "taint-value-with-space",
        replace('"nvidia.com/gpu=present:NoSchedule"', '"gpu=a b:NoSchedule"'),
        "sites[0].hosts[3].taints",
        "'gpu=a b:NoSchedule' is not a taint",
    ),
    Bad(
        "tls-san-not-a-name",
        replace("    network: {cluster_cidr", '    tls_sans: ["api.plant; reboot"]\n    network: {cluster_cidr'),
        "sites[0].tls_sans",
        "'api.plant; reboot' is neither an IP address nor a DNS name",
    ),
    Bad(
        "registry-key-path-traversal",
        replace(
            "    network: {cluster_cidr",
            '    registry_mirrors: {"../../../../etc/cron.d": ["https://m.example"]}\n    network: {cluster_cidr',
        ),
        "sites[0].registry_mirrors",
        "'../../../../etc/cron.d' is not a registry name",
    ),
    Bad(
        "registry-key-toml-injection",
        replace(
            "    network: {cluster_cidr",
            '    registry_mirrors: {"docker.io\\"\\n[x]": ["https://m.example"]}\n    network: {cluster_cidr',
        ),
        "sites[0].registry_mirrors",
        "is not a registry name",
    ),
    Bad(
        "mirror-endpoint-not-a-url",
        replace(
            "    network: {cluster_cidr",
            '    registry_mirrors: {docker.io: ["https://m.example/\\"x"]}\n    network: {cluster_cidr',
        ),
        "sites[0].registry_mirrors",
        "registry docker.io: 'https://m.example/\"x' is not a mirror URL",
    ),
    Bad(
        "artifact-name-path-traversal",
        replace("- {name: k3s, arch: amd64", "- {name: ../../etc/k3s, arch: amd64"),
        "sites[0].artifacts[0].name",
        "'../../etc/k3s' is not an artifact name",
    ),
    Bad(
        "flag-with-command-substitution",
        replace(
            "{name: k3s, version: v1.33.4+k3s1}",
            '{name: k3s, version: v1.33.4+k3s1, extra_args: ["--debug", "--node-label=a=$(id)"]}',
        ),
        "sites[0].distribution.extra_args",
        "[1] '--node-label=a=$(id)' is not a k3s flag",
    ),
    Bad(
        "flag-with-newline",
        replace(
            "{name: k3s, version: v1.33.4+k3s1}",
            '{name: k3s, version: v1.33.4+k3s1, agent_args: ["--debug\\nExecStartPre=/bin/sh"]}',
        ),
        "sites[0].distribution.agent_args",
        "[0] '--debug\\nExecStartPre=/bin/sh' is not a k3s flag",
    ),
    Bad(
        "flag-disabling-secrets-encryption",
        replace(
            "{name: k3s, version: v1.33.4+k3s1}",
            '{name: k3s, version: v1.33.4+k3s1, extra_args: ["--secrets-encryption=false"]}',
        ),
        "sites[0].distribution.extra_args",
        "overrides --secrets-encryption, which edgefleet renders for Secrets encryption at rest (fix: remove the flag",
    ),
    Bad(
        "flag-widening-the-kubeconfig",
        replace(
            "{name: k3s, version: v1.33.4+k3s1}",
            '{name: k3s, version: v1.33.4+k3s1, extra_args: ["--write-kubeconfig-mode=0644"]}',
        ),
        "sites[0].distribution.extra_args",
        "overrides --write-kubeconfig-mode",
    ),
    Bad(
        "flag-allowing-anonymous-api-calls",
        replace(
            "{name: k3s, version: v1.33.4+k3s1}",
            '{name: k3s, version: v1.33.4+k3s1, extra_args: ["--kube-apiserver-arg=anonymous-auth=true"]}',
        ),
        "sites[0].distribution.extra_args",
        "overrides --kube-apiserver-arg=anonymous-auth",
    ),
    Bad(
        "agent-flag-off-kernel-protection",
        replace(
            "{name: k3s, version: v1.33.4+k3s1}",
            '{name: k3s, version: v1.33.4+k3s1, agent_args: ["--kubelet-arg=protect-kernel-defaults=false"]}',
        ),
        "sites[0].distribution.agent_args",
        "overrides --kubelet-arg=protect-kernel-defaults",
    ),
    Bad(
        "k0s-flag-replacing-kubelet-args",
        replace(
            "{name: k0s, version: v1.33.4+k0s.0}",
            '{name: k0s, version: v1.33.4+k0s.0, extra_args: ["--kubelet-extra-args=--v=2"]}',
        ),
        "sites[1].distribution.extra_args",
        "overrides --kubelet-extra-args",
    ),
    Bad(
        "microshift-flags",
        replace("{name: microshift, version: 4.19.0}", '{name: microshift, version: 4.19.0, extra_args: ["--debug"]}'),
        "sites[2].distribution.extra_args",
        "MicroShift takes its settings from config.yaml, not flags",
    ),
    Bad(
        "ssh-user-with-space",
        store_ssh('host_key: *hostkey, user: "root -oProxyCommand=x"'),
        "sites[1].hosts[0].ssh.user",
        "'root -oProxyCommand=x' is not a user name",
    ),
    Bad(
        "version-with-trailing-newline",
        replace("version: v1.33.4+k0s.0}", 'version: "v1.33.4+k0s.0\\n"}'),
        "sites[1].distribution.version",
        "is not an exact k0s version",
    ),
    Bad(
        "path-naming-another-variable",
        store_ssh('host_key_file: "${HOME}/.ssh/known"'),
        "sites[1].hosts[0].ssh.host_key_file",
        "'${HOME}/.ssh/known' names ${HOME}; inventory paths may use only ~ and ${EDGEFLEET_CACHE}",
    ),
    Bad(
        "host-key-file-group-writable",
        store_ssh('host_key_file: "${EDGEFLEET_CACHE}/hostkeys/group-writable.pub"'),
        "sites[1].hosts[0].ssh.host_key_file",
        "'${EDGEFLEET_CACHE}/hostkeys/group-writable.pub' is writable by group or others (fix: chmod go-w ",
    ),
    Bad(
        "host-key-file-world-writable",
        store_ssh('host_key_file: "${EDGEFLEET_CACHE}/hostkeys/world-writable.pub"'),
        "sites[1].hosts[0].ssh.host_key_file",
        "'${EDGEFLEET_CACHE}/hostkeys/world-writable.pub' is writable by group or others",
    ),
    Bad(
        "pull-secret-world-readable",
        replace(
            "distribution: {name: microshift, version: 4.19.0}",
            (
                "distribution: {name: microshift, version: 4.19.0, pull_secret: {file: "
                '"${EDGEFLEET_CACHE}/ssh/id_world_readable"}}'
            ),
        ),
        "sites[2].distribution.pull_secret.file",
        "${EDGEFLEET_CACHE}/ssh/id_world_readable' is readable by group or others (fix: chmod 600 ",
    ),
]


def refusal(path: Path) -> InventoryError:
    """The error loading ``path`` raises, checked for what every refusal shares."""
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    err = info.value
    text = str(err)
    assert text == "\n".join(err.problems)
    assert "Traceback" not in text and 'File "' not in text
    # Nothing chained: the engine shows the message alone.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    for line in err.problems:
        assert "\n" not in line
        assert line.endswith(")") and "(fix: " in line, line
    return err


def write(unit_dir: Path, text: str, name: str = "unit.yaml") -> Path:
    path = unit_dir / name
    path.write_text(text)
    return path


def test_base_inventory_is_valid(unit_dir: Path) -> None:
    loaded = load_inventory(write(unit_dir, BASE))
    assert [s.name for s in loaded.inventory.sites] == ["plant", "store", "tower"]


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_inventory_is_refused_with_field_and_fix(unit_dir: Path, bad: Bad) -> None:
    err = refusal(write(unit_dir, bad.mutate(BASE)))
    assert len(err.problems) == 1, err.problems
    (line,) = err.problems
    assert line.startswith(f"unit.yaml: {bad.field}: "), line
    assert bad.phrase in line, line


def test_the_table_covers_distinct_mutations() -> None:
    texts = {b.mutate(BASE) for b in BAD}
    assert len(texts) == len(BAD) >= 25
    assert BASE not in texts


def test_missing_file_names_the_path_and_the_config_value(unit_dir: Path) -> None:
    err = refusal(unit_dir / "sites" / "absent.yaml")
    assert err.problems == [
        "sites/absent.yaml: cannot read the inventory: No such file or directory "
        "(fix: check the `edgefleet:inventory` config value)"
    ]


def test_file_outside_the_working_directory_is_shown_in_full(
    unit_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "unit.yaml"
    elsewhere.write_text(BASE.replace("address: 10.0.0.13", "address: 10.0.0.300"))
    (line,) = refusal(elsewhere).problems
    assert line.startswith(f"{elsewhere}: sites[0].hosts[2].address: ")


def test_every_schema_problem_is_reported_at_once(unit_dir: Path) -> None:
    text = BASE
    for change in (
        replace("address: 10.0.0.13", "address: 10.0.0.300"),
        replace(K3S_SUM, "sha256: 1234"),
        replace("topology: gateway", "topology: gatway"),
    ):
        text = change(text)
    # In the order of the schema's fields (a site's artifacts come before its hosts).
    assert [line.split(": ")[1] for line in refusal(write(unit_dir, text)).problems] == [
        "sites[0].artifacts[0].sha256",
        "sites[0].hosts[2].address",
        "sites[2].topology",
    ]


def test_every_fleet_and_file_problem_is_reported_at_once(unit_dir: Path) -> None:
    text = BASE
    for change in (
        replace("address: 10.0.1.10", "address: 10.0.0.11"),
        replace("max_replicas: 4", "max_replicas: 1"),
        replace(
            "{name: tower-gw, address: 10.0.2.2, ssh: {host_key: *hostkey}}",
            (
                "{name: tower-gw, address: 10.0.2.2, ssh: {host_key: *hostkey, private_key: {file: "
                '"${EDGEFLEET_CACHE}/ssh/id_world_readable"}}}'
            ),
        ),
    ):
        text = change(text)
    problems = refusal(write(unit_dir, text)).problems
    assert [line.split(": ")[1] for line in problems] == [
        "sites[0].workloads[0].max_replicas",
        "sites[1].hosts[0].address",
        "sites[2].hosts[0].ssh.private_key.file",
    ]


def test_an_error_in_every_host_is_one_line_per_host(unit_dir: Path) -> None:
    text = BASE.replace("    private_key: {config: sshKeyFleet}\n", "")
    problems = refusal(write(unit_dir, text)).problems
    assert len(problems) == 6
    assert all(": no SSH private key reference (fix: " in p for p in problems)


def test_file_checks_can_be_skipped(unit_dir: Path) -> None:
    text = store_ssh('host_key: *hostkey, private_key: {file: "${EDGEFLEET_CACHE}/ssh/id_absent"}')(BASE)
    assert (
        load_inventory(write(unit_dir, text), check_files=False).inventory.sites[1].hosts[0].ssh.private_key is not None
    )


# --- good inventories ---------------------------------------------------------------------------


def test_shipped_prod_inventory_loads_with_file_checks() -> None:
    loaded = load_inventory(REPO / "sites" / "prod.yaml")
    inv = loaded.inventory
    assert (inv.fleet, inv.environment) == ("acme-edge", "prod")
    assert {s.name: s.topology for s in inv.sites} == {
        "plant-hamburg": "ha",
        "plant-lyon": "ha",
        "store-0114": "single-node",
        "store-0232": "single-node",
        "store-0307": "single-node",
        "tower-nord-17": "gateway",
    }
    # defaults.ssh reached every host; host keys are pinned inline and artifacts are https.
    hosts = [h for s in inv.sites for h in s.hosts]
    assert all(
        h.ssh.user == "edgeops" and h.ssh.private_key and h.ssh.private_key.config == "sshKeyFleet" for h in hosts
    )
    assert all(h.ssh.host_key and h.ssh.host_key.startswith("ssh-ed25519 ") for h in hosts)
    assert all(a.source.startswith("https://") and a.sha256 for s in inv.sites for a in s.artifacts)


def test_shipped_microshift_example_is_a_dev_inventory() -> None:
    """MicroShift cannot pass the prod baseline (no Secrets encryption, anonymous auth on):
    its example lives in a dev inventory of its own."""
    inv = load_inventory(REPO / "sites" / "examples" / "microshift.yaml").inventory
    assert inv.environment == "dev"
    assert [(s.name, s.distribution.name, s.topology) for s in inv.sites] == [("tower-sud-04", "microshift", "gateway")]
    assert inv.sites[0].distribution.pull_secret.config == "microshiftPullSecret"


def test_shipped_dev_inventory_is_valid_data() -> None:
    inv = load_inventory(REPO / "sites" / "dev.yaml", check_files=False).inventory
    assert inv.environment == "dev"
    assert [s.topology for s in inv.sites] == ["single-node", "ha", "gateway"]


def test_lab_inventory_with_real_files_loads(unit_dir: Path) -> None:
    loaded = load_inventory(INVENTORIES / "lab.yaml")
    assert isinstance(loaded, LoadedInventory) and loaded.path == (INVENTORIES / "lab.yaml").resolve()
    single, ha, gw = loaded.inventory.sites
    files = Path(os.environ["EDGEFLEET_CACHE"])
    assert loaded.resolve(single.hosts[0].ssh.private_key.file) == files / "ssh" / "id_ed25519"
    assert artifact_sha256(single.artifacts[0], loaded.base) == hashlib.sha256(ARTIFACTS["k3s"]).hexdigest()
    # The checksums file may mark binary mode ("*kwok").
    assert artifact_sha256(single.simulated_nodes.kwok, loaded.base) == hashlib.sha256(ARTIFACTS["kwok"]).hexdigest()
    assert [h.name for h in ha.servers] == ["ha-1", "ha-2", "ha-3"] and [h.name for h in ha.agents] == ["ha-agent"]
    assert gw.latency_budget_ms == 10.0


def test_lab_inventory_key_mode_is_checked(unit_dir: Path) -> None:
    (Path(os.environ["EDGEFLEET_CACHE"]) / "ssh" / "id_ed25519").chmod(0o640)
    problems = refusal(INVENTORIES / "lab.yaml").problems
    # The shared key is named once per host that uses it.
    assert len(problems) == 6
    assert all(
        "sites[" in p and ".ssh.private_key.file: " in p and "is readable by group or others" in p for p in problems
    )


def test_host_ssh_settings_win_over_defaults(unit_dir: Path) -> None:
    text = store_ssh("host_key: *hostkey, user: admin, private_key: {config: sshKeyStore}")(BASE)
    plant, store, _ = load_inventory(write(unit_dir, text)).inventory.sites
    assert (store.hosts[0].ssh.user, store.hosts[0].ssh.private_key.config) == ("admin", "sshKeyStore")
    assert (plant.hosts[0].ssh.user, plant.hosts[0].ssh.private_key.config) == ("edgeops", "sshKeyFleet")


# --- environment variables in paths ---------------------------------------------------------------

PASSPHRASE = "correct-horse-battery-staple-4711"
HOSTILE = "${PULUMI_CONFIG_PASSPHRASE}"


def test_a_path_naming_another_variable_never_reveals_its_value(
    unit_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An inventory edited in a pull request names the passphrase in every path field: each
    is refused naming file and field, and no message carries the passphrase."""
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    text = BASE.replace("private_key: {config: sshKeyFleet}", f'private_key: {{file: "{HOSTILE}/id"}}')
    text = store_ssh(f'host_key_file: "/x/{HOSTILE}", private_key: {{file: "{HOSTILE}"}}')(text)
    text = k3s_artifact(f'source: "{HOSTILE}", sha256_from: "~/{HOSTILE}/SHA256SUMS"')(text)
    text = replace(
        "    topology: single-node", "    topology: single-node" + KWOK.replace("${EDGEFLEET_CACHE}/toolchain", HOSTILE)
    )(text)
    for check_files in (True, False):
        with pytest.raises(InventoryError) as info:
            load_inventory(write(unit_dir, text), check_files=check_files)
        problems = info.value.problems
        assert PASSPHRASE not in str(info.value)
        fields = {line.split(": ")[1] for line in problems}
        assert {
            "sites[1].hosts[0].ssh.host_key_file",
            "sites[1].hosts[0].ssh.private_key.file",
            "sites[0].hosts[0].ssh.private_key.file",
            "sites[0].artifacts[0].source",
            "sites[0].artifacts[0].sha256_from",
            "sites[1].simulated_nodes.stages",
        } <= fields, problems
        assert all(
            line.startswith("unit.yaml: ") and "names ${PULUMI_CONFIG_PASSPHRASE}" in line and "(fix: " in line
            for line in problems
            if "PULUMI" in line
        )


def test_expansion_is_limited_to_home_and_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    assert expand_path("${EDGEFLEET_CACHE}/lab/k", Path("/inv")) == tmp_path / "lab/k"
    assert expand_path("~/k", Path("/inv")) == Path.home() / "k"
    assert expand_path("keys/k", Path("/inv")) == Path("/inv/keys/k")
    for value in (HOSTILE, "$PULUMI_CONFIG_PASSPHRASE/x", "${EDGEFLEET_CACHE}/${AWS_SECRET_ACCESS_KEY}", "a\nb"):
        with pytest.raises(ValueError) as info:
            expand_path(value, Path("/inv"))
        assert PASSPHRASE not in str(info.value) and "(fix: " in str(info.value)


def test_file_problems_show_the_path_as_written(unit_dir: Path) -> None:
    text = store_ssh('host_key: *hostkey, private_key: {file: "${EDGEFLEET_CACHE}/ssh/id_absent"}')(BASE)
    (line,) = refusal(write(unit_dir, text)).problems
    assert "'${EDGEFLEET_CACHE}/ssh/id_absent' is not a readable file" in line
    assert os.environ["EDGEFLEET_CACHE"] not in line
