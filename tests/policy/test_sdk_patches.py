"""The SDK functions the pack and the guard replace (policies/sdk_patches.py): written for the
pinned SDKs, checked against the installed ones, and what each replacement does. The pack's
replacement is exercised end to end by test_pack.py (secrets stay visible to the rules)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import sys
import types
from pathlib import Path

import pulumi
import pulumi.runtime.stack as sdk_stack
import pytest

from policies import sdk_patches
from policies.sdk_patches import WRITTEN_FOR, SdkChanged, check_target, on_failed_registrations
from tests.policy.conftest import REPO, pinned
from tests.unit.test_import_rules import OURS, modules_imported

PINS = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$", re.M)


def normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def requirement_pins(path: Path) -> dict[str, str]:
    return {normalized(name): version for name, version in PINS.findall(path.read_text())}


@pytest.mark.parametrize("distribution", WRITTEN_FOR)
def test_the_installed_sdk_is_the_one_the_patches_were_written_for(distribution: str) -> None:
    installed = importlib.metadata.version(distribution)
    assert installed == WRITTEN_FOR[distribution], (
        f"policies/sdk_patches.py was written for {distribution} {WRITTEN_FOR[distribution]}, but {installed} is "
        f"installed: check that each replaced function still works as the module says, then update WRITTEN_FOR"
    )


def test_the_patches_are_written_for_the_pinned_sdks() -> None:
    pins = {"pulumi": pinned("PULUMI_VERSION"), "pulumi-policy": pinned("PULUMI_POLICY_VERSION")}
    assert pins == WRITTEN_FOR, "scripts/versions.env pins other SDKs than policies/sdk_patches.py was written for"


def test_the_pack_requirements_are_exactly_what_policies_import() -> None:
    wanted = requirement_pins(REPO / "policies" / "requirements.txt")
    imported = {
        top
        for p in (REPO / "policies").rglob("*.py")
        for _, m in modules_imported(p)
        if (top := m.split(".")[0]) not in sys.stdlib_module_names and top not in OURS
    }
    owners = importlib.metadata.packages_distributions()
    needed = {normalized(owner) for top in imported for owner in owners[top]}
    assert set(wanted) == needed
    program = requirement_pins(REPO / "requirements.txt")
    assert wanted == {**{k: program[k] for k in wanted if k in program}, **WRITTEN_FOR}, (
        "pin what requirements.txt and scripts/versions.env pin"
    )


def test_a_changed_sdk_function_is_refused_naming_the_version_written_for() -> None:
    def caller() -> None:
        module.deserialize_properties({}, False)  # type: ignore[attr-defined]

    module = types.ModuleType("pulumi_policy.policy")
    module.deserialize_properties = lambda props, proxy_secrets=False, extra=None: props  # type: ignore[attr-defined]
    with pytest.raises(
        SdkChanged,
        match=r"written for pulumi-policy 1\.21\.0 .*takes \(props, proxy_secrets=False, "
        r"extra=None\), not \(props, proxy_secrets\)",
    ):
        check_target("pulumi-policy", module, "deserialize_properties", ("props", "proxy_secrets"), False, (caller,))
    module.deserialize_properties = lambda props, proxy_secrets=False: props  # type: ignore[attr-defined]
    check_target("pulumi-policy", module, "deserialize_properties", ("props", "proxy_secrets"), False, (caller,))
    with pytest.raises(SdkChanged, match="no longer look"):
        check_target(
            "pulumi-policy",
            module,
            "deserialize_properties",
            ("props", "proxy_secrets"),
            False,
            (test_the_patches_are_written_for_the_pinned_sdks,),
        )
    with pytest.raises(SdkChanged, match="has no function wait_for_rpcs"):
        check_target("pulumi", module, "wait_for_rpcs", ("await_all_outstanding_tasks",), True, ())


def test_a_failed_registration_is_raised_as_the_reason_given(monkeypatch: pytest.MonkeyPatch) -> None:
    async def failing(await_all_outstanding_tasks: bool = True) -> None:
        raise Exception("failed to register new resource")  # what the SDK raises after a refusal

    reason: list[BaseException] = []
    monkeypatch.setattr(sdk_stack, "wait_for_rpcs", failing)
    monkeypatch.setattr(sdk_patches, "_REASONS", [])
    on_failed_registrations(lambda: reason[0] if reason else None)
    with pytest.raises(Exception, match="failed to register new resource"):
        asyncio.run(sdk_stack.wait_for_rpcs())
    reason.append(pulumi.RunError("refused by policy"))
    with pytest.raises(pulumi.RunError, match=r"^refused by policy$"):
        asyncio.run(sdk_stack.wait_for_rpcs())
    # Wrapped, the SDK function keeps the shape the module checks for.
    check_target("pulumi", sdk_stack, "wait_for_rpcs", ("await_all_outstanding_tasks",), True, ())
