"""How to connect, in one frozen object: :class:`ConnectOptions`.

Every entry point that opens connections (:func:`tether.connect`, :func:`tether.connect_many`,
:class:`tether.SyncConnection`, the fleet) takes one of these, or the same keyword arguments it
is made of, so an option added here reaches all of them. The defaults live in
:mod:`tether.defaults`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.client.mux import DEFAULT_PERSIST
from tether.client.mux import MODES as MUX_MODES
from tether.defaults import CONNECT_TIMEOUT, DEFAULT_PARALLEL, DEFAULT_PORT
from tether.home import home_path

Confirm = Callable[[str, str], bool]


@dataclass(frozen=True)
class ConnectOptions:
    """Everything but the host. ``home``: None means ``$TETHER_HOME`` or ``~/.config/tether``;
    ``confirm(host_key, fingerprint)`` is asked about an unknown server (None: refuse unless
    ``accept_new``); ``keepalive`` as ssh's ServerAliveInterval (None or 0: off); ``mux``
    ``"auto"`` shares one connection per host through ``tether mux`` (started on demand, ending
    after ``mux_persist`` idle seconds), ``"existing"`` uses this home's mux only if one is
    running (what the CLI does unless told), ``"no"`` connects directly."""

    port: int = DEFAULT_PORT
    home: Path | None = None
    accept_new: bool = False
    plaintext: bool = False
    confirm: Confirm | None = None
    timeout: float = CONNECT_TIMEOUT
    keepalive: float | None = None
    mux: str = "no"
    mux_persist: float = DEFAULT_PERSIST

    def __post_init__(self) -> None:
        if self.keepalive is not None and self.keepalive < 0:
            raise ValueError("keepalive must be a number of seconds >= 0 (0: off)")
        if self.mux not in MUX_MODES:
            raise ValueError(f"mux must be one of {', '.join(MUX_MODES)}, not {self.mux!r}")
        if self.mux_persist < 0:
            raise ValueError("mux_persist must be a number of seconds >= 0")
        if self.home is not None and not isinstance(self.home, Path):
            object.__setattr__(self, "home", Path(self.home))

    @property
    def home_dir(self) -> Path:
        """The home this connection reads its identity and known hosts from."""
        return Path(home_path(self.home))

    def with_(self, **given: Any) -> ConnectOptions:
        """These options with every ``given`` keyword that is not None replacing its field
        (how the keyword arguments of the entry points override an ``options`` object)."""
        changes = {k: v for k, v in given.items() if v is not None}
        if "home" in changes:
            changes["home"] = Path(os.fspath(changes["home"]))
        return dataclasses.replace(self, **changes) if changes else self


def options_of(options: ConnectOptions | None, **given: Any) -> ConnectOptions:
    """``options`` (or the defaults) overridden by the keyword arguments a caller gave."""
    return (options or ConnectOptions()).with_(**given)


__all__ = ["CONNECT_TIMEOUT", "DEFAULT_PARALLEL", "Confirm", "ConnectOptions", "options_of"]
