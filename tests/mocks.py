"""Pulumi programs under the SDK's mocks (``pulumi.runtime.set_mocks``): the one harness of the
unit tests that build resources."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pulumi


def run_mocked(
    program: Callable[[], Any],
    mocks: pulumi.runtime.Mocks,
    *,
    config: Mapping[str, str] | None = None,
    secret_keys: Iterable[str] = (),
    preview: bool = False,
    monitor: Any = None,
) -> Any:
    """Run ``program`` under ``mocks`` as project ``edgefleet``, stack ``unit``, with ``config`` as
    the project's config (the keys in ``secret_keys`` secret); ``preview`` as in `pulumi preview`,
    ``monitor`` in place of the SDK's mock monitor. Returns the resolved value of what ``program``
    returned."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(mocks, project="edgefleet", stack="unit", preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(
        {f"edgefleet:{k}": v for k, v in (config or {}).items()}, [f"edgefleet:{k}" for k in secret_keys]
    )
    result: dict[str, Any] = {}

    @pulumi.runtime.test
    def program_test() -> pulumi.Output[Any]:
        return pulumi.Output.from_input(program()).apply(lambda v: result.setdefault("value", v))

    program_test()
    return result.get("value")
