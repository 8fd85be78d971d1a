"""Site stacks and fleet locks on the team backend: an S3 bucket (moto's server standing in)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from .test_fleet_sim import Sim, sim  # noqa: F401 - the fixture

pytestmark = [pytest.mark.integration, pytest.mark.s3]


@pytest.fixture
def s3_sim(sim: Sim, moto_s3):  # noqa: F811
    endpoint, s3 = moto_s3
    s3.create_bucket(Bucket="edgefleet-state")
    host_port = endpoint.removeprefix("http://")
    sim.env.update(
        {
            "PULUMI_BACKEND_URL": (
                f"s3://edgefleet-state?endpoint={host_port}&disableSSL=true&s3ForcePathStyle=true&region=us-east-1"
            ),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
    )
    sim.sites = [s for s in sim.sites if s["name"] in ("canary", "a1", "gone")]
    sim.write()
    return sim, s3


def keys(s3) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket="edgefleet-state").get("Contents", [])]


def test_site_stacks_and_locks_live_in_the_bucket(s3_sim):
    sim, s3 = s3_sim  # noqa: F811 - the fixture's value
    results = sim.results("up", check=3)
    assert {k: v["status"] for k, v in results.items()} == {"canary": "succeeded", "a1": "succeeded", "gone": "offline"}
    stored = keys(s3)
    assert any(k.endswith("/sim.canary.json") for k in stored) and any(k.endswith("/sim.a1.json") for k in stored)
    assert not any(".edgefleet-fleet/locks/" in k for k in stored), "locks are released after the run"
    assert not (sim.root.parent / "state/.pulumi/stacks").exists(), "nothing went to a local backend"

    # A live lock in the bucket (this test's own process) keeps a second command off the site.
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": "fleet up sim",
        "started": "now",
        "expires": 9e12,
    }
    s3.put_object(Bucket="edgefleet-state", Key=".edgefleet-fleet/locks/fleetsim/sim.a1.json", Body=json.dumps(record))
    refused = sim.fleet("up", "--site", "a1")
    assert refused.returncode == 4 and "sim.a1 (held by 'fleet up sim'" in refused.stderr

    status = json.loads(sim.fleet("status", "--format", "json", check=0).stdout)
    by_site = {s["site"]: s for s in status["sites"]}
    assert by_site["a1"]["state"] == "progressing" and by_site["canary"]["state"] == "available"
