"""The audit log: one JSON object per line and event (``tether serve --audit FILE``).

Events: ``connection`` (fingerprint, name, address), ``refused`` (address, reason; a ``count``
and ``interval`` when it sums up the refusals of one address, see server/refusals.py),
``disconnection`` (a ``reason`` when the connection failed: idle, no keepalive answer, lost),
``command`` (argv, cwd, status, signal, timed_out, duration), ``shell``, ``transfer`` (op, path,
bytes, hash, outcome), ``list`` (path, count), ``forward`` (one forwarded connection: from, to,
bytes_in from the client, bytes_out to it, duration, outcome), ``listen`` (a listener's
address), ``stream_error`` (code, reason and, for a refused request, its op and argv, path or
target) and ``classic``. Every line is ASCII (JSON escapes). Lines are
written whole with one ``write`` on an O_APPEND file, so concurrent writers never interleave
within a line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd = -1
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def event(self, kind: str, **fields: Any) -> None:
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
