"""The ``tether`` console script, and ``tether run HOST -- COMMAND`` without click or asyncio.

A one-shot ``tether run`` spends most of its life starting up, so the console script looks at
its arguments first: for the plain one-host form of ``run`` (the options ``--home``,
``-p/--port``, ``--accept-new``, ``--plaintext``, ``--cwd``, ``--env``, ``--timeout``,
``--encoding``, ``-n/--no-stdin``) it runs the command here, over a blocking socket
(:mod:`tether.client.blocking`) and one select loop. Everything else goes to the click CLI
(:mod:`tether.cli.main`), which handles every form: other commands, ``--help``, usage errors,
several hosts and inventory names, ``--debug``/``TETHER_DEBUG``, and — decided before
connecting — a first connection that must ask on the terminal, or an identity that cannot be
loaded. ``TETHER_FULL_CLI=1`` forces the click CLI (the tests run every case both ways).

Behaviour is the click path's, through shared code (:mod:`tether.cli.shared`): output streamed
as it arrives, raw into pipes and decoded on a terminal; stdin forwarded until EOF within the
flow-control window; Ctrl-C, SIGTERM and SIGHUP forwarded as INT, TERM and HUP, a second Ctrl-C
or an unheeded TERM/HUP giving up after ``GIVE_UP`` seconds with 128+N; the remote status
mirrored (128+N for a signal, 124 for ``--timeout``, 127 when it could not start, 255 when the
connection or authentication failed, 141 when stdout closes); errors as one line.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

from tether.cli.shared import (
    FORWARDED_SIGNALS,
    GIVE_UP,
    STDIN_CHUNK,
    RunOptions,
    error_line,
    exit_code,
    internal_error_line,
    output_sinks,
    parse_env,
    timed_out,
)
from tether.errors import ConnectionBroken, TetherError, from_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from tether.client.blocking import BlockingConnection
    from tether.protocol.connection import Connection
    from tether.protocol.messages import Exec

FULL_CLI_VAR = "TETHER_FULL_CLI"
DEFAULT_PORT = 7722
_FLAGS = {"--accept-new": "accept_new", "--plaintext": "plaintext", "-n": "no_stdin",
          "--no-stdin": "no_stdin"}
_VALUES = {"--home": "home", "-p": "port", "--port": "port", "--cwd": "cwd", "--env": "env",
           "--timeout": "timeout", "--encoding": "encoding"}


class FullPath(Exception):
    """This invocation needs the click CLI (decided before anything was sent)."""


# --- arguments ----------------------------------------------------------------------------------


def parse(args: list[str]) -> RunOptions | None:
    """``run``'s arguments (after ``run``) as options, or None for anything but the plain form."""
    flags: set[str] = set()
    values: dict[str, str] = {}
    env: list[str] = []
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        arg = args[i]
        i += 1
        if arg == "--":
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg[:2], "", arg[2:])
        if name in _FLAGS and not eq and not value:
            flags.add(_FLAGS[name])
            continue
        if name not in _VALUES or (eq and not value):
            return None  # an unknown option, or an empty value: click words or decides it
        if not eq and not value:
            if i >= len(args):
                return None
            value = args[i]
            i += 1
        if name == "--env":
            env.append(value)
        else:
            values[_VALUES[name]] = value
    if i >= len(args):
        return None  # no HOST: a usage error, the click CLI words it
    command = args[i + 1:]
    return _options(flags, values, env, args[i], command[1:] if command[:1] == ["--"] else command)


def _options(flags: set[str], values: dict[str, str], env: list[str], host: str,
             command: list[str]) -> RunOptions | None:
    variables = parse_env(env)
    try:
        port = int(values.get("port", DEFAULT_PORT))
        timeout = float(values["timeout"]) if "timeout" in values else None
    except ValueError:
        return None
    if variables is None:
        return None
    return RunOptions(
        home=values.get("home") or os.environ.get("TETHER_HOME") or None, host=host, port=port,
        command=command, accept_new="accept_new" in flags, plaintext="plaintext" in flags,
        cwd=values.get("cwd"), env=variables, timeout=timeout, encoding=values.get("encoding"),
        stdin="no_stdin" not in flags,
    )


def _names_several_or_inventory(host: str, home: str) -> bool:
    """Whether HOST may be more than an address (``a,b``, ``@group``, an inventory name): then
    the click CLI resolves it (tether.inventory)."""
    if "," in host or host.startswith("@"):
        return True
    try:
        with open(os.path.join(home, "hosts.toml"), encoding="utf-8", errors="replace") as fh:
            return host in fh.read()
    except OSError:
        return False


# --- running ------------------------------------------------------------------------------------


def connect(opts: RunOptions) -> BlockingConnection:
    """Connect as the click path would, or raise FullPath where it would behave differently."""
    from tether.client.blocking import connect as blocking_connect
    from tether.errors import IdentityError
    from tether.home import home_path, lookup_known_host, require_identity

    home = home_path(opts.home)
    if _names_several_or_inventory(opts.host, home):
        raise FullPath
    opts.check()
    context, cert = None, ""
    if not opts.plaintext:
        from tether.tls import client_context_files

        try:
            key, cert = require_identity(home)
            context = client_context_files(cert, key)
        except (IdentityError, OSError) as exc:  # the click path words these
            raise FullPath from exc
        if (not opts.accept_new and sys.stdin is not None and sys.stdin.isatty()
                and lookup_known_host(home, opts.host, opts.port) is None):
            raise FullPath  # a first connection asks on the terminal
    return blocking_connect(opts.host, opts.port, home, context=context, cert=cert,
                            accept_new=opts.accept_new, request=lambda p: exec_request(opts, p))


def exec_request(opts: RunOptions, proto: Connection) -> Exec:
    """The command's ``exec``, sent right behind the hello (one round trip less)."""
    from tether.protocol.messages import Exec

    cmd = opts.remote_command
    return Exec(argv=[cmd] if isinstance(cmd, str) else cmd, shell=isinstance(cmd, str),
                cwd=opts.cwd, env=opts.env, timeout=opts.timeout, stdin=opts.stdin,
                stream=proto.next_stream_id())


class Loop:
    """One remote command over one connection (its ``exec`` went with the hello): the select
    loop and its signal handling."""

    def __init__(self, conn: BlockingConnection, opts: RunOptions) -> None:
        self.conn = conn
        self.opts = opts
        assert conn.welcome is not None and conn.request is not None
        self.stream = conn.request.stream  # the exec that connect() sent behind the hello
        self.sinks = output_sinks(conn.welcome.encoding, opts.encoding)
        self.stdin_open = opts.stdin
        self.interrupted = False
        self.give_up: tuple[float, int] | None = None  # (when, exit status)

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
        if self.stdin_open:
            try:
                os.fstat(0)
            except OSError:  # no stdin at all: end of input
                self._end_stdin()

    def _step(self, wake_r: int) -> int | None:
        """One turn of the loop; the exit status once the command is over."""
        conn, sock = self.conn, self.conn.sock.fileno()
        readers = [sock, wake_r]
        if (self.stdin_open and conn.wants_write < STDIN_CHUNK
                and conn.proto.send_window(self.stream) > 0):
            readers.append(0)
        writers = [sock] if conn.wants_write else []
        wait = None if self.give_up is None else max(self.give_up[0] - time.monotonic(), 0)
        ready, writable, _ = select.select(readers, writers, [], wait)
        if wake_r in ready:
            self._signals(wake_r)
        if self.give_up is not None and time.monotonic() >= self.give_up[0]:
            return self.give_up[1]  # leaving the connection kills the remote group
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
            if number not in FORWARDED_SIGNALS:
                continue
            sig = signal.Signals(number)
            self.conn.send(Signal(name=sig.name[3:], stream=self.stream))
            if sig == signal.SIGINT and not self.interrupted:
                self.interrupted = True  # the first Ctrl-C is the command's to handle
                continue
            when = time.monotonic() + (0.0 if sig == signal.SIGINT else GIVE_UP)
            if self.give_up is None or when < self.give_up[0]:
                self.give_up = (when, 128 + sig)

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
        from tether.protocol.messages import Close, Data, Error, Exit

        for event in self.conn.receive():
            if isinstance(event, Data):
                self.sinks[event.channel].write(event.data)
                self.conn.consumed(self.stream, len(event.data))
            elif isinstance(event, Exit | Error) and event.stream == self.stream:
                self.conn.send(Close(stream=self.stream))
                if isinstance(event, Error):
                    raise from_wire(event.code, event.message)
                return timed_out(self.opts.timeout) if event.timed_out else event.shell_status
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
    sys.exit(0)


def main() -> None:
    """``tether``: the fast path for a plain ``tether run``, the click CLI for the rest."""
    args = sys.argv[1:]
    opts = None
    if args[:1] == ["run"] and not os.environ.get(FULL_CLI_VAR) \
            and not os.environ.get("TETHER_DEBUG"):
        opts = parse(args[1:])
    if opts is None:
        full_cli()
    try:
        code = run(opts)
    except FullPath:
        full_cli()
    except TetherError as exc:
        print(error_line(exc), file=sys.stderr)
        code = exit_code(exc)
    except BrokenPipeError:
        code = 141
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # a bug: still one line, with the way to see more
        print(internal_error_line(exc), file=sys.stderr)
        code = 1
    leave(code)


def leave(code: int) -> NoReturn:
    """Flush and exit without the interpreter's teardown: freeing the modules of ssl, socket and
    the rest costs about 4 ms, a tenth of a whole ``tether run``, for memory the OS frees anyway.
    Nothing is left to write: the output sinks flush every chunk, and stdin is not ours."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed under us: 141 was decided
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
