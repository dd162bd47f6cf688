"""Decoding a message header: the type check of every field against its annotation, built once
per message class from :data:`tether.protocol.messages.REGISTRY` (the explicit allow-list from
wire type to class), so a handler never sees a wrong type."""

import types

from tether.errors import RemoteProtocolError
from tether.protocol import forwarding, sync_messages  # noqa: F401  (they register their messages)
from tether.protocol.messages import REGISTRY, Message
from tether.protocol.records import Field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def _checker(hint: object) -> "Callable[[Any], bool]":
    """A function telling whether a decoded JSON value has the annotated type ``hint``."""
    if isinstance(hint, types.UnionType):
        options = [_checker(arg) for arg in hint.__args__]
        return lambda value: any(check(value) for check in options)
    if hint is type(None):
        return lambda value: value is None
    if hint is bool:
        return lambda value: isinstance(value, bool)
    if hint is int:
        return lambda value: isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return lambda value: isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return lambda value: isinstance(value, str)
    origin = getattr(hint, "__origin__", None)
    if origin is list:
        exact = _exact_types(hint.__args__[0])  # type: ignore[attr-defined]
        if exact is not None:  # list[int], list[str], list[str | None]: one C-level pass
            return lambda value: isinstance(value, list) and set(map(type, value)) <= exact
        item = _checker(hint.__args__[0])  # type: ignore[attr-defined]
        return lambda value: isinstance(value, list) and all(item(v) for v in value)
    if origin is dict:
        key, item = (_checker(arg) for arg in hint.__args__)  # type: ignore[attr-defined]
        return lambda value: isinstance(value, dict) and all(
            key(k) and item(v) for k, v in value.items()
        )
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this module, not the peer


def _exact_types(hint: object) -> "frozenset[type] | None":
    """The exact types a decoded JSON scalar of type ``hint`` may have (``json`` makes no
    subclasses, and ``bool`` is its own type, so ``type(v) is int`` excludes it), or None."""
    options = hint.__args__ if isinstance(hint, types.UnionType) else (hint,)
    if all(option in (int, str, type(None)) for option in options):
        return frozenset(options)
    return None


# Per message class: each header field (not ``stream``) with its type check, built at import
# (cheap: a few closures per field, no code generation).
_SCHEMA: "dict[type[Message], dict[str, tuple[Field, Callable[[Any], bool]]]]" = {
    cls: {f.name: (f, _checker(f.type)) for f in cls.FIELDS if f.name != "stream"}
    for cls in REGISTRY.values()
}


def decode_message(header: "dict[str, Any]", stream: int) -> Message:
    """Build the message a header describes, or raise RemoteProtocolError saying what is wrong."""
    kind = header.get("t")
    if not isinstance(kind, str):
        raise RemoteProtocolError('header has no string "t" (message type)')
    cls = REGISTRY.get(kind)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {kind[:40]!r}")
    schema = _SCHEMA[cls]
    values = {}
    for name, value in header.items():
        known = schema.get(name)
        if known is None:
            continue  # "t", and unknown fields: ignored, so later versions can add optional ones
        if not known[1](value):
            raise RemoteProtocolError(f"{kind}: field {name!r} has the wrong type")
        values[name] = value
    if len(values) < len(schema):
        for name, (spec, _) in schema.items():
            if name not in values and spec.required:
                raise RemoteProtocolError(f"{kind}: missing field {name!r}")
    return cls(stream=stream, **values)
