"""Frozen records: what ``@dataclass(frozen=True)`` gives the protocol messages, at a fraction of
its import cost.

``dataclasses`` writes every class's ``__init__``, ``__eq__``, ``__hash__`` and ``__repr__`` as
source and compiles it, and it imports ``inspect`` (with ``ast``, ``dis``, ``tokenize``): about
10 ms for the messages, paid by every ``tether run`` before it sends a byte. A :class:`Record`
subclass instead reads its fields from its own annotations once, in ``__init_subclass__``, and
shares four generic methods. Type checkers see a frozen dataclass (``dataclass_transform``), so
constructors, defaults and keyword-only fields are still checked statically.

Semantics kept from frozen dataclasses: fields in definition order, base class fields first (a
redefined field keeps its place); positional or keyword construction, ``kw_only`` fields by
keyword only; ``default`` and ``default_factory``; assignment raises :class:`FrozenInstanceError`;
equality and hash over the field values, only between instances of the same class.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, TypeVar, dataclass_transform

    R = TypeVar("R", bound="Record")
else:

    def dataclass_transform(**_kwargs: object) -> Callable[[type], type]:
        return lambda cls: cls


class FrozenInstanceError(AttributeError):
    """A record's field was assigned or deleted (records are immutable, like their messages)."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One field: its name and annotation (set when its class is created) and its default."""

    __slots__ = ("default", "default_factory", "kw_only", "name", "type")

    def __init__(self, default: Any = MISSING, default_factory: Callable[[], Any] | None = None,
                 kw_only: bool = False) -> None:
        if default is not MISSING and default_factory is not None:
            raise ValueError("a field cannot have both a default and a default_factory")
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.kw_only = kw_only

    @property
    def required(self) -> bool:
        return self.default is MISSING and self.default_factory is None

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, type={self.type!r})"


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | None = None,
          kw_only: bool = False) -> Any:
    """Like :func:`dataclasses.field`: a default, a factory for mutable defaults, ``kw_only``."""
    return Field(default, default_factory, kw_only)


def _is_class_var(hint: Any) -> bool:
    if isinstance(hint, str):  # a postponed annotation
        return hint.startswith(("ClassVar", "typing.ClassVar"))
    typing = sys.modules.get("typing")  # a ClassVar needs typing: if it is not loaded, no hint is
    return typing is not None and (hint is typing.ClassVar
                                   or getattr(hint, "__origin__", None) is typing.ClassVar)


class _Frozen:
    """Immutability, equality (same class, same values), hash and repr over ``_names()``."""

    __slots__ = ()

    def _names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self._names()])

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, _Frozen)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._names())
        return f"{type(self).__qualname__}({values})"


@dataclass_transform(frozen_default=True, field_specifiers=(field, Field))
class Record(_Frozen):
    """Base of frozen records; subclasses declare fields as annotated class attributes."""

    if TYPE_CHECKING:
        FIELDS: ClassVar[tuple[Field, ...]]
        _NAMES: ClassVar[tuple[str, ...]]
        _POSITIONAL: ClassVar[tuple[Field, ...]]
        _BY_NAME: ClassVar[dict[str, Field]]
    FIELDS = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found = {f.name: f for f in cls.FIELDS}  # inherited ones first, in their order
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 (inspect is the cost)
        for name, hint in own.items():
            if _is_class_var(hint):
                continue
            value = cls.__dict__.get(name, MISSING)
            spec = value if isinstance(value, Field) else Field(default=value)
            spec.name, spec.type = name, hint
            if spec.default is MISSING:
                if name in cls.__dict__:
                    delattr(cls, name)
            else:
                setattr(cls, name, spec.default)
            found[name] = spec
        cls.FIELDS = tuple(found.values())
        cls._NAMES = tuple(found)
        cls._POSITIONAL = tuple(f for f in cls.FIELDS if not f.kw_only)
        cls._BY_NAME = found
        seen_default = None
        for f in cls._POSITIONAL:
            if not f.required:
                seen_default = f.name
            elif seen_default is not None:
                raise TypeError(f"{cls.__name__}: non-default field {f.name!r} follows "
                                f"default field {seen_default!r}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        values = self.__dict__
        if len(args) > len(cls._POSITIONAL):
            raise TypeError(f"{cls.__name__}() takes {len(cls._POSITIONAL)} positional "
                            f"arguments but {len(args)} were given")
        for spec, value in zip(cls._POSITIONAL, args, strict=False):
            values[spec.name] = value
        for name, value in kwargs.items():
            if name not in cls._BY_NAME:
                raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{cls.__name__}() got multiple values for argument {name!r}")
            values[name] = value
        if len(values) < len(cls.FIELDS):
            for spec in cls.FIELDS:
                if spec.name in values:
                    continue
                if spec.default_factory is not None:
                    values[spec.name] = spec.default_factory()
                elif spec.default is not MISSING:
                    values[spec.name] = spec.default
                else:
                    raise TypeError(f"{cls.__name__}() missing required argument: "
                                    f"{spec.name!r}")

    def _names(self) -> tuple[str, ...]:
        return self._NAMES


def fields(record: Record | type[Record]) -> tuple[Field, ...]:
    """The fields of a record or record class, in order (like :func:`dataclasses.fields`)."""
    return record.FIELDS


def replace(record: R, **changes: Any) -> R:
    """A copy of ``record`` with some fields changed (like :func:`dataclasses.replace`)."""
    values = {f.name: record.__dict__[f.name] for f in record.FIELDS}
    values.update(changes)
    return type(record)(**values)


class Value(_Frozen):
    """Base of small immutable classes made once per frame (``Data``, ``Frame``), where even a
    record's generic ``__init__`` would show: the subclass lists its fields in ``ORDER`` (also
    its ``__slots__``) and writes a plain ``__init__`` with :func:`init`."""

    __slots__ = ()
    if TYPE_CHECKING:
        ORDER: ClassVar[tuple[str, ...]]

    def _names(self) -> tuple[str, ...]:
        return self.ORDER

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), self._values()


init = object.__setattr__  # how a Value's __init__ stores its fields
