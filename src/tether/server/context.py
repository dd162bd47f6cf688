"""What a session is given of its server (:class:`SessionContext`), and who is on the other end
(:class:`Peer`): a session sees the server only through these, so it never imports the
listener."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tether.identity import AuthorizedClient, short_fingerprint
from tether.server.audit import AuditLog
from tether.server.buffers import ByteBudget
from tether.server.descriptors import Descriptors
from tether.server.diskpool import DiskPool
from tether.server.limits import Admission, Limits
from tether.server.permits import ForwardPolicy
from tether.server.privsep import SharedCounts
from tether.server.refusals import Refusals
from tether.server.shares import Shares
from tether.server.trust import Trust
from tether.storage.reserved import Reserved


@dataclass(frozen=True)
class SessionContext:
    """What a session needs of its server, and nothing more."""

    limits: Limits
    root: Path  # where an unconfined client's relative paths and commands start
    plaintext: bool
    name: str  # the server's name, told in welcome
    encoding: str
    kill_grace: float
    admission: Admission
    audit: AuditLog
    authorized: Callable[[], dict[str, AuthorizedClient]]  # re-read when the file changed
    trust: Trust  # trusted CAs, revocation list, principals (server/trust.py)
    counts: SharedCounts  # per-account counts shared with privilege-separated workers
    reserved: Reserved = field(default_factory=Reserved)  # TETHER_HOME, audit log: no client's
    refusals: Refusals | None = None  # refused connections, aggregated per address
    disk: DiskPool | None = None  # long file work off the loop, a fair share per identity
    descriptors: Descriptors | None = None  # what operations hold, in total and per identity
    fetches: Shares = field(default_factory=lambda: Shares(8))  # fetches at once per identity
    forwarding: ForwardPolicy = field(default_factory=ForwardPolicy)  # permits (server/permits)
    buffers: ByteBudget | None = None  # bytes held by connections, per identity
    # welcome's (next_cert, next_proof) during a key rotation (server/rotation.py)
    next_key: Callable[[], tuple[str, str]] = field(default=lambda: ("", ""))
    drain: float = 0.0  # on SIGTERM, seconds running work may take (a worker drains itself)
    pass_env: tuple[str, ...] = ()  # serve --pass-env: server variables commands also get
    hash_cache: str | None = None  # sync's hash caches: TETHER_HOME/cache/hashes (reserved)


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, as established by TLS, the authorized list and the trusted
    CAs (server/trust.py)."""

    fingerprint: str
    name: str
    root: Path
    permissions: frozenset[str]
    confined: bool = False
    user: str | None = None  # the Unix account its work runs as (None: the server's own)
    serial: str | None = None  # its CA-signed certificate's serial
    principals: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The name and short fingerprint, for log lines: two machines with one host name
        both default to the same ``user@hostname``; the fingerprint tells them apart."""
        return f"{self.name} {short_fingerprint(self.fingerprint)}"
