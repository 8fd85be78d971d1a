"""The program's guard rails before any resource: the dev passphrase never protects a prod
inventory, secrets are never suggested on a command line, and the command deadline is wired."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

import components.program as program
from components.program import DEV_PASSPHRASE
from tests.unit.test_topology import BASE, build_program_error, run

DEV = BASE.replace("environment: prod", "environment: dev")


@pytest.fixture(autouse=True)
def _no_passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE_FILE", raising=False)


@pytest.mark.parametrize("stack", ["prod", "prod-eu", "plants"])
def test_the_dev_passphrase_never_protects_a_prod_inventory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: str
) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", DEV_PASSPHRASE)
    message = build_program_error(tmp_path, BASE, stack=stack, fleetSecret="s")
    assert message.startswith(
        f"Pulumi.{stack}.yaml: PULUMI_CONFIG_PASSPHRASE: the public dev passphrase cannot protect"
    )
    assert "(fix: " in message


def test_the_dev_passphrase_in_a_passphrase_file_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    phrase = tmp_path / "passphrase"
    phrase.write_text(DEV_PASSPHRASE + "\n")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(phrase))
    message = build_program_error(tmp_path, BASE, stack="prod-eu", fleetSecret="s")
    assert message.startswith(
        f"Pulumi.prod-eu.yaml: PULUMI_CONFIG_PASSPHRASE_FILE ({phrase}): the public dev passphrase"
    )


def test_a_dev_inventory_may_use_the_dev_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", DEV_PASSPHRASE)
    # The next guard (no fleetSecret) answers: the passphrase was accepted.
    assert build_program_error(tmp_path, DEV, stack="dev").startswith(
        "Pulumi.dev.yaml: config edgefleet:fleetSecret is not set"
    )


def test_a_prod_inventory_with_its_own_passphrase_passes_the_guard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    phrase = tmp_path / "passphrase"
    phrase.write_text("a-real-prod-passphrase\n")
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE_FILE", str(phrase))
    assert build_program_error(tmp_path, BASE, stack="prod-eu").startswith(
        "Pulumi.prod-eu.yaml: config edgefleet:fleetSecret is not set"
    )


def test_the_fleet_secret_fix_passes_the_secret_on_stdin(tmp_path: Path) -> None:
    message = build_program_error(tmp_path, DEV, stack="dev")
    fix = message.split("(fix: ", 1)[1]
    assert "| pulumi config set --secret fleetSecret" in fix
    assert "$(" not in fix and "`" not in fix, "a generated secret would land on a command line"


def _fleet_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: str) -> Any:
    """The FleetArgs build_fleet hands to EdgeFleet for a valid dev inventory."""
    captured: list[Any] = []

    class Capture:
        def __init__(self, name: str, args: Any) -> None:
            captured.append(args)
            self.sites: dict[str, Any] = {}

    monkeypatch.setattr(program, "EdgeFleet", Capture)
    monkeypatch.setattr(program, "plan_fleet_workloads", lambda *a, **k: {})
    monkeypatch.setattr(program, "fetch_artifacts", lambda *a: None)  # not about downloads
    monkeypatch.setattr(program, "workload_settings", lambda *a, **k: None)
    inventory = tmp_path / "unit.yaml"
    inventory.write_text(DEV)
    run(
        lambda: program.build_fleet(pulumi.Config(), "dev"),
        {"inventory": str(inventory), "fleetSecret": "s", "sshKeyFleet": "k", **config},
        secret_keys=("fleetSecret", "sshKeyFleet"),
    )
    (args,) = captured
    return args


def test_command_timeout_is_read_from_stack_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deadlines(args: Any) -> set[int | None]:
        return {h.target.command_timeout_s for site in args.sites for h in site.hosts}

    assert deadlines(_fleet_args(tmp_path, monkeypatch)) == {None}
    assert deadlines(_fleet_args(tmp_path, monkeypatch, commandTimeoutSeconds="900")) == {900}


def test_a_command_timeout_too_short_for_any_step_is_refused(tmp_path: Path) -> None:
    message = build_program_error(tmp_path, DEV, stack="dev", fleetSecret="s", commandTimeoutSeconds="5")
    assert message.startswith("Pulumi.dev.yaml: config edgefleet:commandTimeoutSeconds: 5 is too short")
