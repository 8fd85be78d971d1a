"""Enforcement per stack: policies/config/<stack>.json read as the Pulumi CLI reads it."""

from __future__ import annotations

import json

import pytest

from policies.engine import (
    CONFIG_DIR,
    EXEMPTIONS_POLICY,
    PolicyConfigError,
    load_settings,
    settings_from_mapping,
    stack_settings,
)
from policies.rules import all_rules


def test_prod_makes_every_rule_mandatory():
    settings = stack_settings("prod")
    assert {settings.level(r) for r in all_rules()} == {"mandatory"}


def test_dev_makes_every_rule_advisory():
    settings = stack_settings("dev")
    assert {settings.level(r) for r in all_rules()} == {"advisory"}


def test_dev_and_prod_differ_only_in_enforcement():
    dev, prod = (json.loads((CONFIG_DIR / f"{s}.json").read_text()) for s in ("dev", "prod"))
    assert dev.pop("all") == "advisory" and prod.pop("all") == "mandatory"
    assert dev == prod
    # The exemption reporter informs; it must never block an exempted resource.
    assert dev[EXEMPTIONS_POLICY] == "advisory"


def test_rule_settings_reach_the_rule():
    rule = next(r for r in all_rules() if r.name == "image-from-allowed-registry")
    assert stack_settings("prod").rule_config(rule)["allowedRegistries"] == ["registry.edgefleet.local"]
    custom = settings_from_mapping(
        {"all": "advisory", rule.name: {"enforcementLevel": "mandatory", "allowedRegistries": ["ghcr.io/x"]}}
    )
    assert custom.level(rule) == "mandatory"
    assert custom.rule_config(rule) == {"allowedRegistries": ["ghcr.io/x"]}


def test_without_a_file_rules_keep_their_default_levels():
    settings = load_settings(None)
    for rule in all_rules():
        assert settings.level(rule) == rule.enforcement


def test_disabled_and_remediate_levels():
    settings = settings_from_mapping({"all": "remediate", "liveness-probe": "disabled"})
    assert {settings.level(r) for r in all_rules() if r.name != "liveness-probe"} == {"mandatory"}
    assert settings.level(next(r for r in all_rules() if r.name == "liveness-probe")) == "disabled"


@pytest.mark.parametrize(
    "raw, entry",
    [
        ({"all": "strict"}, "all"),
        ({"no-such-rule": "mandatory"}, "no-such-rule"),
        ({"hpa-bounds": {"enforcementLevel": "sometimes"}}, "hpa-bounds"),
        ({"hpa-bounds": {"maxReplica": 3}}, "hpa-bounds"),
        ({"hpa-bounds": 3}, "hpa-bounds"),
        ([], "file"),
    ],
)
def test_bad_config_names_the_entry_and_the_fix(raw, entry):
    with pytest.raises(PolicyConfigError) as e:
        settings_from_mapping(raw, source="x.json")
    assert e.value.entry == entry and "fix:" in str(e.value) and str(e.value).startswith("x.json: ")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(PolicyConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{all: advisory")
    with pytest.raises(PolicyConfigError, match="not readable JSON"):
        load_settings(tmp_path / "bad.json")
