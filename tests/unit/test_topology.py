"""EdgeSite under Pulumi mocks: the resources each topology registers, their order, the
rendered node configuration, and that secrets stay secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from components import remote
from components.fleet import EdgeFleet
from components.inventory import LoadedInventory, Site, load_inventory
from components.program import DEV_PASSPHRASE, build_fleet, fleet_args, read_secret
from components.site import EdgeSite, join_token
from components.topology import SiteSettings, check_site, host_key, machine_ids, node_spec, ordered_hosts, site_args
from policies.engine import evaluate
from policies.resource import Resource
from tests.mocks import run_mocked
from tests.unit.test_inventory import ARTIFACTS, HOST_KEY, INVENTORIES, PRIVATE_KEY, REPO, lab_files

DYNAMIC = "pulumi-python:dynamic:Resource"
COMMAND, COPY = "edgefleet:remote:Command", "edgefleet:remote:CopyToRemote"
FLEET_SECRET = "unit-fleet-secret"
CA_SHA256 = "ca" * 32  # what the mocked first server reports as the sha256 of its cluster CA
# What `k3s kubectl config view --raw` prints on a fresh server: it names the loopback address.
KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0EtREFUQQ==
    server: https://127.0.0.1:6443
  name: default
contexts:
- context: {cluster: default, user: default}
  name: default
current-context: default
users:
- name: default
  user: {client-certificate-data: Q0VSVA==, client-key-data: S0VZLURBVEE=}
"""


# --- the mock harness ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """One resource as the program registered it."""

    type: str
    name: str
    inputs: dict[str, Any]
    parent: str  # name of the parent resource
    depends_on: frozenset[str]  # names of the resources it waits for
    secret_outputs: frozenset[str]
    real_name: str = ""  # the registered name; ``name`` is its alias when it has exactly one
    aliases: frozenset[str] = frozenset()
    protect: bool = False

    @property
    def kind(self) -> str | None:
        return self.inputs.get("kind")

    def plain(self, key: str) -> Any:
        """An input with any secret wrapper removed."""
        return unwrap_rpc_secret(self.inputs[key])


def _name(urn: str) -> str:
    return urn.rsplit("::", 1)[-1]


PULL_SECRET = '{"auths": {"quay.io": {"auth": "dW5pdDp0ZXN0"}}}'


class Mocks(pulumi.runtime.Mocks):
    """Echo inputs as outputs; kubeconfig fetches print a kubeconfig."""

    def __init__(self) -> None:
        self.inputs: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.inputs[args.name] = dict(args.inputs)
        outputs = dict(args.inputs)
        if args.typ == DYNAMIC and args.inputs.get("kind") == COMMAND and args.name.endswith("-kubeconfig"):
            outputs["stdout"] = KUBECONFIG
        if args.typ == DYNAMIC and args.inputs.get("kind") == COMMAND and args.name.endswith("-cluster-ca"):
            outputs["stdout"] = CA_SHA256 + "\n"
        return f"{args.name}_id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


class Monitor(MockMonitor):
    """Keeps what the SDK sends with each registration that ``new_resource`` does not see:
    parent, dependencies and additional secret outputs, in registration order."""

    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.requests: list[Any] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        self.requests.append(request)
        return response


@dataclass
class Run:
    registered: list[Registered]
    value: Any

    def get(self, name: str) -> Registered:
        (found,) = [r for r in self.registered if r.name == name]
        return found

    def names(self) -> list[str]:
        return [r.name for r in self.registered]

    def index(self, name: str) -> int:
        return self.names().index(name)

    def commands(self) -> list[Registered]:
        return [r for r in self.registered if r.kind == COMMAND]


def run(
    program: Callable[[], Any],
    config: dict[str, str] | None = None,
    secret_keys: tuple[str, ...] = (),
    preview: bool = False,
) -> Run:
    """``program`` under mocks (project ``edgefleet``): what it registered and what it returned.
    ``preview``: as in `pulumi preview` (nothing is downloaded)."""
    mocks = Mocks()
    monitor = Monitor(mocks)
    value = run_mocked(program, mocks, config=config, secret_keys=secret_keys, preview=preview, monitor=monitor)
    requests = [r for r in monitor.requests if r.type != "pulumi:pulumi:Stack"]
    aliases = {
        r.name: frozenset([*(a.spec.name for a in r.aliases if a.spec.name), *(_name(u) for u in r.aliasURNs)])
        for r in requests
    }
    # Resources named by machine carry their earlier name as an alias: tests speak of them by
    # that name (site-host-step), and check the machine names themselves separately.
    shown = {name: next(iter(a)) if len(a) == 1 else name for name, a in aliases.items()}
    registered = [
        Registered(
            r.type,
            shown[r.name],
            mocks.inputs[r.name],
            shown.get(_name(r.parent), _name(r.parent)),
            frozenset(shown.get(_name(u), _name(u)) for u in r.dependencies),
            frozenset(r.additionalSecretOutputs),
            r.name,
            aliases[r.name],
            r.protect,
        )
        for r in requests
    ]
    return Run(registered, value)


def site_outputs(site: EdgeSite) -> pulumi.Output[dict[str, Any]]:
    """The kubeconfig and whether the SDK tracks it as a secret."""
    return pulumi.Output.all(kubeconfig=site.kubeconfig, secret=pulumi.Output.from_input(site.kubeconfig.is_secret()))


def build_sites(loaded: LoadedInventory, *sites: Site, claims_as: str | None = None) -> Run:
    """One EdgeSite per site, as EdgeFleet builds them (in stack ``unit``); returns each site's
    outputs by name."""
    machines = machine_ids([(h.name, host_key(h, loaded.base)) for s in sites for h in s.hosts])

    def program() -> Any:
        config = pulumi.Config()
        outs = {}
        for site in sites:
            settings = SiteSettings(
                environment=loaded.inventory.environment,
                inventory_dir=loaded.base,
                fleet_secret=pulumi.Output.secret(FLEET_SECRET),
                private_keys={h.name: read_secret(h.ssh.private_key, loaded.base, config) for h in site.hosts},
                machines=machines,
                claims_as=claims_as,
            )
            outs[site.name] = site_outputs(EdgeSite(site.name, site_args(site, settings)))
        return outs

    return run(program)


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LoadedInventory:
    """inventories/lab.yaml with its key, host key, artifact and kwok files in place."""
    monkeypatch.setenv("EDGEFLEET_CACHE", str(lab_files(tmp_path / "files")))
    return load_inventory(INVENTORIES / "lab.yaml")


def lab_site(lab: LoadedInventory, name: str) -> Site:
    (site,) = [s for s in lab.inventory.sites if s.name == name]
    return site


def put_files(script: str) -> dict[str, str]:
    """The files an install script writes (``put_file PATH MODE <<'EOF'`` blocks)."""
    found = re.findall(r"^put_(?:file|config) (\S+) \d+ <<'(EDGEFLEET_EOF_*)'\n(.*?)^\2$", script, re.M | re.S)
    return {path: body for path, _, body in found}


def k3s_config(run_: Run, site: str, host: str) -> dict[str, Any]:
    """The K3s config.yaml the install command of ``host`` writes."""
    return yaml.safe_load(
        put_files(run_.get(f"{site}-{host}-install").inputs["create"])["/etc/rancher/k3s/config.yaml"]
    )


def plain_strings(value: Any) -> Iterator[str]:
    """Every string in ``value`` outside a secret."""
    if is_rpc_secret(value):
        return
    if isinstance(value, dict):
        for v in value.values():
            yield from plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from plain_strings(v)
    elif isinstance(value, str):
        yield value


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# --- single-node -----------------------------------------------------------------------------------


def test_single_node_site_registers_the_lifecycle_of_its_host(lab: LoadedInventory) -> None:
    site = lab_site(lab, "lab-single")
    r = build_sites(lab, site)
    host = "lab-single-single-1"
    assert sorted(r.names()) == sorted(
        [
            "lab-single",
            host,
            f"{host}-upload-k3s",
            f"{host}-drain",
            f"{host}-install",
            f"{host}-node",
            f"{host}-kubeconfig",
            "lab-single-kwok-upload",
            "lab-single-kwok",
            "lab-single-k8s",
        ]
    )
    assert (r.get("lab-single").type, r.get(host).type, r.get("lab-single-k8s").type) == (
        "edge:site:EdgeSite",
        "edge:host:EdgeHost",
        "pulumi:providers:kubernetes",
    )
    assert {
        n: (r.get(n).type, r.get(n).kind) for n in (f"{host}-upload-k3s", f"{host}-install", "lab-single-kwok-upload")
    } == {
        f"{host}-upload-k3s": (DYNAMIC, COPY),
        f"{host}-install": (DYNAMIC, COMMAND),
        "lab-single-kwok-upload": (DYNAMIC, COPY),
    }
    assert r.get(host).parent == "lab-single" and r.get(f"{host}-install").parent == host
    # upload and drain, then install, then node ready, then the kubeconfig fetch.
    assert r.get(f"{host}-install").depends_on == {f"{host}-upload-k3s", f"{host}-drain"}
    assert r.get(f"{host}-node").depends_on == {f"{host}-install"}
    assert r.get(f"{host}-kubeconfig").depends_on == {f"{host}-node"}
    # The artifact goes to a path named by its digest; labels name site and host for errors.
    upload = r.get(f"{host}-upload-k3s").inputs
    assert upload["remote_path"] == f"/var/lib/edgefleet/artifacts/{sha(ARTIFACTS['k3s'])[:16]}-k3s"
    assert upload["source"] == str(Path(lab.resolve("${EDGEFLEET_CACHE}/toolchain/k3s")))
    assert r.get(f"{host}-install").inputs["label"] == "site 'lab-single' host 'single-1' (10.213.7.11)"
    cfg = k3s_config(r, "lab-single", "single-1")
    assert "server" not in cfg and "cluster-init" not in cfg
    assert cfg["disable-agent"] is True  # the lab's servers run no kubelet


def test_install_triggers_carry_version_artifact_digest_and_config(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-single"))
    version, digest, rendered = r.get("lab-single-single-1-install").inputs["triggers"]
    assert (version, digest) == ("v1.35.1+k3s-e69d1861", sha(ARTIFACTS["k3s"]))
    assert re.fullmatch(r"[0-9a-f]{20}", rendered)
    # drain, install and node ready re-run on the same change.
    assert {
        tuple(r.get(f"lab-single-single-1-{step}").inputs["triggers"]) for step in ("drain", "install", "node")
    } == {(version, digest, rendered)}


def test_simulated_nodes_run_kwok_on_the_first_server(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-single"))
    upload, kwok = r.get("lab-single-kwok-upload"), r.get("lab-single-kwok")
    assert (upload.kind, kwok.kind) == (COPY, COMMAND)
    assert upload.depends_on == {"lab-single-single-1-node"}
    assert kwok.depends_on == {"lab-single-kwok-upload", "lab-single-single-1-node"}
    # The site's provider is usable once the last node and the simulated nodes are ready.
    assert r.get("lab-single-k8s").depends_on == {
        "lab-single-single-1-kubeconfig",
        "lab-single-single-1-node",
        "lab-single-kwok",
    }
    assert kwok.plain("connection")["host"] == "10.213.7.11"
    # kwok re-runs whenever the first server's install does (it comes back with K3s).
    first_install = r.get("lab-single-single-1-install").inputs["triggers"]
    assert kwok.inputs["triggers"] == [sha(ARTIFACTS["kwok"]), 2, *first_install]
    assert "lab-single-sim-1" in kwok.inputs["create"] and "lab-single-sim-2" in kwok.inputs["create"]
    assert "lab-single-sim-3" not in kwok.inputs["create"]
    assert "delete node lab-single-sim-1 lab-single-sim-2 --ignore-not-found" in kwok.inputs["delete"]


def test_sites_without_simulated_nodes_register_no_kwok(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-gw"))
    assert not [n for n in r.names() if "kwok" in n]


# --- ha ----------------------------------------------------------------------------------------------


def test_ha_servers_join_the_first_one_after_another_then_agents(lab: LoadedInventory) -> None:
    site = lab_site(lab, "lab-ha")
    assert [h.name for h in ordered_hosts(site)] == ["ha-1", "ha-2", "ha-3", "ha-agent"]
    r = build_sites(lab, site)
    # Each host waits for the previous one to be ready (the agent, listed first, comes last)...
    assert r.get("lab-ha-ha-1").depends_on == frozenset()
    assert r.get("lab-ha-ha-2").depends_on == {"lab-ha-ha-1-node"}
    assert r.get("lab-ha-ha-3").depends_on == {"lab-ha-ha-2-node"}
    assert r.get("lab-ha-ha-agent").depends_on == {"lab-ha-ha-3-node"}
    # ...and every joiner's install and drain wait for the first server's install (and its
    # cluster CA digest, which the joiner's token carries).
    assert r.get("lab-ha-cluster-ca").depends_on == {"lab-ha-ha-1-node"}
    assert r.get("lab-ha-cluster-ca").plain("connection")["host"] == "10.213.7.21"
    for host in ("ha-2", "ha-3", "ha-agent"):
        assert r.get(f"lab-ha-{host}-install").depends_on == {
            f"lab-ha-{host}-upload-k3s",
            f"lab-ha-{host}-drain",
            "lab-ha-ha-1-install",
            "lab-ha-cluster-ca",
        }
        assert r.get(f"lab-ha-{host}-drain").depends_on == {"lab-ha-ha-1-install"}
        # Drain and node readiness go through the first server's API.
        assert r.get(f"lab-ha-{host}-drain").plain("connection")["host"] == "10.213.7.21"
        assert r.get(f"lab-ha-{host}-node").plain("connection")["host"] == "10.213.7.21"
        assert r.get(f"lab-ha-{host}-install").plain("connection")["host"] != "10.213.7.21"
    # A joiner's steps reach the engine only once the host before it is ready.
    for before, host in (("ha-1", "ha-2"), ("ha-2", "ha-3"), ("ha-3", "ha-agent")):
        assert r.index(f"lab-ha-{before}-node") < min(r.index(n) for n in r.names() if n.startswith(f"lab-ha-{host}"))
    # Only servers hold an admin kubeconfig; the provider uses the first server's.
    assert [n for n in r.names() if n.endswith("-kubeconfig")] == [
        f"lab-ha-{h}-kubeconfig" for h in ("ha-1", "ha-2", "ha-3")
    ]
    assert r.get("lab-ha-k8s").depends_on == {"lab-ha-ha-1-kubeconfig", "lab-ha-ha-agent-node"}


def test_ha_first_server_initialises_etcd_and_the_others_join_it(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-ha"))
    first = k3s_config(r, "lab-ha", "ha-1")
    assert first["cluster-init"] is True and "server" not in first
    for host in ("ha-2", "ha-3", "ha-agent"):
        cfg = k3s_config(r, "lab-ha", host)
        assert cfg["server"] == "https://10.213.7.21:6443" and "cluster-init" not in cfg
    assert "secrets-encryption" not in k3s_config(r, "lab-ha", "ha-agent")
    assert k3s_config(r, "lab-ha", "ha-2")["tls-san"] == ["10.213.7.22", "k8s.lab-ha.internal"]


def test_ha_with_a_registration_address_joins_and_serves_through_it(lab: LoadedInventory) -> None:
    site = lab_site(lab, "lab-ha").model_copy(update={"registration_address": "10.213.7.20"})
    r = build_sites(lab, site)
    assert "server" not in k3s_config(r, "lab-ha", "ha-1")
    assert {k3s_config(r, "lab-ha", h)["server"] for h in ("ha-2", "ha-3", "ha-agent")} == {"https://10.213.7.20:6443"}
    assert "10.213.7.20" in k3s_config(r, "lab-ha", "ha-3")["tls-san"]
    kubeconfig = yaml.safe_load(r.value["lab-ha"]["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.213.7.20:6443"


# --- gateway -----------------------------------------------------------------------------------------


def test_gateway_runs_the_reduced_component_set_bound_to_its_address(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-gw"))
    cfg = k3s_config(r, "lab-gw", "gw-1")
    assert cfg["disable"] == ["traefik", "servicelb", "metrics-server", "local-storage"]
    assert cfg["bind-address"] == cfg["advertise-address"] == "10.213.7.31"
    assert {a.split("=", 1)[0] for a in cfg["kubelet-arg"]} >= {"system-reserved", "kube-reserved", "eviction-hard"}
    assert "server" not in cfg and "cluster-init" not in cfg
    # A standard site keeps the bundled components and listens on every address.
    ha = build_sites(lab, lab_site(lab, "lab-ha"))
    assert not {"disable", "bind-address"} & set(k3s_config(ha, "lab-ha", "ha-1"))


# --- secrets -----------------------------------------------------------------------------------------


def test_join_token_is_a_secret_per_site_and_never_plain(lab: LoadedInventory) -> None:
    sites = [lab_site(lab, n) for n in ("lab-single", "lab-ha", "lab-gw")]
    r = build_sites(lab, *sites)

    def hmac_hex(purpose: str, site: str) -> str:
        return hmac.new(FLEET_SECRET.encode(), f"edgefleet/{purpose}/{site}".encode(), hashlib.sha256).hexdigest()

    tokens = {s.name: hmac_hex("join", s.name) for s in sites}
    agent_tokens = {s.name: hmac_hex("agent-join", s.name) for s in sites}
    assert len(set(tokens.values()) | set(agent_tokens.values())) == 6
    installs = [c for c in r.commands() if c.name.endswith("-install")]
    assert len(installs) == 1 + 4 + 1
    first = {"lab-single-single-1-install", "lab-ha-ha-1-install", "lab-gw-gw-1-install"}
    passwords = set()
    for install in installs:
        assert is_rpc_secret(install.inputs["environment"]), install.name
        site = r.get(install.parent).inputs["site"]
        env = install.plain("environment")
        # Every node registers with a password of its own, derived per site and machine (a
        # reinstalled host presents it again); the script seeds it without printing it.
        password = env.pop("EDGEFLEET_NODE_PASSWORD")
        node = install.name.removeprefix(f"{site}-").removesuffix("-install")  # the lab's hosts are their nodes
        assert password == hmac_hex("node-password", f"{site}/{node}")[:32], install.name
        assert "seed_secret EDGEFLEET_NODE_PASSWORD /etc/rancher/node/password" in install.inputs["create"]
        passwords.add(password)
        if install.name in first:
            # The first server initialises the cluster with both tokens (no CA exists yet).
            assert env == {"K3S_TOKEN": tokens[site], "K3S_AGENT_TOKEN": agent_tokens[site]}, install.name
        elif install.name == "lab-ha-ha-agent-install":
            # An agent holds only the agent token, in the form that checks the cluster CA.
            assert env == {"K3S_TOKEN": f"K10{CA_SHA256}::node:{agent_tokens[site]}"}
            assert not [v for v in env.values() if tokens[site] in v]
            files = put_files(install.inputs["create"])
            assert not [f for f, body in files.items() if tokens[site] in body]
            assert "agent-token-file" not in k3s_config(r, "lab-ha", "ha-agent")
        else:
            assert env == {
                "K3S_TOKEN": f"K10{CA_SHA256}::server:{tokens[site]}",
                "K3S_AGENT_TOKEN": agent_tokens[site],
            }, install.name
    assert k3s_config(r, "lab-ha", "ha-2")["agent-token-file"] == "/etc/rancher/k3s/agent-token"
    assert len(passwords) == len(installs)
    plain = [s for res in r.registered for s in plain_strings(res.inputs)]
    for secret in [*tokens.values(), *agent_tokens.values(), *passwords, FLEET_SECRET, PRIVATE_KEY]:
        assert not [s for s in plain if secret in s]
    # The engine keeps credentials and environment out of the state in plain text, too.
    for res in r.registered:
        if res.kind in (COMMAND, COPY):
            assert is_rpc_secret(res.inputs["connection"]) and "connection" in res.secret_outputs
            assert res.plain("connection")["privateKey"] == PRIVATE_KEY
        if res.kind == COMMAND:
            assert "environment" in res.secret_outputs
    assert all("stdout" in c.secret_outputs for c in r.commands() if c.name.endswith("-kubeconfig"))


def test_join_token_is_stable_and_site_specific() -> None:
    def program() -> Any:
        a1, a2 = join_token(pulumi.Output.from_input("s"), "a"), join_token(pulumi.Output.from_input("s"), "a")
        b = join_token(pulumi.Output.from_input("s"), "b")
        return pulumi.Output.all(a1, a2, b, pulumi.Output.from_input(a1.is_secret()))

    a1, a2, b, secret = run(program).value
    assert a1 == a2 != b and re.fullmatch(r"[0-9a-f]{64}", a1) and secret is True


def test_kubeconfig_is_secret_and_points_at_the_site_api(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-single"), lab_site(lab, "lab-gw"))
    for site, address in (("lab-single", "10.213.7.11"), ("lab-gw", "10.213.7.31")):
        out = r.value[site]
        assert out["secret"] is True
        kubeconfig = yaml.safe_load(out["kubeconfig"])
        assert [c["cluster"]["server"] for c in kubeconfig["clusters"]] == [f"https://{address}:6443"]
        assert kubeconfig["users"] == yaml.safe_load(KUBECONFIG)["users"]
        provider = r.get(f"{site}-k8s")
        assert is_rpc_secret(provider.inputs["kubeconfig"])
        assert provider.plain("kubeconfig") == out["kubeconfig"]


# --- what the policy pack reads -------------------------------------------------------------------


def test_site_component_carries_the_policy_contract(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-ha"))
    props = r.get("lab-ha").inputs
    assert (props["site"], props["topology"], props["environment"], props["distribution"], props["version"]) == (
        "lab-ha",
        "ha",
        "dev",
        "k3s",
        "v1.35.1+k3s-e69d1861",
    )
    assert props["install"] == {
        "secretsEncryption": True,
        "auditLog": True,
        "anonymousAuth": False,
        "protectKernelDefaults": True,
        "kubeconfigMode": "0600",
    }
    # The source as the inventory writes it; the digest read from the checksums file.
    assert props["artifacts"] == [
        {"name": "k3s", "source": "${EDGEFLEET_CACHE}/toolchain/k3s", "sha256": sha(ARTIFACTS["k3s"])}
    ]
    assert props["hosts"] == [
        {"name": h, "address": a, "hostKey": f"{HOST_KEY} root@{h}"}
        for h, a in (
            ("ha-agent", "10.213.7.24"),
            ("ha-1", "10.213.7.21"),
            ("ha-2", "10.213.7.22"),
            ("ha-3", "10.213.7.23"),
        )
    ]
    assert r.get("lab-ha-ha-2").inputs["hostKey"] == f"{HOST_KEY} root@ha-2"
    assert r.get("lab-ha-ha-2-install").plain("connection")["hostKey"] == f"{HOST_KEY} root@ha-2"
    report = evaluate([Resource("edge:site:EdgeSite", "lab-ha", props)])
    assert [f"{f.rule.name}: {f.message}" for f in report.findings] == []


def test_policy_pack_flags_a_site_component_that_breaks_the_contract(lab: LoadedInventory) -> None:
    props = build_sites(lab, lab_site(lab, "lab-gw")).get("lab-gw").inputs
    broken = {
        **props,
        "install": {**props["install"], "kubeconfigMode": "0644"},
        "artifacts": [{**props["artifacts"][0], "sha256": None}],
    }
    names = sorted(f.rule.name for f in evaluate([Resource("edge:site:EdgeSite", "lab-gw", broken)]).findings)
    assert names == ["edge-artifact-sha256", "edge-kubeconfig-mode"]


# --- checks before anything is registered -----------------------------------------------------------


def test_every_shipped_and_test_site_can_be_installed(lab: LoadedInventory) -> None:
    shipped = [
        load_inventory(REPO / "sites" / "prod.yaml"),
        load_inventory(REPO / "sites" / "examples" / "microshift.yaml"),
    ]
    for loaded in (*shipped, load_inventory(INVENTORIES / "base.yaml"), lab):
        assert {s.name: check_site(s, loaded.base) for s in loaded.inventory.sites} == {
            s.name: [] for s in loaded.inventory.sites
        }


def test_check_site_names_site_host_and_fix_for_a_node_that_cannot_install() -> None:
    loaded = load_inventory(INVENTORIES / "base.yaml")
    tower = loaded.inventory.sites[2]
    art = tower.artifacts[0].model_copy(
        update={"name": "microshift-rpms", "source": "https://artifacts.example.internal/microshift-rpms.tar"}
    )
    problems = check_site(tower.model_copy(update={"artifacts": [art]}), loaded.base)
    assert problems == [
        "site 'tower' host 'tower-gw': artifacts[microshift-rpms]: "
        "'https://artifacts.example.internal/microshift-rpms.tar' is not an RPM "
        "(fix: give MicroShift's release RPMs (and their dependencies) as artifacts)"
    ]


def build_program_error(tmp_path: Path, inventory_text: str | None, stack: str = "unit", **config: str) -> str:
    """build_fleet's error for a stack whose inventory (if given) has ``inventory_text``."""
    if inventory_text is not None:
        path = tmp_path / "unit.yaml"
        path.write_text(inventory_text)
        config["inventory"] = str(path)
    errors: list[str] = []

    def program() -> Any:
        with pytest.raises(pulumi.RunError) as info:
            build_fleet(pulumi.Config(), stack)
        errors.append(str(info.value))
        return True

    r = run(program, config, secret_keys=("fleetSecret",))
    assert r.registered == []  # nothing registered before the error
    return errors[0]


BASE = (INVENTORIES / "base.yaml").read_text()


def test_program_refuses_a_stack_without_an_inventory(tmp_path: Path) -> None:
    assert build_program_error(tmp_path, None) == (
        "Pulumi.unit.yaml: config edgefleet:inventory is not set (fix: pulumi config set inventory sites/<file>.yaml)"
    )


def test_program_refuses_an_invalid_inventory_with_every_problem(tmp_path: Path) -> None:
    text = BASE.replace("address: 10.0.0.13", "address: 10.0.0.300").replace("topology: gateway", "topology: gatway")
    message = build_program_error(tmp_path, text, fleetSecret="s")
    lines = message.splitlines()
    assert lines[0] == "invalid inventory:"
    assert [line.split(": ")[1] for line in lines[1:]] == ["sites[0].hosts[2].address", "sites[2].topology"]
    assert "Traceback" not in message


def test_program_refuses_sites_that_cannot_be_installed(tmp_path: Path) -> None:
    text = BASE.replace("microshift/4.19.0/microshift-4.19.0-1.el9.x86_64.rpm", "microshift/4.19.0/microshift-rpms.tar")
    message = build_program_error(tmp_path, text, fleetSecret="s")
    assert message.splitlines() == [
        f"{tmp_path / 'unit.yaml'}: the sites cannot be installed as described:",
        "site 'tower' host 'tower-gw': artifacts[microshift]: 'https://artifacts.example.internal/microshift/4.19.0/"
        "microshift-rpms.tar' is not an RPM (fix: give MicroShift's release RPMs (and their dependencies) as "
        "artifacts)",
    ]


def test_program_refuses_a_stack_without_a_fleet_secret(tmp_path: Path) -> None:
    assert build_program_error(tmp_path, BASE).startswith(
        "Pulumi.unit.yaml: config edgefleet:fleetSecret is not set (fix: "
    )


def test_program_refuses_the_dev_passphrase_for_prod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", DEV_PASSPHRASE)
    message = build_program_error(tmp_path, BASE, stack="prod", fleetSecret="s")
    assert message.startswith("Pulumi.prod.yaml: PULUMI_CONFIG_PASSPHRASE: the public dev passphrase cannot protect")


# --- the whole prod fleet -------------------------------------------------------------------------------


def test_prod_fleet_builds_every_site_with_config_secret_keys() -> None:
    loaded = load_inventory(REPO / "sites" / "prod.yaml")

    def program() -> Any:
        fleet = EdgeFleet("fleet", fleet_args(loaded, pulumi.Config(), pulumi.Output.secret(FLEET_SECRET)))
        return {name: site_outputs(site) for name, site in fleet.sites.items()}

    r = run(program, {"sshKeyFleet": PRIVATE_KEY}, secret_keys=("sshKeyFleet",), preview=True)
    sites = loaded.inventory.sites
    assert sorted(x.name for x in r.registered if x.type == "edge:site:EdgeSite") == sorted(s.name for s in sites)
    assert all(r.get(s.name).parent == "fleet" for s in sites)
    installs = {c.name for c in r.commands() if c.name.endswith("-install")}
    assert installs == {f"{s.name}-{h.name}-install" for s in sites for h in s.hosts}
    envs = {c.name: set(c.plain("environment")) for c in r.commands() if c.name.endswith("-install")}
    assert envs["store-0307-st0307-1-install"] == {"K0S_TOKEN", "K0S_ENCRYPTION_KEY"}
    assert envs["plant-lyon-lyo-cp-1-install"] == {"K3S_TOKEN", "K3S_AGENT_TOKEN", "EDGEFLEET_NODE_PASSWORD"}
    assert envs["plant-hamburg-ham-gpu-1-install"] == {"K3S_TOKEN", "EDGEFLEET_NODE_PASSWORD"}
    # k0s's Secrets encryption key: 32 bytes derived from the fleet secret for this site only.
    store = r.get("store-0307-st0307-1-install")
    assert is_rpc_secret(store.inputs["environment"])
    key = store.plain("environment")["K0S_ENCRYPTION_KEY"]
    assert (
        key
        == base64.b64encode(
            hmac.new(FLEET_SECRET.encode(), b"edgefleet/secrets-encryption/store-0307", hashlib.sha256).digest()
        ).decode()
    )
    assert len(base64.b64decode(key)) == 32 and key not in store.inputs["create"]
    # https artifacts are uploaded from their verified download in the cache.
    uploads = {x.name: x.inputs for x in r.registered if x.kind == COPY}
    assert uploads["plant-hamburg-ham-cp-1-upload-k3s"]["source"].endswith(
        f"/artifacts/{loaded.inventory.sites[0].artifacts[0].sha256}/k3s"
    )
    assert len(uploads) == sum(
        len([a for a in s.artifacts if a.arch == (h.arch or "amd64")]) for s in sites for h in s.hosts
    )
    # Prod: what would uninstall a host or remove its node is protected.
    assert {x.name.rsplit("-", 1)[1] for x in r.registered if x.protect} == {"install", "node"}
    assert len([x for x in r.registered if x.protect]) == 2 * sum(len(s.hosts) for s in sites)
    assert {name: out["secret"] for name, out in r.value.items()} == {s.name: True for s in sites}
    assert (
        yaml.safe_load(r.value["plant-hamburg"]["kubeconfig"])["clusters"][0]["cluster"]["server"]
        == "https://10.20.0.10:6443"
    )
    assert not [s for res in r.registered for s in plain_strings(res.inputs) if PRIVATE_KEY in s or key in s]
    # Every prod site passes the mandatory pack.
    props = [Resource("edge:site:EdgeSite", s.name, r.get(s.name).inputs) for s in sites]
    assert [f.rule.name for f in evaluate(props).findings] == []


def test_microshift_example_installs_with_the_pull_secret_only() -> None:
    loaded = load_inventory(REPO / "sites" / "examples" / "microshift.yaml")

    def program() -> Any:
        fleet = EdgeFleet("fleet", fleet_args(loaded, pulumi.Config(), pulumi.Output.secret(FLEET_SECRET)))
        return {name: site_outputs(site) for name, site in fleet.sites.items()}

    r = run(
        program,
        {"sshKeyFleet": PRIVATE_KEY, "microshiftPullSecret": PULL_SECRET},
        secret_keys=("sshKeyFleet", "microshiftPullSecret"),
        preview=True,
    )
    # MicroShift reads the site's pull secret (a config secret), never a join token.
    tower = r.get("tower-sud-04-ts04-gw-install")
    assert is_rpc_secret(tower.inputs["environment"]) and tower.plain("environment") == {
        "MICROSHIFT_PULL_SECRET": PULL_SECRET
    }
    assert not [s for res in r.registered for s in plain_strings(res.inputs) if PRIVATE_KEY in s or PULL_SECRET in s]
    # Dev only: the prod baseline refuses what MicroShift cannot configure.
    names = {
        f.rule.name
        for f in evaluate(
            [Resource("edge:site:EdgeSite", "tower-sud-04", {**r.get("tower-sud-04").inputs, "environment": "prod"})]
        ).findings
    }
    assert {"edge-secrets-encryption", "edge-anonymous-auth-off"} <= names


K0S_HA = """
fleet: unit
environment: prod
defaults: {ssh: {user: edgeops, private_key: {config: sshKeyFleet}}}
sites:
  - name: depot
    topology: ha
    distribution: {name: k0s, version: v1.33.4+k0s.0}
    artifacts:
      - {name: k0s, arch: amd64, source: https://artifacts.example.internal/k0s, sha256: %(sha)s}
    hosts:
      - {name: c1, address: 10.0.3.11, ssh: {host_key: "%(hk)s"}}
      - {name: c2, address: 10.0.3.12, ssh: {host_key: "%(hk)s"}}
      - {name: c3, address: 10.0.3.13, ssh: {host_key: "%(hk)s"}}
      - {name: w1, address: 10.0.3.21, role: agent, ssh: {host_key: "%(hk)s"}}
"""


def test_k0s_joiners_install_with_a_token_the_first_controller_mints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "k0s.yaml"
    path.write_text(K0S_HA % {"sha": "5c" * 32, "hk": HOST_KEY})
    loaded = load_inventory(path)

    def program() -> Any:
        fleet = EdgeFleet("fleet", fleet_args(loaded, pulumi.Config(), pulumi.Output.secret(FLEET_SECRET)))
        return {name: site_outputs(site) for name, site in fleet.sites.items()}

    r = run(program, {"sshKeyFleet": PRIVATE_KEY}, secret_keys=("sshKeyFleet",))
    mints = {c.name: c for c in r.commands() if c.name.endswith("-join-token")}
    assert sorted(mints) == ["depot-c2-join-token", "depot-c3-join-token", "depot-w1-join-token"]
    for host, role in (("c2", "controller"), ("c3", "controller"), ("w1", "worker")):
        mint = mints[f"depot-{host}-join-token"]
        assert mint.plain("connection")["host"] == "10.0.3.11", "minted on the first controller"
        assert f"--role={role}" in mint.inputs["create"]
        assert "stdout" in mint.secret_outputs
        assert mint.depends_on == {"depot-c1-node"}
        install = r.get(f"depot-{host}-install")
        assert is_rpc_secret(install.inputs["environment"])
        # Under mocks a command's stdout echoes nothing: the minted token is what the joiner reads.
        env = install.plain("environment")
        assert set(env) == ({"K0S_TOKEN", "K0S_ENCRYPTION_KEY"} if role == "controller" else {"K0S_TOKEN"})
        assert env["K0S_TOKEN"] != hmac.new(FLEET_SECRET.encode(), b"edgefleet/join/depot", hashlib.sha256).hexdigest()
    # Every controller encrypts Secrets with the same site key; workers never see it.
    key = base64.b64encode(
        hmac.new(FLEET_SECRET.encode(), b"edgefleet/secrets-encryption/depot", hashlib.sha256).digest()
    ).decode()
    assert {r.get(f"depot-{h}-install").plain("environment")["K0S_ENCRYPTION_KEY"] for h in ("c2", "c3")} == {key}
    assert r.get("depot-c1-install").plain("environment") == {
        "K0S_TOKEN": hmac.new(FLEET_SECRET.encode(), b"edgefleet/join/depot", hashlib.sha256).hexdigest(),
        "K0S_ENCRYPTION_KEY": key,
    }


def test_servers_and_agents_take_their_own_flags_and_kernel_protection_is_reported(lab: LoadedInventory) -> None:
    site = lab_site(lab, "lab-ha")
    dist = site.distribution.model_copy(
        update={
            "extra_args": ["--kube-apiserver-arg=event-ttl=2h"],
            "agent_args": ["--container-runtime-endpoint=unix:///run/cri.sock"],
            "protect_kernel_defaults": False,
        }
    )
    site = site.model_copy(update={"distribution": dist})
    hosts = ordered_hosts(site)
    flags = {h.name: node_spec(site, h, hosts[0]).extra_args for h in hosts}
    assert flags == {
        "ha-1": ("--kube-apiserver-arg=event-ttl=2h",),
        "ha-2": ("--kube-apiserver-arg=event-ttl=2h",),
        "ha-3": ("--kube-apiserver-arg=event-ttl=2h",),
        "ha-agent": ("--container-runtime-endpoint=unix:///run/cri.sock",),
    }
    r = build_sites(lab, site)
    assert "protect-kernel-defaults" not in k3s_config(r, "lab-ha", "ha-agent")
    props = r.get("lab-ha").inputs
    assert props["install"]["protectKernelDefaults"] is False
    names = [f.rule.name for f in evaluate([Resource("edge:site:EdgeSite", "lab-ha", props)]).findings]
    assert names == ["edge-protect-kernel-defaults"]


def test_stack_settings_reach_every_remote_step(tmp_path: Path) -> None:
    """The stack's command deadline bounds every remote step, and an encrypted key's
    passphrase (a config secret) reaches every connection as a secret."""
    raw = yaml.safe_load((REPO / "sites" / "prod.yaml").read_text())
    raw["defaults"]["ssh"]["private_key_passphrase"] = {"config": "sshKeyPassphrase"}
    inv = tmp_path / "prod.yaml"
    inv.write_text(yaml.safe_dump(raw, sort_keys=False))
    loaded = load_inventory(inv)

    def program() -> Any:
        EdgeFleet(
            "fleet", fleet_args(loaded, pulumi.Config(), pulumi.Output.secret(FLEET_SECRET), command_timeout_s=900)
        )

    r = run(
        program,
        {"sshKeyFleet": PRIVATE_KEY, "sshKeyPassphrase": "pass phrase"},
        secret_keys=("sshKeyFleet", "sshKeyPassphrase"),
        preview=True,
    )
    steps = [x for x in r.registered if x.kind in (COMMAND, COPY)]
    assert steps and {x.inputs["timeout"] for x in steps} == {900}
    for x in steps:
        conn = x.inputs["connection"]
        assert is_rpc_secret(conn), x.name
        assert unwrap_rpc_secret(conn)["privateKeyPassphrase"] == "pass phrase", x.name


def test_without_a_stack_deadline_each_step_derives_its_own(lab: LoadedInventory) -> None:
    r = build_sites(lab, lab_site(lab, "lab-ha"))
    install = r.get("lab-ha-ha-1-install")
    assert install.inputs["timeout"] == remote.step_deadline(300)
    assert all(x.inputs.get("timeout") is None for x in r.registered if x.kind == COPY), "uploads: bounded by size"
