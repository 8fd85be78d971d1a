"""The team backend: state in an S3 bucket (moto's server standing in for S3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.s3]


def test_up_and_destroy_with_state_in_s3(make_pulumi, moto_s3, tmp_path: Path):
    endpoint, s3 = moto_s3
    s3.create_bucket(Bucket="edgefleet-state")
    host_port = endpoint.removeprefix("http://")
    p = make_pulumi(REPO / "tests/integration/projects/toolchain", copy=True)
    p.env.update(
        {
            "PULUMI_BACKEND_URL": (
                f"s3://edgefleet-state?endpoint={host_port}&disableSSL=true&s3ForcePathStyle=true&region=us-east-1"
            ),
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
    )
    p.run("login")
    p.run("stack", "init", "team", "--non-interactive")
    p.run("config", "set", "renderDir", str(tmp_path / "r"))
    p.run("up", "--yes", "--non-interactive")

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="edgefleet-state").get("Contents", [])]
    state_key = next(k for k in keys if k.endswith("/team.json"))
    state = json.loads(s3.get_object(Bucket="edgefleet-state", Key=state_key)["Body"].read())
    types = {r["type"] for r in state["checkpoint"]["latest"]["resources"]}
    assert {"pulumi-python:dynamic:Resource", "kubernetes:core/v1:ConfigMap"} <= types

    p.run("destroy", "--yes", "--non-interactive")
    state = json.loads(s3.get_object(Bucket="edgefleet-state", Key=state_key)["Body"].read())
    assert not state["checkpoint"]["latest"].get("resources")
    assert not (p.backend / ".pulumi").exists(), "nothing went to the local backend"
