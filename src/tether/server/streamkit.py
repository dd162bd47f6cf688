"""The pieces of a session's streams that are not the session: what it needs of an open
operation (:class:`StreamHandler`), a server-driven one (:class:`TaskStream`), and how a request
and an error are put for the audit log and the client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Protocol

from tether.errors import RemoteError, TetherError
from tether.protocol import Message
from tether.server.context import Peer
from tether.server.trust import own_account
from tether.storage.errors import disk_error


class StreamHandler(Protocol):
    """What the session needs of an open operation."""

    def feed(self, data: bytes | bytearray) -> None: ...
    def handle(self, msg: Message) -> Awaitable[None] | None: ...
    def abandon(self) -> None: ...


class TaskStream:
    """A server-driven operation (get, list, fetch): the client only ever ends it early (the
    protocol core refuses its DATA and any other message on these streams)."""

    task: asyncio.Task[None] | None = None

    def feed(self, data: bytes | bytearray) -> None:
        pass

    def handle(self, msg: Message) -> None:
        pass

    def abandon(self) -> None:
        if self.task is not None:
            self.task.cancel()


def sendable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry (lone surrogates) escaped as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def request_fields(msg: Message) -> dict[str, Any]:
    """What an opening request asked, for the audit record of its refusal."""
    fields = {"op": msg.TYPE}
    for name in ("argv", "cwd", "path", "name", "target"):
        value = getattr(msg, name, None)
        if value is not None:
            fields[name] = value
    return fields


def as_remote(exc: BaseException) -> TetherError:
    """An error that ends one stream, as the client should see it (one line, a wire code)."""
    if isinstance(exc, RemoteError):
        return exc
    if isinstance(exc, OSError):
        return disk_error(exc, str(exc.filename or "operation"))
    return RemoteError(str(exc) or exc.__class__.__name__)


VERBS = {"exec": "run commands", "shell": "open shells", "put": "upload files",
          "get": "download files"}


def identity_fields(peer: Peer) -> dict[str, Any]:
    """What the audit log records of a session's certificate (when CA-signed) and the Unix
    account its work runs as (the server's own when it was not mapped)."""
    fields: dict[str, Any] = {}
    if peer.serial is not None:
        fields.update(serial=peer.serial, principals=list(peer.principals))
    fields["user"] = peer.user or own_account()
    return fields
