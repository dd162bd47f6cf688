"""Which file names a Windows server refuses, and why: the rules a peer's path component must pass
before any file-system call sees it (importable on any platform; used when serving on Windows).

Win32 silently rewrites or redirects some names, so storing them would put the bytes somewhere
else than the peer asked: a device name (``CON``, ``NUL``, ``COM1``, also with an extension, e.g.
``nul.txt``) opens the device; a trailing dot or space is stripped (``a.`` is ``a``); ``:``
names an alternate data stream or a drive (``C:``); ``\\`` separates components; ``<>"|?*`` are
wildcards or invalid, as are control characters. Each is refused with its own reason.
Case-insensitive collisions (``README`` and ``readme`` are one file on NTFS) are the storage
layer's (``winfs``), which can see what is on disk.
"""

from __future__ import annotations

import re

from tether.errors import UnsafePath

RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"0123456789", "¹", "²", "³"]]
)
_FORBIDDEN = re.compile(r'[<>:"|?*\\\x00-\x1f]')


def check_component(name: str) -> str:
    """``name`` if Windows stores it as given; otherwise :class:`UnsafePath` saying why."""
    bad = _FORBIDDEN.search(name)
    if bad:
        char = bad.group()
        if char == ":":
            raise UnsafePath(f"refusing the Windows file name {name!r}: ':' names a drive or "
                             f"an alternate data stream")
        if char == "\\":
            raise UnsafePath(f"refusing the Windows file name {name!r}: '\\' separates "
                             f"directories on Windows (tether paths use '/')")
        raise UnsafePath(f"refusing the Windows file name {name!r}: {char!r} is not allowed "
                         f"in a Windows file name")
    if name not in (".", "..") and name.endswith((".", " ")):
        raise UnsafePath(f"refusing the Windows file name {name!r}: Windows drops a trailing "
                         f"dot or space")
    stem = name.split(".", 1)[0].rstrip(" ").upper()
    if stem in RESERVED:
        raise UnsafePath(f"refusing the Windows file name {name!r}: {stem} is a device name "
                         f"on Windows")
    return name
