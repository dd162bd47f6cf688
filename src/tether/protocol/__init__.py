"""Sans-I/O protocol core: frames, messages, and the connection state machine.

Nothing here imports asyncio, socket, ssl or os: bytes in, events out; events in, bytes out.
"""

from tether.protocol.connection import (
    CLOSED,
    INITIAL_WINDOW,
    NEED_DATA,
    PROTOCOL_VERSIONS,
    Connection,
    State,
)
from tether.protocol.frames import MAX_BODY, MAX_HEADER
from tether.protocol.messages import (
    Close,
    Credit,
    Data,
    Eof,
    Error,
    Exec,
    Exit,
    Hello,
    Message,
    Ping,
    Pong,
    Role,
    Signal,
    Started,
    Welcome,
)

__all__ = [
    "CLOSED",
    "INITIAL_WINDOW",
    "MAX_BODY",
    "MAX_HEADER",
    "NEED_DATA",
    "PROTOCOL_VERSIONS",
    "Close",
    "Connection",
    "Credit",
    "Data",
    "Eof",
    "Error",
    "Exec",
    "Exit",
    "Hello",
    "Message",
    "Ping",
    "Pong",
    "Role",
    "Signal",
    "Started",
    "State",
    "Welcome",
]
