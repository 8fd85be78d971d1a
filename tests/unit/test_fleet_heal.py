"""Which state entries a heal drops: the remote resources a host no longer has, and the
Kubernetes objects of exactly the sites that lost an install (never another site's)."""

from __future__ import annotations

import pytest
from pulumi import automation as auto

from fleet.heal import clear_interrupted, lost_sites, site_objects, site_of

P = "urn:pulumi:dev::edgefleet::"
FLEET = P + "edge:fleet:EdgeFleet::edge-lab"
SITES = {s: P + f"edge:fleet:EdgeFleet$edge:site:EdgeSite::fleet-{s}" for s in ("lab-gw", "lab-ha")}


def host(site: str, machine: str) -> str:
    return P + f"edge:fleet:EdgeFleet$edge:site:EdgeSite$edge:host:EdgeHost::fleet-{site}-{machine}"


def dynamic(site: str, machine: str, step: str) -> dict:
    return {
        "urn": host(site, machine).rsplit("::", 1)[0] + f"$pulumi-python:dynamic:Resource::{machine}-{step}",
        "type": "pulumi-python:dynamic:Resource",
        "custom": True,
        "parent": host(site, machine),
    }


def provider(site: str) -> dict:
    return {
        "urn": P + f"edge:fleet:EdgeFleet$edge:site:EdgeSite$pulumi:providers:kubernetes::fleet-{site}-k8s",
        "type": "pulumi:providers:kubernetes",
        "custom": True,
        "parent": SITES[site],
    }


def k8s(site: str, name: str) -> dict:
    return {
        "urn": P + f"edge:serving:InferenceService$kubernetes:core/v1:Service::{site}-{name}",
        "type": "kubernetes:core/v1:Service",
        "custom": True,
        "parent": P + f"edge:serving:InferenceService::{site}-{name}",
        "provider": provider(site)["urn"] + "::0b5e7c1a",
    }


STATE = [
    {"urn": FLEET, "type": "edge:fleet:EdgeFleet", "parent": None},
    *({"urn": u, "type": "edge:site:EdgeSite", "parent": FLEET} for u in SITES.values()),
    {"urn": host("lab-gw", "m-1"), "type": "edge:host:EdgeHost", "parent": SITES["lab-gw"]},
    {"urn": host("lab-ha", "m-2"), "type": "edge:host:EdgeHost", "parent": SITES["lab-ha"]},
    dynamic("lab-gw", "m-1", "install"),
    dynamic("lab-gw", "m-1", "upload-k3s"),
    dynamic("lab-ha", "m-2", "install"),
    dynamic("lab-ha", "m-2", "upload-k3s"),
    provider("lab-gw"),
    provider("lab-ha"),
    k8s("lab-gw", "model"),
    k8s("lab-ha", "model"),
]


def test_a_resource_belongs_to_its_nearest_site() -> None:
    parents = {r["urn"]: r.get("parent") for r in STATE}
    assert site_of(dynamic("lab-gw", "m-1", "install")["urn"], parents) == SITES["lab-gw"]
    assert site_of(SITES["lab-ha"], parents) == SITES["lab-ha"]
    assert site_of(FLEET, parents) is None


def test_a_site_that_lost_an_install_is_named_and_one_that_lost_an_upload_only_is_not() -> None:
    gw_install, ha_upload = dynamic("lab-gw", "m-1", "install")["urn"], dynamic("lab-ha", "m-2", "upload-k3s")["urn"]
    after = {r["urn"] for r in STATE} - {gw_install, ha_upload}
    gone, sites = lost_sites(STATE, after)
    assert sorted(gone) == sorted([gw_install, ha_upload])
    assert sites == [SITES["lab-gw"]]


def test_only_the_objects_of_the_sites_named_are_refreshed_with_their_providers_left_alone() -> None:
    assert site_objects(STATE, [SITES["lab-gw"]]) == [k8s("lab-gw", "model")["urn"]]
    assert site_objects(STATE, []) == []


def test_nothing_gone_names_no_site() -> None:
    assert lost_sites(STATE, {r["urn"] for r in STATE}) == ([], [])


class FakeStack:
    """The two calls clear_interrupted makes: export_stack and refresh (which may fail the way
    the engine does when a site's API is down)."""

    def __init__(self, pending: int, refresh_error: str | None):
        self.pending, self.refresh_error, self.refreshes = pending, refresh_error, []

    def export_stack(self):
        from types import SimpleNamespace

        ops = [{"type": "updating", "resource": {"urn": STATE[4]["urn"]}}] * self.pending
        return SimpleNamespace(deployment={"resources": STATE, "pending_operations": ops})

    def refresh(self, **kw):
        self.refreshes.append(kw)
        if self.refresh_error and "target" not in kw:
            raise auto.CommandError(auto.CommandResult(stdout="", stderr=self.refresh_error, code=255))
        self.pending = 0


DOWN = "error: failed to read resource state due to unreachable cluster. If the cluster was deleted, ..."


def test_an_interrupted_update_is_cleared_by_a_full_refresh_when_every_api_answers() -> None:
    stack, lines = FakeStack(1, None), []
    assert clear_interrupted(stack, lines.append) == "refreshed"
    assert len(stack.refreshes) == 1 and stack.refreshes[0]["clear_pending_creates"] is True
    assert "target" not in stack.refreshes[0]


def test_a_site_api_stopped_by_the_interrupted_install_falls_back_to_the_hosts_alone() -> None:
    stack, lines = FakeStack(1, DOWN), []
    assert clear_interrupted(stack, lines.append) == "hosts-only"
    hosts_only = stack.refreshes[1]
    assert hosts_only["clear_pending_creates"] is True
    assert hosts_only["target"] == [r["urn"] for r in STATE if r["type"] == "pulumi-python:dynamic:Resource"]
    assert any("Kubernetes API is down" in line for line in lines)


def test_other_refresh_failures_are_not_hidden_and_nothing_pending_means_no_refresh() -> None:
    stack = FakeStack(1, "error: ssh: handshake failed")
    with pytest.raises(auto.CommandError, match="handshake"):
        clear_interrupted(stack, print)
    assert len(stack.refreshes) == 1
    idle = FakeStack(0, DOWN)
    assert clear_interrupted(idle, print) == "" and idle.refreshes == []
