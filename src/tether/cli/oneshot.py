"""The ``tether`` console script, and ``tether run HOST -- COMMAND`` without click or asyncio
(``tether sync`` without click too).

A one-shot ``tether run`` spends most of its life starting up, so the console script looks at
its arguments first: for the plain one-host form of ``run`` (every option the option table
:mod:`tether.cli.options` marks fast) it runs the command here, over the blocking driver of the
client core (:mod:`tether.client.blocking`) and one select loop. Everything else goes to the
click CLI (:mod:`tether.cli.main`), which parses the same option table and handles every form:
other commands, ``--help``, usage errors, several hosts and inventory names,
``--debug``/``TETHER_DEBUG``, and — decided before connecting — a first connection that must ask
on the terminal, or an identity that cannot be loaded. ``TETHER_FULL_CLI=1`` forces the click
CLI (the tests run every case both ways).

Behaviour is the click path's, through shared code: the run policy (:mod:`tether.cli.runpolicy`:
signals forwarded, giving up, the exit status mirrored, when stdin is read), the output sinks
(:mod:`tether.cli.shared`) and the exit policy (:mod:`tether.cli.policy`: errors as one line,
255 when the connection or authentication failed, 141 when stdout closes, 130 on Ctrl-C).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

from tether.cli.options import fast_parse
from tether.cli.policy import leave, run_command
from tether.cli.runpolicy import (
    FORWARDED_SIGNALS,
    STDIN_CHUNK,
    RunPolicy,
    may_read_stdin,
    stdin_wanted,
)
from tether.cli.shared import RunOptions, output_sinks
from tether.errors import ConnectionBroken

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from tether.client.blocking import BlockingClient
    from tether.client.core import ClientCore
    from tether.protocol.messages import Exec

FULL_CLI_VAR = "TETHER_FULL_CLI"


class FullPath(BaseException):
    """This invocation needs the click CLI (decided before anything was sent). Not an error:
    a BaseException, so that the exit policy lets it through to :func:`main`."""


# --- arguments ----------------------------------------------------------------------------------


def parse(args: list[str]) -> RunOptions | None:
    """``run``'s arguments (after ``run``) as options, or None for anything but the plain form
    (the option table's fast parser, :func:`tether.cli.options.fast_parse`)."""
    return fast_parse(args)


def _names_several_or_inventory(host: str, home: str) -> bool:
    """Whether HOST may be more than an address (``a,b``, ``@group``, an inventory name): then
    the click CLI resolves it (tether.inventory)."""
    if "," in host or host.startswith("@") or "@@" in host:
        return True
    try:
        with open(os.path.join(home, "hosts.toml"), encoding="utf-8", errors="replace") as fh:
            return host.rpartition("@")[2] in fh.read()  # user@NAME: NAME
    except OSError:
        return False


# --- running ------------------------------------------------------------------------------------


def connect(opts: RunOptions) -> BlockingClient:
    """Connect as the click path would, or raise FullPath where it would behave differently."""
    from tether.client.blocking import connect as blocking_connect
    from tether.errors import IdentityError
    from tether.home import home_path, lookup_known_host, require_identity
    from tether.hosttrust import client_context, expiry_warning

    home = home_path(opts.home)
    if _names_several_or_inventory(opts.host, home):
        raise FullPath
    opts.check()
    user, _, host = opts.host.rpartition("@")  # "@@" (a group) never gets here
    if opts.mux != "no" and not opts.plaintext:
        shared = _shared(opts, home, host, user)
        if shared is not None:
            return shared
    context, cert, by_ca = None, "", False
    if not opts.plaintext:
        try:
            key, cert = require_identity(home)
            context, by_ca = client_context(home, host, opts.port, cert, key)
        except (IdentityError, OSError) as exc:  # the click path words these
            raise FullPath from exc
        if (not opts.accept_new and not by_ca and sys.stdin is not None and sys.stdin.isatty()
                and lookup_known_host(home, host, opts.port) is None):
            raise FullPath  # a first connection asks on the terminal
        warning = expiry_warning(home)
        if warning:
            print(warning, file=sys.stderr)
    return blocking_connect(host, opts.port, home, context=context, cert=cert,
                            accept_new=opts.accept_new, by_ca=by_ca, user=user,
                            timeout=opts.connect_timeout,
                            request=lambda core: exec_request(opts, core))


def exec_request(opts: RunOptions, core: ClientCore) -> Exec:
    """The command's ``exec``, sent right behind the hello (one round trip less)."""
    return core.exec(opts.remote_command, cwd=opts.cwd, env=opts.env, timeout=opts.timeout,
                     stdin=opts.stdin)


def _shared(opts: RunOptions, home: str, host: str, user: str) -> BlockingClient | None:
    """A connection lent by the mux (``--mux auto`` starts one; unset, a running one is
    used), or None to connect directly (no mux could serve, or an unknown server that a
    terminal should be asked about)."""
    from tether.client import mux

    start = opts.mux == "auto"
    if not start and not mux.running(home):
        return None
    from tether.client.blocking import connect_shared
    from tether.errors import HostUnknown, IdentityError

    try:
        return connect_shared(host, opts.port, home, accept_new=opts.accept_new,
                              persist=opts.mux_persist, start=start, user=user,
                              timeout=opts.connect_timeout)
    except (mux.MuxUnavailable, IdentityError):
        return None
    except HostUnknown:
        if sys.stdin is not None and sys.stdin.isatty():
            raise FullPath from None  # the click path asks, then connects directly
        raise


class Loop:
    """One remote command over one connection (its ``exec`` went with the hello, on a direct
    one): the select loop wiring the run policy."""

    def __init__(self, conn: BlockingClient, opts: RunOptions) -> None:
        self.conn = conn
        self.opts = opts
        request = conn.request  # the exec that connect() sent behind the hello
        if request is None:  # a connection lent by the mux: the request goes now
            request = exec_request(opts, conn.core)
            conn.send(request)
        self.stream = request.stream
        assert conn.welcome is not None
        self.sinks = output_sinks(conn.welcome.encoding, opts.encoding)
        self.stdin_open = opts.stdin
        self.policy = RunPolicy(opts.timeout)

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        handlers = {sig: signal.signal(sig, _note) for sig in FORWARDED_SIGNALS}
        old_wakeup = signal.set_wakeup_fd(wake_w)
        try:
            self._check_stdin()
            if self.conn.early:  # came with the welcome: the socket may have nothing more
                status = self._receive()
                if status is not None:
                    return status
            while True:
                status = self._step(wake_r)
                if status is not None:
                    return status
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
            for sink in self.sinks.values():
                sink.close()

    def _check_stdin(self) -> None:
        if self.stdin_open and not stdin_wanted(self.opts.stdin):
            self._end_stdin()  # no stdin at all: end of input

    def _step(self, wake_r: int) -> int | None:
        """One turn of the loop; the exit status once the command is over."""
        conn, sock = self.conn, self.conn.sock.fileno()
        readers = [sock, wake_r]
        if self.stdin_open and may_read_stdin(conn.wants_write,
                                              conn.proto.send_window(self.stream)):
            readers.append(0)
        writers = [sock] if conn.wants_write else []
        give_up = self.policy.give_up
        wait = None if give_up is None else max(give_up[0] - time.monotonic(), 0)
        ready, writable, _ = select.select(readers, writers, [], wait)
        if wake_r in ready:
            self._signals(wake_r)
        status = self.policy.gave_up(time.monotonic())
        if status is not None:
            return status  # leaving the connection kills the remote group
        if writable:
            conn.flush()
        if 0 in ready:
            self._forward_stdin()
        status = self._receive() if sock in ready else None
        conn.flush()
        return status

    def _signals(self, wake_r: int) -> None:
        try:
            numbers = os.read(wake_r, 64)
        except BlockingIOError:
            return
        from tether.protocol.messages import Signal

        for number in numbers:
            if number in FORWARDED_SIGNALS:
                name = self.policy.on_signal(number, time.monotonic())
                self.conn.send(Signal(name=name, stream=self.stream))

    def _forward_stdin(self) -> None:
        size = min(STDIN_CHUNK, self.conn.proto.send_window(self.stream))
        try:
            data = os.read(0, size)
        except OSError:
            data = b""
        if data:
            self.conn.send_data(self.stream, data)
        else:
            self._end_stdin()

    def _end_stdin(self) -> None:
        from tether.protocol.messages import Eof

        self.stdin_open = False
        self.conn.send(Eof(channel=0, stream=self.stream))

    def _receive(self) -> int | None:
        from tether.protocol.messages import Data

        for event in self.conn.receive():
            if isinstance(event, Data):
                self.sinks[event.channel].write(event.data)
                self.conn.consumed(self.stream, len(event.data))
            elif event.stream == self.stream and event.FINAL:
                close = self.conn.core.end(self.stream)
                if close is not None:
                    self.conn.send(close)
                info = self.conn.core.outcome(event)  # an error is raised here
                if info is not None:
                    return self.policy.exit_status(info)
        if self.conn.closed:
            raise ConnectionBroken("connection closed by peer")
        return None


def _note(signum: int, frame: object) -> None:
    """A forwarded signal arrived: the wakeup fd carries its number to the loop."""


def run(opts: RunOptions) -> int:
    conn = connect(opts)
    try:
        return Loop(conn, opts).run()
    finally:
        conn.finish()


# --- the console script -------------------------------------------------------------------------


def full_cli() -> NoReturn:
    from tether.cli.main import main as click_main

    click_main()


def sync_fast(args: list[str]) -> None:
    """``tether sync`` without click (its start-up is a tenth of a small re-sync): the same
    :func:`tether.cli.sync.sync_main` the click command calls, for every form the fast parser
    takes; returns (to the click CLI) for the rest."""
    from tether.cli.sync import parse_fast, sync_main

    parsed = parse_fast(args)
    if parsed is not None:
        sources, dest, values = parsed
        leave(run_command(lambda: sync_main(sources, dest, values)))


def main() -> None:
    """``tether``: the fast path for a plain ``tether run``, the click CLI for the rest; both
    under the one exit policy (:mod:`tether.cli.policy`)."""
    args = sys.argv[1:]
    opts = None
    plain = not os.environ.get(FULL_CLI_VAR) and not os.environ.get("TETHER_DEBUG")
    if args[:1] == ["sync"] and plain:
        sync_fast(args[1:])
    # the fast path selects on pipes, which Windows cannot: there every run takes the full path
    if args[:1] == ["run"] and plain and sys.platform != "win32":
        opts = parse(args[1:])
    if opts is None:
        full_cli()
    try:
        code = run_command(lambda: run(opts))
    except FullPath:
        full_cli()
    leave(code)


if __name__ == "__main__":
    main()
