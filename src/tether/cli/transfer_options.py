"""What ``tether put`` and ``get`` were asked to do, apart from the module that does it
(:mod:`tether.cli.transfer`), so that the fleet code it hands several hosts to
(:mod:`tether.cli.fleet`) need not import it back."""

from __future__ import annotations

from dataclasses import dataclass

from tether.defaults import CONNECT_TIMEOUT, DEFAULT_PARALLEL


@dataclass
class TransferOptions:
    """What ``tether put``/``get`` were asked to do (one host or a fleet)."""

    home: str | None
    port: int
    accept_new: bool
    plaintext: bool
    recursive: bool
    force: bool
    rename: bool
    resume: bool
    progress: bool
    json: bool
    parallel: int = DEFAULT_PARALLEL  # several hosts (cli/fleet.py)
    host_timeout: float | None = None
    keepalive: float = 0.0  # seconds of server silence before a ping (0: off)
    safe_links: bool = False  # skip symlinks that leave the tree (-r)
    connect_timeout: float = CONNECT_TIMEOUT  # connect + TLS + welcome, seconds
    mux: str | None = None  # "auto", "no", or None: the inventory host's setting, else a running
    # mux is used if there is one ("existing")
    mux_persist: float = 60.0
