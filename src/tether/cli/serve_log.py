"""How ``tether serve`` writes its log: one line per event, on stderr, in one of three shapes.

- ``text`` (the default at a terminal): ``TIME tether LEVEL message``, and the start-up lines
  (``tether serve: listening on ...``) exactly as they have always been;
- under journald (``$JOURNAL_STREAM`` names our stderr): no timestamp of our own, the journal
  adds one, and a ``<N>`` syslog priority prefix so ``journalctl -p warning`` works;
- ``--log-format json``: one JSON object per line (``time``, ``level``, ``logger``, ``message``)
  for log collectors.

A traceback (``log.exception``) stays on its event's line in the journal and JSON shapes.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

ANNOUNCE = "tether.serve"  # the start-up and stop lines, written as `tether serve: ...`
_SYSLOG = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
           logging.CRITICAL: 2}


def under_journald(stream: TextIO | None = None) -> bool:
    """Whether ``$JOURNAL_STREAM`` (``DEV:INODE``) is the stream we log to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _one_line(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += " | " + formatter.formatException(record.exc_info).replace("\n", " | ")
    return text.replace("\n", " ")


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG.get(record.levelno, 6)
        prefix = "tether serve: " if record.name == ANNOUNCE else ""
        return f"<{prio}>{prefix}{_one_line(record, self)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _one_line(record, self),
        }
        return json.dumps(entry, ensure_ascii=False)


def setup(log_format: str, debug: bool = False) -> str:
    """Configure the root logger for the server; returns the shape chosen."""
    shape = "json" if log_format == "json" else "journal" if under_journald() else "text"
    handler = logging.StreamHandler(sys.stderr)
    announce = logging.StreamHandler(sys.stderr)
    if shape == "json":
        handler.setFormatter(JsonFormatter())
        announce.setFormatter(JsonFormatter())
    elif shape == "journal":
        handler.setFormatter(JournalFormatter())
        announce.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s tether %(levelname)s %(message)s"))
        announce.setFormatter(logging.Formatter("tether serve: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    lines = logging.getLogger(ANNOUNCE)
    lines.handlers[:] = [announce]
    lines.propagate = False
    lines.setLevel(logging.INFO)
    return shape


def announce(message: str, *args: object) -> None:
    """A start-up or stop line (``tether serve: ...`` in the text shape)."""
    logging.getLogger(ANNOUNCE).info(message, *args)
