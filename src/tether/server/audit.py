"""The audit log: one JSON object per line and event (``tether serve --audit FILE``).

Events: ``connection`` (fingerprint, name, address), ``refused`` (address, reason; a ``count``
and ``interval`` when it sums up the refusals of one address, see server/refusals.py),
``disconnection`` (a ``reason`` when the connection failed: idle, no keepalive answer, lost),
``command`` (argv, cwd, status, signal, timed_out, duration), ``shell``, ``transfer`` (op, path,
bytes, hash, outcome), ``list`` (path, count), ``stream_error`` (code, reason and, for a refused
request, its op and argv or path) and ``classic``. Every line is ASCII (JSON escapes). Lines are
written whole with one ``write`` on an O_APPEND file, so concurrent writers never interleave
within a line.

Observers (the metrics, server/metrics.py) see every event, with or without a file: one stream of
events feeds both, so the counters and the audit log never disagree. :meth:`AuditLog.reopen`
takes a new path on SIGHUP (after logrotate moved the file away).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Observer = Callable[[str, dict[str, Any]], None]


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd = -1
        self.observers: list[Observer] = []
        if path is not None:
            self._fd = self._open(path)

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    @property
    def wanted(self) -> bool:
        """Whether anyone (a file, an observer) takes events: if not, callers may skip them."""
        return self._fd >= 0 or bool(self.observers)

    def reopen(self, path: Path | None) -> None:
        """Write to ``path`` from now on (raises OSError and keeps the old file if it can't)."""
        fd = self._open(path) if path is not None else -1
        self.close()
        self.path, self._fd = path, fd

    def event(self, kind: str, **fields: Any) -> None:
        for observer in self.observers:
            try:
                observer(kind, fields)
            except Exception:  # a bug in the metrics must not cost an audit line or a session
                logging.getLogger("tether.server").exception("audit observer failed")
        if self._fd < 0:
            return
        record = {"time": round(time.time(), 6), "event": kind, **fields}
        # ASCII only: a peer's U+2028, U+0085 or lone surrogate is escaped, so no reader (a
        # log shipper splitting on Unicode line breaks, a terminal) sees a raw one
        line = json.dumps(record, ensure_ascii=True, default=str) + "\n"
        os.write(self._fd, line.encode("ascii"))

    def fileno(self) -> int:
        """The log's descriptor (-1: none), kept open by a privilege-separated worker."""
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class EventRelay:
    """A forked worker's audit events, carried to the parent's observers (the metrics).

    The worker (server/privsep.py) writes its own audit lines to the shared file; its observers
    are replaced by this pipe, one JSON line per event, which the parent reads on its event loop
    and hands to its own observers. The worker's end never blocks: a full pipe (a parent that
    stopped reading) costs a counted event, never a session.
    """

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self._pending = b""
        self._observers: list[Observer] = []

    # --- the worker's side ---

    def in_worker(self, audit: AuditLog) -> None:
        os.close(self.read_fd)
        os.set_blocking(self.write_fd, False)
        audit.observers[:] = [self._send]

    def _send(self, kind: str, fields: dict[str, Any]) -> None:
        line = json.dumps([kind, fields], ensure_ascii=True, default=str) + "\n"
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self.write_fd, line.encode("ascii"))

    # --- the parent's side ---

    def in_parent(self, observers: list[Observer]) -> None:
        os.close(self.write_fd)
        self._observers = list(observers)
        asyncio.get_running_loop().add_reader(self.read_fd, self._receive)

    def _receive(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(self.read_fd)
            return
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            try:
                kind, fields = json.loads(line)
            except ValueError:  # a line cut by a dying worker
                continue
            for observer in self._observers:
                try:
                    observer(str(kind), fields)
                except Exception:
                    logging.getLogger("tether.server").exception("audit observer failed")

    def close(self) -> None:
        """The worker is gone: take what it wrote last, then close."""
        with contextlib.suppress(OSError):
            os.set_blocking(self.read_fd, False)
            self._receive()
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self.read_fd)
        with contextlib.suppress(OSError):
            os.close(self.read_fd)
