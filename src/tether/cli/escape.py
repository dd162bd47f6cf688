"""The one escaping function for text a peer or a file system supplies (a server's error
message, a path it chose, a name or fingerprint from an unauthenticated discovery reply, a local
file name) before it reaches a terminal.

Control characters would let that text act on the terminal: set the window title, erase lines,
move the cursor, print a fake "transfer complete". Every C0 and C1 control, DEL, the line and
paragraph separators and the bidirectional overrides are shown as ``\\xNN`` or ``\\uNNNN``, so
what is printed is one visible line. Printable non-ASCII text (names in any script) is kept.

Light on purpose (the one-shot ``tether run`` path uses it): no imports.
"""

from __future__ import annotations

_INVISIBLE = [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x061C, 0x200E, 0x200F, 0x2028, 0x2029,
              *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_TABLE = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}") for c in _INVISIBLE}


def printable(text: object) -> str:
    """``text`` (anything: ``str()`` is taken) with every control character escaped."""
    return str(text).translate(_TABLE)


__all__ = ["printable"]
