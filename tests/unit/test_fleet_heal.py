"""Which state entries a heal drops: the remote resources a host no longer has, and the
Kubernetes objects of exactly the sites that lost an install (never another site's)."""

from __future__ import annotations

from fleet.heal import lost_sites, site_objects, site_of

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
