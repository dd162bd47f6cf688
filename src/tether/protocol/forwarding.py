"""Forwarding messages (docs/PROTOCOL.md, "Forwarding"): byte streams to a destination seen
from the server, and listeners on the server whose connections come back to the client.

- ``connect`` opens a stream to ``host``:``port`` or the Unix socket ``path`` (ssh's
  direct-tcpip), or takes over connection ``incoming`` announced on the listener stream
  ``listener``; the server answers ``connected``, then both sides send DATA on channel 0 and
  end their direction with ``eof`` (half-close), and the server ends the stream with ``done``.
- ``listen`` opens a listener on the server (``port`` 0: the server chooses); the server
  answers ``listening`` with the address it bound, then one ``incoming`` per connection that
  arrives, each of which the client takes with a ``connect{listener, incoming}`` (or refuses
  by closing that stream at once). Closing the ``listen`` stream closes the listener.

Only the client opens streams, as everywhere else in the protocol: an incoming connection is
announced, not opened by the server. The value checks here are the messages' own
(:meth:`Message.problem`); what a server permits is its policy (server/forward.py).
"""

from tether.protocol.messages import CLIENT, REGISTRY, SERVER, Message

MAX_HOST = 255  # characters of a host name or address (DNS's limit)
MAX_SOCKET_PATH = 107  # bytes of a Unix socket path (sun_path less its NUL)
MAX_ORIGIN = 128  # characters of an origin ("address:port") carried for the audit log


def _host_problem(what: str, host: str) -> "str | None":
    if len(host) > MAX_HOST or any(c in host for c in "\0\r\n\t /"):
        return f"{what}.host is not a host name or address ({len(host)} characters)"
    return None


def _path_problem(what: str, path: str) -> "str | None":
    size = len(path.encode("utf-8", "surrogatepass"))
    if not path or size > MAX_SOCKET_PATH or "\0" in path:
        return f"{what}.path is not a Unix socket path ({size} bytes, at most {MAX_SOCKET_PATH})"
    return None


class Connect(Message):
    """Open a byte stream: to ``host``:``port``, to the Unix socket ``path``, or (with
    ``listener`` and ``incoming``) to a connection a listener of this client announced.
    ``origin`` says who connected on the client's side, for the server's audit log."""

    TYPE = "connect"
    SENDERS = CLIENT
    OPENS = True
    host: str = ""
    port: int = 0
    path: str = ""
    listener: int = 0
    incoming: int = 0
    origin: str = ""

    @property
    def target(self) -> str:
        """Where this stream goes, as a log line or an error message names it."""
        if self.incoming:
            return f"incoming {self.incoming} of listener {self.listener}"
        if self.path:
            return self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def problem(self, request: "Message | None") -> "str | None":
        if len(self.origin) > MAX_ORIGIN:
            return "connect.origin is too long"
        modes = (bool(self.host or self.port), bool(self.path),
                 bool(self.listener or self.incoming))
        if sum(modes) != 1:
            return "connect names exactly one of host and port, path, or listener and incoming"
        if modes[1]:
            return _path_problem("connect", self.path)
        if modes[2]:
            if self.listener <= 0 or self.incoming <= 0:
                return "connect.listener and connect.incoming must both be positive"
            return None
        if not self.host:
            return "connect.host is empty"
        if not 0 < self.port < 65536:
            return f"connect.port {self.port} is not a port number (1-65535)"
        return _host_problem("connect", self.host)


class Connected(Message):
    """The server reached the destination (``host``:``port`` as it connected, when TCP):
    DATA may flow both ways."""

    TYPE = "connected"
    SENDERS = SERVER
    host: str = ""
    port: int = 0


class Listen(Message):
    """Open a listener on the server: on ``host`` (empty: loopback) and ``port`` (0: the
    server chooses), or on the Unix socket ``path``."""

    TYPE = "listen"
    SENDERS = CLIENT
    OPENS = True
    host: str = ""
    port: int = 0
    path: str = ""

    def problem(self, request: "Message | None") -> "str | None":
        if self.path:
            if self.host or self.port:
                return "listen names either host and port or path"
            return _path_problem("listen", self.path)
        if not 0 <= self.port < 65536:
            return f"listen.port {self.port} is not a port number (0-65535)"
        return _host_problem("listen", self.host)


class Listening(Message):
    """The listener is bound: the address and port the server chose (or its ``path``)."""

    TYPE = "listening"
    SENDERS = SERVER
    host: str = ""
    port: int = 0
    path: str = ""


class Incoming(Message):
    """A connection arrived at this listener: ``id`` names it for the client's
    ``connect{listener, incoming}``; ``origin`` is who connected."""

    TYPE = "incoming"
    SENDERS = SERVER
    id: int
    origin: str = ""

    def problem(self, request: "Message | None") -> "str | None":
        if self.id <= 0 or len(self.origin) > MAX_ORIGIN:
            return "incoming.id must be positive and its origin at most 128 characters"
        return None


FORWARD_MESSAGES = (Connect, Connected, Listen, Listening, Incoming)
REGISTRY.update({cls.TYPE: cls for cls in FORWARD_MESSAGES})  # the decoder imports this module

__all__ = ["Connect", "Connected", "Incoming", "Listen", "Listening"]
