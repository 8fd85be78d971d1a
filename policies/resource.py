"""The neutral resource model every rule reads, whoever calls it.

A :class:`Resource` is a type token, a name, a URN and a props tree of plain JSON values,
where two markers may stand in for a value:

* :data:`UNKNOWN` - the value is computed later (``pulumi preview``, an unresolved
  ``pulumi.Output``). Rules never fail on it; the value is checked again at update.
* :class:`Secret` - the value is a Pulumi secret (possibly with unreadable content, e.g. the
  ciphertext of a stack export, which is then ``Secret(UNKNOWN)``).

:func:`neutralize` turns every wire form this project meets into that model: the CrossGuard
analyzer's property structs, the Python SDK's transform arguments and ``pulumi stack export``
files. The accessors (:func:`dig`, :func:`items`, :func:`is_secret_at`) let rules read the tree
without caring whether a container on the path is secret or unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The engine's wire markers (sdk/go/common/resource/properties.go).
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
ASSET_SIG = "c44067f5952c0a294b673a41bacd8c17"
ARCHIVE_SIG = "0def7320c3a5731c473e5ecbe6d01bc7"
RESOURCE_SIG = "5cf8f73096256a8f31e491e813e4eb8e"
OUTPUT_SIG = "d0e6a833031e9bbcd3f4e8bde6ca49a4"
UNKNOWN_SENTINELS = frozenset(
    {
        "1c4a061d-8072-4f0a-a4cb-0ff528b18fe7",  # boolean
        "3eeb2bf0-c639-47a8-9e75-3b44932eb421",  # number
        "04da6b54-80e4-46f7-96ec-b56ff0331ba9",  # string (the engine's default for any type)
        "6a19a0b0-7e62-4c92-b797-7f8e31da9cc2",  # array
        "030794c1-ac77-496b-92df-f27374a8bd58",  # asset
        "e48ece36-62e2-4504-bad9-02848725956a",  # archive
        "dd056dcd-154b-4c76-9bd3-c8f88648b5ff",  # object
    }
)


class UnknownType:
    """The type of :data:`UNKNOWN`, its only instance."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


UNKNOWN: Any = UnknownType()
"""A value not known yet (preview). Compare with ``is``. Typed ``Any``: it stands in for a value of
any type; a function that returns the marker itself says ``UnknownType``."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret value; ``value`` may itself be :data:`UNKNOWN` when it cannot be read."""

    value: Any

    def __repr__(self) -> str:  # never print what a secret holds
        return "Secret(***)"


DYNAMIC = "pulumi-python:dynamic:Resource"
PATCH_SUFFIX = "Patch"
_ABSENT: Any = object()


class Partial(dict[str, Any]):
    """An object a patch resource applies (``DeploymentPatch``...): a field it leaves out keeps
    whatever the live object has, which is not known here, so reading one gives UNKNOWN. Rules
    then judge only what the patch sets, as they judge any preview value."""

    __slots__ = ()

    def get(self, key: Any, default: Any = _ABSENT) -> Any:
        if key in self:
            return self[key]
        return UNKNOWN if default is _ABSENT else default


def partial(value: Any) -> Any:
    """``value`` with every mapping inside it (secrets included) read as :class:`Partial`."""
    if isinstance(value, Secret):
        return Secret(partial(value.value))
    if isinstance(value, Mapping):
        return Partial({k: partial(v) for k, v in value.items()})
    if isinstance(value, list):
        return [partial(v) for v in value]
    return value


def is_patch(type_: str) -> bool:
    """Whether a type token is one of the Kubernetes provider's patch resources."""
    return type_.startswith("kubernetes:") and type_.endswith(PATCH_SUFFIX) and type_ != f"kubernetes:{PATCH_SUFFIX}"


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource as the rules see it.

    ``type`` is a Pulumi type token (``kubernetes:apps/v1:Deployment``, ``edge:site:EdgeSite``);
    ``source`` says where it was read (``file.yaml:12``, a URN, a live cluster path);
    ``cluster`` tells Kubernetes objects of different clusters apart (the provider's URN in a
    stack, empty for plain manifests), so stack rules never mix two sites' namespaces.
    """

    type: str
    name: str
    props: Mapping[str, Any]
    urn: str = ""
    source: str = ""
    parent: str = ""
    cluster: str = ""
    kind: str = field(init=False)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        # Remote commands are Pulumi dynamic resources; their "kind" input says which.
        if self.type == DYNAMIC and isinstance(self.props.get("kind"), str):
            object.__setattr__(self, "type", self.props["kind"])
        kind = self.type.rsplit(":", 1)[-1]
        object.__setattr__(self, "kind", kind)
        # Kubernetes rules match on kind whatever the API group version; others on the token.
        object.__setattr__(self, "key", kind if self.type.startswith("kubernetes:") else self.type)
        if is_patch(self.type) and not isinstance(self.props, Partial):
            object.__setattr__(self, "props", partial(self.props))

    @property
    def label(self) -> str:
        """A short human name: ``Deployment default/web`` or ``edge:site:EdgeSite plant-1``."""
        if self.type.startswith("kubernetes:"):
            ns = namespace_of(self)
            name = dig(self.props, "metadata", "name")
            name = name if isinstance(name, str) and name else self.name
            return f"{self.kind} {ns + '/' if isinstance(ns, str) and ns else ''}{name}"
        return f"{self.type} {self.name}"


def is_unknown(value: Any) -> bool:
    return value is UNKNOWN


def reveal(value: Any) -> Any:
    """The value inside any number of :class:`Secret` wrappers."""
    while isinstance(value, Secret):
        value = value.value
    return value


def dig(obj: Any, *path: str | int) -> Any:
    """The value at ``path`` (keys and list indexes), seen through secrets.

    Returns ``None`` when a step is missing or of the wrong shape and :data:`UNKNOWN` as soon
    as a step is unknown, so ``dig(...) is True`` style tests never fail on unknowns.
    """
    cur = reveal(obj)
    for step in path:
        if cur is UNKNOWN:
            return UNKNOWN
        if isinstance(step, int):
            if not isinstance(cur, list) or not -len(cur) <= step < len(cur):
                return None
            cur = reveal(cur[step])
        else:
            if not isinstance(cur, Mapping):
                return None
            cur = reveal(cur.get(step))
    return cur


def items(value: Any) -> list[Any]:
    """A list's elements (revealed); ``[]`` for a missing, unknown or non-list value."""
    value = reveal(value)
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return []


def mapping(value: Any) -> Mapping[str, Any]:
    """A mapping (revealed); ``{}`` for a missing, unknown or non-mapping value."""
    value = reveal(value)
    return value if isinstance(value, Mapping) else {}


def contains_unknown(value: Any) -> bool:
    """True if ``value`` or anything inside it is unknown."""
    value = reveal(value)
    if value is UNKNOWN:
        return True
    if isinstance(value, Mapping):
        return any(contains_unknown(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_unknown(v) for v in value)
    return False


def is_secret_at(obj: Any, *path: str | int) -> bool | None:
    """Whether the value at ``path`` is protected as a secret (itself or any container on the
    way, since the engine may push secretness up to a parent). ``None`` if that is not known."""
    cur = obj
    for step in path:
        if isinstance(cur, Secret):
            return True
        if cur is UNKNOWN:
            return None
        if isinstance(step, int):
            cur = cur[step] if isinstance(cur, list) and -len(cur) <= step < len(cur) else None
        else:
            cur = cur.get(step) if isinstance(cur, Mapping) else None
    if isinstance(cur, Secret):
        return True
    if cur is UNKNOWN:
        return None
    return False


def given(obj: Any, *path: str) -> Any:
    """Like :func:`dig`, but a key a patch leaves out is ``None`` (not set by this resource)
    rather than UNKNOWN."""
    cur = reveal(obj)
    for step in path:
        if cur is UNKNOWN:
            return UNKNOWN
        cur = reveal(cur.get(step, None)) if isinstance(cur, Mapping) else None
    return cur


def namespace_of(resource: Resource) -> Any:
    """``metadata.namespace`` of a Kubernetes resource (``None`` when unset)."""
    return dig(resource.props, "metadata", "namespace")


def neutralize(value: Any) -> Any:
    """Any wire form of a property value as the neutral model (plain JSON + markers).

    Handles: engine structs with signature keys (secrets, assets, archives, resource
    references, output values), unknown sentinels, the Python SDK's ``Unknown`` objects and
    rpc secret dicts, pulumi-policy's ``Secret`` wrapper and property proxies, and
    ``pulumi stack export`` secrets (``ciphertext`` or ``plaintext``).
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)  # numbers cross the Pulumi wire as floats: 2.0 is the 2 that was written
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return UNKNOWN if value in UNKNOWN_SENTINELS else value
    if isinstance(value, (Secret, UnknownType)):
        return value
    if isinstance(value, Mapping):
        target = _proxy_target(value)
        if target is not None:
            return neutralize(target)
        sig = value.get(SIG_KEY)
        if sig is not None:
            return _neutralize_signed(sig, value)
        return {str(k): neutralize(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        target = _proxy_target(value)
        if target is not None:
            return neutralize(target)
        return [neutralize(v) for v in value]
    name = type(value).__name__
    if name == "Unknown":  # pulumi.output.Unknown, what the SDK deserializes unknowns to
        return UNKNOWN
    if name == "Secret" and hasattr(value, "value"):  # pulumi_policy.Secret
        return Secret(neutralize(value.value))
    # Assets, archives, resources and anything else opaque: rules only need to know it is set.
    return f"<{name}>"


def _neutralize_signed(sig: Any, value: Mapping[str, Any]) -> Any:
    if sig == SECRET_SIG:
        if "value" in value:
            return Secret(neutralize(value["value"]))
        if "plaintext" in value:  # stack export with --show-secrets: a JSON-encoded value
            try:
                return Secret(neutralize(json.loads(value["plaintext"])))
            except (TypeError, ValueError):
                return Secret(value["plaintext"])
        return Secret(UNKNOWN)  # ciphertext only: secret, content unreadable here
    if sig == OUTPUT_SIG:
        if "value" not in value:
            inner: Any = UNKNOWN
        else:
            inner = neutralize(value["value"])
        return Secret(inner) if value.get("secret") is True else inner
    if sig == RESOURCE_SIG:
        return str(value.get("urn", "<resource>"))
    if sig in (ASSET_SIG, ARCHIVE_SIG):
        return "<asset>"
    return {str(k): neutralize(v) for k, v in value.items() if k != SIG_KEY}


def _proxy_target(value: Any) -> Any:
    """The wrapped container of a pulumi-policy property proxy, else ``None``."""
    if type(value).__module__.startswith("pulumi_policy"):
        try:
            return value["__target"]
        except (KeyError, TypeError, IndexError):
            return None
    return None
