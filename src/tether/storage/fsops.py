"""The file calls storage code makes with a directory fd (``open(name, flags, dir_fd=…)``,
``lstat``, ``rename``, ``fwalk``, …) and the ``O_*`` flags they take: ``os`` itself on Unix,
:mod:`tether.storage.winfs` (the same calls over Windows directory handles) on Windows."""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from tether.storage import winfs as fs
else:
    import os as fs

__all__ = ["fs"]
