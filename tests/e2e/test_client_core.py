"""The client's public names end to end: ``run(check=True)`` raising CommandFailed with the
command's status, signal and output; ``Process.wait()`` returning the public ExitInfo; one
ConnectOptions object doing what the keyword arguments do, for connect, SyncConnection and
connect_many alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

import tether
from tether.client.api import ExitInfo
from tether.client.core import ClientCore
from tether.client.options import ConnectOptions
from tether.errors import (
    CommandFailed,
    ConnectionBroken,
    NotAuthorized,
    RemoteError,
    ServerShuttingDown,
    SpawnFailed,
)
from tether.protocol.connection import Connection as ProtocolState
from tether.protocol.messages import Close, Error, Exit, Ping, Role, Welcome

if TYPE_CHECKING:
    from conftest import Client
    from tether.client.api import Connection


async def test_check_raises_command_failed_with_status_and_output(conn: Connection) -> None:
    with pytest.raises(CommandFailed) as caught:
        await conn.run("echo out; echo err >&2; exit 3", check=True)
    exc = caught.value
    assert isinstance(exc, RemoteError)  # code catching the old class still catches it
    assert (exc.status, exc.signal, exc.stdout, exc.stderr) == (3, None, b"out\n", b"err\n")
    assert "exited with status 3" in str(exc)


async def test_check_reports_the_signal_that_killed_the_command(conn: Connection) -> None:
    with pytest.raises(CommandFailed) as caught:
        await conn.run(["sh", "-c", "printf partial; kill -TERM $$"], check=True)
    assert (caught.value.status, caught.value.signal, caught.value.stdout) == (
        143, 15, b"partial")
    assert "signal 15" in str(caught.value)


async def test_check_passes_a_success_through(conn: Connection) -> None:
    assert (await conn.run("echo fine", check=True)).stdout == b"fine\n"


async def test_wait_returns_the_public_exit_info(conn: Connection) -> None:
    async with conn.stream("exit 5") as proc:
        info = await proc.wait()
    assert isinstance(info, ExitInfo)
    assert (info.status, info.signal, info.timed_out, info.ok) == (5, None, False, False)
    assert info.duration >= 0


async def test_options_object_connects_like_keywords(client: Client) -> None:
    options = ConnectOptions(port=client.port, home=client.home, keepalive=5)
    async with tether.connect("127.0.0.1", options=options) as conn:
        assert (await conn.run("echo via-options")).stdout == b"via-options\n"
        assert conn._framed.keepalive == 5
    async with tether.connect("127.0.0.1", options=options, keepalive=0) as conn:
        assert not conn._framed.keepalive  # a keyword given wins over the object


def test_sync_connection_takes_the_options_object(client: Client) -> None:
    options = ConnectOptions(port=client.port, home=client.home)
    with tether.SyncConnection("127.0.0.1", options=options) as conn:
        assert conn.run("echo sync").stdout == b"sync\n"


async def test_connect_many_takes_keepalive_and_options(client: Client) -> None:
    fleet = tether.connect_many(["127.0.0.1"], port=client.port, home=client.home,
                                keepalive=7)
    assert fleet.options.keepalive == 7 and fleet.options.port == client.port
    async with fleet:
        result = await fleet.run("echo fleet")
    assert [h.stdout for h in result.hosts] == [b"fleet\n"]


def test_options_are_frozen_and_checked() -> None:
    options = ConnectOptions()
    with pytest.raises(AttributeError):
        options.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="keepalive"):
        ConnectOptions(keepalive=-1)
    assert options.with_(port=None, accept_new=True) == ConnectOptions(accept_new=True)


# --- the I/O-free client core, without sockets ----------------------------------------------------


def core() -> ClientCore:
    return ClientCore(ProtocolState(Role.CLIENT))


def test_core_hands_the_first_event_to_the_handshake() -> None:
    c = core()
    welcome = Welcome(version=1, server_name="s")
    assert c.route(welcome) is welcome  # before the welcome: the handshake's answer
    assert c.answer(welcome, authenticated=True) is welcome and c.welcome is welcome
    assert c.route(Ping(token=3)) is None  # after it: the connection's own chores


def test_core_raises_a_stream_zero_error_as_its_class() -> None:
    c = core()
    c.answer(Welcome(version=1), authenticated=False)
    with pytest.raises(ServerShuttingDown):
        c.route(Error(code="shutting_down", message="bye"))


def test_core_answer_refusal_and_outcome() -> None:
    c = core()
    with pytest.raises(NotAuthorized, match="not authorized: no"):
        c.answer(Error(code="not_authorized", message="no"), authenticated=True)
    broken = ConnectionBroken("reset")
    refused = c.refused(broken, authenticated=True, own_fingerprint="SHA256:me")
    assert isinstance(refused, NotAuthorized) and "SHA256:me" in str(refused)
    assert c.refused(broken, authenticated=False, own_fingerprint="") is broken  # plaintext
    assert ClientCore.outcome(Exit(status=None, signal=9, stream=1)) == ExitInfo(137, 9)
    with pytest.raises(SpawnFailed):
        ClientCore.outcome(Error(code="spawn_failed", message="no such program", stream=1))


def test_core_opens_and_ends_streams_once() -> None:
    shell_form, argv_form = core().exec("echo hi"), core().exec(["ls", "-l"], stdin=False)
    assert (shell_form.argv, shell_form.shell, argv_form.argv, argv_form.shell) == (
        ["echo hi"], True, ["ls", "-l"], False)
    c = core()
    request = c.exec("true")
    assert c.streams == {request.stream}
    assert c.end(request.stream) == Close(stream=request.stream)
    assert c.end(request.stream) is None and not c.streams  # ended already: no second close
