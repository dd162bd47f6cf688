# Copyright (c) tether developers. MIT licence (see the repository's pyproject.toml).
"""Ansible connection plugin ``tether.remote.tether``: Ansible's tasks over tether.

It uses Ansible's public connection-plugin interface (``ConnectionBase``) and tether's public
Python API (``tether.connect``) only, so an Ansible release that keeps that interface keeps it
working. Commands run on tether's ``exec`` streams (module source on stdin when pipelining),
files move with tether's verified transfers, and become that needs a password talks to the
password prompt (through a remote terminal when the module is not piped).
"""

from __future__ import annotations

DOCUMENTATION = """
    name: tether
    short_description: run tasks over tether (mutually authenticated TLS 1.3)
    description:
        - Runs commands and moves files through a tether server (C(tether serve)) on the target,
          authenticated with the controller user's tether identity (C(tether keygen)) and the
          server's pinned fingerprint (C(known_hosts) in the tether home).
        - Tasks from Ansible's forked workers share one connection per host through
          C(tether mux) unless O(mux) is C(no).
    author: tether developers
    version_added: "0.1.0"
    requirements:
        - the tether Python package in ansible-core's environment on the controller
        - a running C(tether serve) on each target that authorizes the controller's identity
    extends_documentation_fragment:
        - connection_pipelining
    options:
        remote_addr:
            description: The address of the tether server.
            default: inventory_hostname
            type: string
            vars:
                - name: inventory_hostname
                - name: ansible_host
                - name: ansible_tether_host
        port:
            description: The tether server's port.
            type: int
            default: 7722
            vars:
                - name: ansible_port
                - name: ansible_tether_port
        remote_user:
            description:
                - The Unix account to run as on the target, as C(user@host) asks for it. The
                  server must allow the controller's identity that account (C(tether authorize
                  --user), or a CA principal mapped to it) and, for any account but its own, run
                  as root.
                - Unset, the server chooses (its own account, or the identity's first mapped one).
            type: string
            vars:
                - name: ansible_user
                - name: ansible_tether_user
        home:
            description:
                - The tether home (identity, known_hosts, inventory).
                - Default C($TETHER_HOME), else C(~/.config/tether).
            type: string
            env:
                - name: TETHER_HOME
            vars:
                - name: tether_home
                - name: ansible_tether_home
        accept_new:
            description:
                - Pin an unknown server's fingerprint on first contact.
                - A changed fingerprint is still refused.
            type: bool
            default: false
            vars:
                - name: tether_accept_new
                - name: ansible_tether_accept_new
        keepalive:
            description:
                - Seconds of silence before pinging the server (0 is off).
                - After three silent intervals the host is unreachable.
            type: float
            default: 0
            vars:
                - name: tether_keepalive
                - name: ansible_tether_keepalive
        timeout:
            description: Seconds to connect and finish tether's handshake.
            type: float
            default: 10
            ini:
                - section: defaults
                  key: timeout
            env:
                - name: ANSIBLE_TIMEOUT
            vars:
                - name: ansible_timeout
                - name: tether_timeout
        command_timeout:
            description: Seconds after which the server kills a task's command (0 is never).
            type: float
            default: 0
            vars:
                - name: tether_command_timeout
                - name: ansible_tether_command_timeout
        mux:
            description:
                - C(auto) shares one connection per host between Ansible's workers (and tether
                  commands) through C(tether mux), started on demand; C(no) connects directly.
            type: string
            default: auto
            choices: [auto, "no"]
            vars:
                - name: tether_mux
                - name: ansible_tether_mux
        mux_persist:
            description: Seconds an idle shared connection (and the mux) stays up.
            type: float
            default: 60
            vars:
                - name: tether_mux_persist
                - name: ansible_tether_mux_persist
        become_success_timeout:
            description: Seconds to wait for become to succeed (a password prompt answered).
            type: int
            default: 10
            vars:
                - name: tether_become_success_timeout
"""

import asyncio
import os
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

STDOUT = 1


def _one_line(exc: BaseException) -> str:
    """tether's messages are one line already; make sure a peer's text stays one line."""
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class Connection(ConnectionBase):
    """Run Ansible's tasks through a tether server."""

    transport = "tether.remote.tether"
    has_pipelining = True
    has_tty = True  # become with a password runs through a remote terminal

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._lost = ""  # why this worker's connection broke (Ansible's clean-up reconnects)

    # --- connecting ----------------------------------------------------------------------------

    def _address(self) -> tuple[str, int]:
        host = self.get_option("remote_addr") or self._play_context.remote_addr
        return str(host), int(self.get_option("port") or 7722)

    def _connect(self) -> Connection:
        if self._conn is not None:
            return self
        import tether
        from tether.errors import HostChanged, HostUnknown, TetherError

        host, port = self._address()
        user = str(self.get_option("remote_user") or "")
        display.vvv(f"ESTABLISH TETHER CONNECTION TO {host}:{port}"
                    + (f" AS {user}" if user else ""), host=host)
        self._loop = asyncio.new_event_loop()
        kwargs: dict[str, Any] = {
            "home": self.get_option("home") or None,
            "accept_new": bool(self.get_option("accept_new")),
            "timeout": float(self.get_option("timeout")),
            "keepalive": float(self.get_option("keepalive") or 0) or None,
        }
        kwargs.update(self._mux_kwargs())
        if user:
            kwargs["user"] = user  # a tether without accounts refuses it: TypeError, not silence
        try:
            self._conn = self._loop.run_until_complete(tether.connect(host, port, **kwargs))
        except HostUnknown as exc:
            self._close_loop()
            raise AnsibleConnectionFailure(
                f"tether: {_one_line(exc)}. To pin it, set tether_accept_new: true for this host "
                f"once, or run: tether run --accept-new -p {port} {host} -- true"
            ) from None
        except HostChanged as exc:
            self._close_loop()
            raise AnsibleConnectionFailure(f"tether: {_one_line(exc)}") from None
        except (TimeoutError, TetherError, OSError) as exc:
            self._close_loop()
            reason = _one_line(exc)
            if self._lost:  # the first failure is the one to see, not the clean-up's
                reason = f"{self._lost}; then reconnecting: {reason}"
            raise AnsibleConnectionFailure(f"tether: {reason}") from None
        self._connected = True
        return self

    def _mux_kwargs(self) -> dict[str, Any]:
        """The mux options, for a tether that has them (older ones connect directly)."""
        import inspect

        import tether

        if "mux" not in inspect.signature(tether.connect).parameters:
            return {}
        return {"mux": str(self.get_option("mux")),
                "mux_persist": float(self.get_option("mux_persist"))}

    def _run(self, coro: Any) -> Any:
        """Run one coroutine of the tether API, turning a lost connection into UNREACHABLE."""
        from tether.errors import ConnectionFailed

        assert self._loop is not None
        try:
            return self._loop.run_until_complete(coro)
        except ConnectionFailed as exc:
            self._drop()
            self._lost = _one_line(exc)
            raise AnsibleConnectionFailure(f"tether: {self._lost}") from None

    # --- commands ------------------------------------------------------------------------------

    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = True) -> tuple[int, bytes, bytes]:
        """Run ``cmd`` through the server user's shell; ``in_data`` is its stdin (pipelining)."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        host = self._address()[0]
        display.vvv(f"EXEC {to_text(cmd)}", host=host)
        become = self.become if sudoable and self.become is not None and self.become.success \
            else None
        rc, out, err = self._run(self._exec(to_text(cmd), in_data, become))
        return rc, out, err

    async def _exec(self, cmd: str, in_data: bytes | None,
                    become: Any) -> tuple[int, bytes, bytes]:
        prompt = become is not None and become.expect_prompt()
        if prompt and in_data is None:
            proc = await self._conn.shell(cmd, term="dumb")  # su and sudo prompt on a terminal
        else:
            limit = float(self.get_option("command_timeout") or 0) or None
            proc = await self._conn.start(cmd, timeout=limit,
                                          stdin=in_data is not None or prompt)
        out, err = bytearray(), bytearray()
        writer = None
        try:
            chunks = proc.__aiter__()
            if become is not None:
                out, err = await self._await_become(proc, chunks, become, prompt)
            if in_data is not None:
                writer = asyncio.ensure_future(self._feed(proc, in_data))
            async for channel, chunk in chunks:
                (out if channel == STDOUT else err).extend(chunk)
            info = await proc.wait()
        except BaseException:
            proc.abandon()
            raise
        finally:
            if writer is not None:
                writer.cancel()
        if info.timed_out:  # said where Ansible shows a failed module's output
            err.extend(f"tether: the server killed the command after tether_command_timeout "
                       f"({self.get_option('command_timeout'):g} s)\n".encode())
        return info.status, bytes(out), bytes(err)

    @staticmethod
    async def _feed(proc: Any, data: bytes) -> None:
        from tether.errors import TetherError

        try:
            await proc.write(data)
            await proc.close_stdin()
        except TetherError:
            pass  # the command ended without reading all of it: its status says the rest

    async def _await_become(self, proc: Any, chunks: Any, become: Any,
                            prompt: bool) -> tuple[bytearray, bytearray]:
        """Read until the become marker, answering one password prompt; the preamble is cut."""
        out, err = bytearray(), bytearray()
        seen = [0, 0]
        sent = False
        limit = max(1, int(self.get_option("become_success_timeout") or 10))
        deadline = asyncio.get_running_loop().time() + limit
        while not become.check_success(bytes(out)):
            if prompt and (become.check_password_prompt(bytes(out[seen[0]:]))
                           or become.check_password_prompt(bytes(err[seen[1]:]))):
                if sent:
                    raise AnsibleError(self._become_error("Incorrect become password "
                                                          "(a second prompt)", out, err))
                seen = [len(out), len(err)]
                await proc.write(to_bytes(become.get_option("become_pass") or "") + b"\n")
                sent = True
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                channel, chunk = await asyncio.wait_for(chunks.__anext__(), max(remaining, 0))
            except StopAsyncIteration:
                raise AnsibleError(self._become_error("Premature end of output", out, err)) \
                    from None
            except TimeoutError:
                raise AnsibleConnectionFailure(self._become_error("Timed out", out, err)) \
                    from None
            (out if channel == STDOUT else err).extend(chunk)
        stripped_out = become.strip_become_success(become.strip_become_prompt(bytes(out)))
        return bytearray(stripped_out), bytearray(become.strip_become_prompt(bytes(err)))

    @staticmethod
    def _become_error(reason: str, out: bytearray, err: bytearray) -> str:
        text = f"{reason} waiting for become success."
        if out:
            text += f"\n>>> Standard Output\n{to_text(bytes(out))}"
        if err:
            text += f"\n>>> Standard Error\n{to_text(bytes(err))}"
        return text

    # --- files ---------------------------------------------------------------------------------

    def put_file(self, in_path: str, out_path: str) -> None:
        """Upload through tether's verified, atomic transfer (replacing ``out_path``)."""
        super().put_file(in_path, out_path)
        self._connect()
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._address()[0])
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        self._transfer(self._conn.put(in_path, out_path, force=True, resume=False),
                       in_path, out_path)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Download through tether's verified, atomic transfer (replacing ``out_path``)."""
        super().fetch_file(in_path, out_path)
        self._connect()
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._address()[0])
        self._transfer(self._conn.get(in_path, out_path, force=True, resume=False),
                       in_path, out_path)

    def _transfer(self, coro: Any, source: str, dest: str) -> None:
        from tether.errors import TetherError

        try:
            self._run(coro)
        except TetherError as exc:
            raise AnsibleError(f"tether: failed to transfer {source} to {dest}: "
                               f"{_one_line(exc)}") from None

    # --- ending --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Drop this host's connection (and the mux's shared one) so the next task reconnects."""
        shared = self._conn is not None and getattr(self._conn, "shared", False)
        self.close()
        if shared or self._mux_kwargs().get("mux") == "auto":
            self._forget_shared()

    def _forget_shared(self) -> None:
        try:
            from tether.client import mux
        except ImportError:
            return
        host, port = self._address()
        try:
            mux.forget(host, port, home=self.get_option("home") or None)
        except OSError as exc:
            display.vvv(f"tether: could not reset the shared connection: {exc}", host=host)

    def close(self) -> None:
        """Close the connection; a shared one stays open in the mux for the next worker."""
        if self._conn is not None and self._loop is not None:
            try:
                self._loop.run_until_complete(self._conn.close())
            except Exception as exc:  # closing a connection that already broke
                display.vvvv(f"tether: close: {_one_line(exc)}")
        self._drop()

    def _drop(self) -> None:
        self._conn = None
        self._close_loop()
        self._connected = False

    def _close_loop(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
