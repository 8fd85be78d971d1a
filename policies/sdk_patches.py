"""The two places where the pack and the guard replace a function inside a Pulumi SDK.

Neither SDK offers a public way to do what they need:

* pulumi-policy hands a policy its properties with every secret already unwrapped, and has no
  option or hook to keep the marker (pulumi/pulumi-policy#241), so a policy cannot tell a secret
  SSH key from a plain one. :func:`replace_policy_deserializer` swaps the analyzer's
  ``deserialize_properties``, which ``Analyze`` and ``AnalyzeStack`` look up at every call.
* A resource transform can stop a resource only by raising. The SDK carries the exception to the
  engine and back, and the program then fails with the registration's generic error, which the
  language host prints as a traceback; a program cannot end with its own message alone
  (``pulumi.log.error`` does not stop it: pulumi/pulumi#10154). :func:`on_failed_registrations`
  wraps ``pulumi.runtime.stack.wait_for_rpcs``, which ``run_pulumi_func`` awaits once the program
  has run, so that such a failure is raised as the program's own error instead.

Both are written for the SDK versions in :data:`WRITTEN_FOR` (the pins of scripts/versions.env and
policies/requirements.txt). Importing this module checks that each replaced function still exists
with the signature the replacement assumes and is still looked up where it is replaced; an SDK that
changed raises :class:`SdkChanged`. tests/policy/test_sdk_patches.py fails when another SDK
version is installed, so that a version bump re-reads this module.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import FunctionType, ModuleType
from typing import Any

import pulumi.runtime.stack as sdk_stack
import pulumi_policy.policy as analyzer

WRITTEN_FOR = {"pulumi": "3.259.0", "pulumi-policy": "1.21.0"}

Deserializer = Callable[[dict[str, Any], bool], Mapping[str, Any]]


class SdkChanged(RuntimeError):
    """An SDK function replaced here no longer has the shape the replacement was written for."""


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def check_target(
    distribution: str,
    module: ModuleType,
    name: str,
    params: tuple[str, ...],
    coroutine: bool,
    callers: tuple[object, ...],
) -> None:
    """Raise :class:`SdkChanged` unless ``module.name`` is a function (a coroutine function when
    ``coroutine``) taking exactly ``params``, and each of ``callers`` looks it up by that name."""
    target = getattr(module, name, None)
    wanted = f"{module.__name__}.{name}({', '.join(params)})"
    problem = None
    if not callable(target):
        problem = f"{module.__name__} has no function {name}"
    elif tuple(inspect.signature(target).parameters) != params:
        problem = f"{module.__name__}.{name} takes {inspect.signature(target)}, not ({', '.join(params)})"
    elif inspect.iscoroutinefunction(target) != coroutine:
        problem = f"{module.__name__}.{name} is {'not ' if coroutine else ''}a coroutine function"
    else:
        missing = [
            getattr(f, "__qualname__", repr(f))
            for f in callers
            if not isinstance(f, FunctionType) or name not in f.__code__.co_names
        ]
        if missing:
            problem = f"{', '.join(missing)} no longer look(s) up {name}"
    if problem is not None:
        raise SdkChanged(
            f"policies/sdk_patches.py replaces {wanted}, written for {distribution} "
            f"{WRITTEN_FOR[distribution]} ({_installed(distribution)} is installed): {problem} "
            f"(fix: find the SDK's new place for it, adapt the replacement, update WRITTEN_FOR)"
        )


def _check() -> None:
    check_target(
        "pulumi-policy",
        analyzer,
        "deserialize_properties",
        ("props", "proxy_secrets"),
        False,
        (analyzer._PolicyAnalyzerServicer.Analyze, analyzer._PolicyAnalyzerServicer.AnalyzeStack),
    )
    check_target(
        "pulumi", sdk_stack, "wait_for_rpcs", ("await_all_outstanding_tasks",), True, (sdk_stack.run_pulumi_func,)
    )


_check()


def replace_policy_deserializer(deserialize: Deserializer) -> None:
    """Make the pack's analyzer build every policy's properties with ``deserialize``."""
    # The SDK declares it returning a dict; the analyzer only reads the mapping.
    analyzer.deserialize_properties = deserialize  # type: ignore[attr-defined,assignment]


_REASONS: list[Callable[[], BaseException | None]] = []


def on_failed_registrations(reason: Callable[[], BaseException | None]) -> None:
    """When the program's outstanding registrations fail, raise what ``reason()`` returns in place
    of that failure (a ``pulumi.RunError`` is shown as its message alone); when it returns None,
    the failure stands. Installing the same ``reason`` again changes nothing."""
    if reason not in _REASONS:
        _REASONS.append(reason)
    if getattr(sdk_stack.wait_for_rpcs, "_edgefleet_wrapper", False):
        return
    original: Callable[..., Awaitable[None]] = sdk_stack.wait_for_rpcs

    @functools.wraps(original)
    async def wait_for_rpcs(*args: Any, **kwargs: Any) -> None:
        try:
            await original(*args, **kwargs)
        except Exception:
            for give in _REASONS:
                if (error := give()) is not None:
                    raise error from None
            raise

    wait_for_rpcs._edgefleet_wrapper = True  # type: ignore[attr-defined]
    sdk_stack.wait_for_rpcs = wait_for_rpcs
