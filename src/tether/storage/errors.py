"""The one errno table: what a failed disk access made for a peer stands for.

A disk failure ends the operation, never the connection: it becomes a
:class:`~tether.errors.RemoteError` subclass, and so the wire code the peer sees (docs/PROTOCOL.md,
"Errors"). Every module that touches the disk for a peer (the server's file area, partial files,
batches, and the client's writes of what it receives) translates through :func:`disk_error`.
"""

from __future__ import annotations

import errno

from tether.errors import NoSpace, NotFound, PermissionDenied, RemoteError, UnsafePath

# errno -> (class, reason, message when reaching ``{path}`` failed)
_TABLE: dict[int, tuple[type[RemoteError], str, str]] = {
    errno.ENOENT: (NotFound, "no such file or directory", "no such file or directory: {path}"),
    errno.EACCES: (PermissionDenied, "permission denied", "permission denied: {path}"),
    errno.EPERM: (PermissionDenied, "permission denied", "permission denied: {path}"),
    errno.EROFS: (PermissionDenied, "read-only file system", "read-only file system: {path}"),
    errno.ELOOP: (UnsafePath, "refusing to follow a symlink",
                  "refusing to follow a symlink in {path}"),
    errno.ENOTDIR: (NotFound, "not a directory", "not a directory: {path}"),
    errno.ENOSPC: (NoSpace, "no space left on device", "no space left on device: {path}"),
    errno.EDQUOT: (NoSpace, "no space left on device", "no space left on device: {path}"),
}


def disk_error(exc: OSError, path: str, verb: str | None = None) -> RemoteError:
    """The error ``exc`` stands for. ``verb`` says what was being done to ``path`` ("write",
    "read", "list", or "store": writing a whole small file, which keeps no partial); None means
    reaching or opening it. A full disk while writing keeps the partial (the resume promise), and
    says so; while storing it says that nothing of that file is kept."""
    known = _TABLE.get(exc.errno or 0)
    if known is None:
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        return RemoteError(f"cannot {verb} {path}: {reason}" if verb else f"{path}: {reason}")
    cls, reason, reached = known
    if verb is None:
        return cls(reached.format(path=path))
    if cls is NoSpace and verb == "write":
        return NoSpace(f"no space left on device while writing {path} (partial kept for resume)")
    if cls is NoSpace and verb == "store":  # a small file of a batch: stored whole or not at all
        return NoSpace(f"no space left on device while storing {path} (nothing of it is kept; "
                       f"files stored before it are complete)")
    if verb == "store":
        verb = "write"
    return cls(f"cannot {verb} {path}: {reason}")
