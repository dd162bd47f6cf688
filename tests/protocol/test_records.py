"""Messages are frozen records: what the protocol relies on from them, checked on real messages."""

from __future__ import annotations

import pickle
import sys
import textwrap

import pytest

from tether.protocol.messages import Data, Exec, Exit, Hello, Ping, Pong, Welcome
from tether.protocol.records import FrozenInstanceError, Record, field, fields, replace


def test_fields_in_order_with_the_base_field_first() -> None:
    assert [f.name for f in fields(Exit)] == ["stream", "status", "signal", "timed_out",
                                              "duration"]
    assert [f.name for f in fields(Exit(0))] == [f.name for f in fields(Exit)]
    assert [f.required for f in fields(Exit)] == [False, True, False, False, False]


def test_positional_keyword_and_defaults() -> None:
    msg = Exit(3, 9, stream=5)
    assert (msg.stream, msg.status, msg.signal, msg.timed_out, msg.duration) == (5, 3, 9, False,
                                                                                 0.0)
    assert Exit(status=3, signal=9, stream=5) == msg


@pytest.mark.parametrize("build, error", [
    (lambda: Exit(), "missing required argument: 'status'"),
    (lambda: Exit(1, 2, False, 0.5, 7), "takes 4 positional arguments but 5 were given"),
    (lambda: Exit(1, status=1), "multiple values for argument 'status'"),
    (lambda: Exit(1, bogus=1), "unexpected keyword argument 'bogus'"),
])
def test_bad_construction_is_a_type_error(build: object, error: str) -> None:
    with pytest.raises(TypeError, match=error):
        build()  # type: ignore[operator]


def test_frozen() -> None:
    msg = Hello(versions=[1])
    with pytest.raises(FrozenInstanceError):
        msg.software = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del msg.software  # type: ignore[misc]
    data = Data(1, 1, b"x")
    with pytest.raises(FrozenInstanceError):
        data.data = b"y"  # type: ignore[misc]
    assert msg.software == "" and data.data == b"x"


def test_default_factories_give_each_message_its_own_value() -> None:
    a, b = Welcome(version=1), Welcome(version=1)
    assert a.permissions == [] and a.permissions is not b.permissions
    assert Exec(argv=["x"]).env is not Exec(argv=["x"]).env


def test_equality_and_hash_are_by_class_and_values() -> None:
    assert Ping(token=1) == Ping(token=1) and hash(Ping(token=1)) == hash(Ping(token=1))
    assert Ping(token=1) != Ping(token=2)
    assert Ping(token=1) != Pong(token=1)
    assert Ping(token=1, stream=0) != Ping(token=1, stream=2)
    assert Data(1, 1, b"x") == Data(1, 1, b"x") and Data(1, 1, b"x") != Data(1, 2, b"x")
    assert len({Data(1, 1, b"x"), Data(1, 1, b"x")}) == 1
    with pytest.raises(TypeError):
        hash(Hello(versions=[1]))  # a list field is unhashable, as in a frozen dataclass


def test_repr_names_every_field() -> None:
    assert repr(Ping(token=4)) == "Ping(stream=0, token=4)"
    assert repr(Data(1, 2, b"x")) == "Data(stream=1, channel=2, data=b'x')"


def test_replace_and_pickle() -> None:
    msg = Exec(argv=["ls"], cwd="/tmp", stream=3)
    moved = replace(msg, stream=5)
    assert moved.stream == 5 and moved.argv == ["ls"] and msg.stream == 3
    assert pickle.loads(pickle.dumps(msg)) == msg


def test_header_carries_fields_in_order_without_stream() -> None:
    assert list(Exit(0, stream=3).to_header()) == ["t", "status", "signal", "timed_out",
                                                   "duration"]


def test_a_required_field_after_a_default_is_refused() -> None:
    with pytest.raises(TypeError, match="non-default field 'b' follows default field 'a'"):
        class Bad(Record):
            a: int = 0
            b: int


def test_kw_only_fields_may_follow_defaults_and_class_vars_are_not_fields() -> None:
    from typing import ClassVar

    class Point(Record):
        LIMIT: ClassVar[int] = 3
        x: int = 0
        tag: str = field(kw_only=True)

    assert [f.name for f in fields(Point)] == ["x", "tag"]
    assert Point(tag="a") == Point(0, tag="a")


def test_importing_messages_needs_neither_dataclasses_nor_typing() -> None:
    """What makes ``tether run`` start fast: checked in a fresh interpreter."""
    import subprocess

    code = textwrap.dedent("""
        import sys
        import tether.protocol.messages
        print(sorted(m for m in ("dataclasses", "typing", "inspect") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
