"""Everything that writes or reads files for a peer, below both ``server/`` and ``client/``.

Rooms (each module says more):

* :mod:`~tether.storage.errors`: the one errno table, turning a failed disk access into the
  tether error (and so the wire code) it stands for.
* :mod:`~tether.storage.names`: what a name may be, and no-follow directory walks.
* :mod:`~tether.storage.source`: hashing, and reading files to send (whole, or streamed with
  their size checked).
* :mod:`~tether.storage.partial`: partial files, placement and durability.
* :mod:`~tether.storage.batch`: batches of small files: caps, directory caches, the receiver.
* :mod:`~tether.storage.area`: :class:`~tether.storage.area.FileArea`, the only code that opens
  a client's paths on the server (classic mode included), with confinement.

Imports point down only: this package imports nothing from ``server``, ``client`` or ``cli``.
"""
