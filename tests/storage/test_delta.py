"""Deltas (tether.storage.delta) on real files: the rebuilt file is byte-identical after
insertions, deletions, shifted content, edits at chunk boundaries, shrinking and growing, and
costs only the chunks an edit touched; the signature a builder derives of what it built is the
one reading it gives; a builder refuses records that reach outside the old copy or past the
announced size."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import BadRequest
from tether.storage.delta import (
    CDC_MAX,
    COPY,
    LITERAL,
    MAX_LITERAL,
    Builder,
    chunks,
    encode,
    make_delta,
    signature,
)

MiB = 1024 * 1024


def file_digest(fd: int, size: int) -> str:
    """The file's BLAKE3, read whole: what a builder's digest must equal."""
    return f"blake3:{blake3.blake3(os.pread(fd, size, 0)).hexdigest()}"


def data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def rebuild(tmp: Path, old: bytes, new: bytes, frame: int = 65536) -> tuple[bytes, int, int]:
    """(the rebuilt file, literal bytes sent, bytes reused): the old copy's signature, the new
    file's delta against it, its records fed to a builder in ``frame``-byte DATA pieces."""
    (tmp / "old").write_bytes(old)
    (tmp / "new").write_bytes(new)
    old_fd = os.open(tmp / "old", os.O_RDONLY)
    new_fd = os.open(tmp / "new", os.O_RDONLY)
    out_fd = os.open(tmp / "out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        sig = signature(old_fd, len(old), "old")
        delta = make_delta(new_fd, len(new), sig, "new")
        stream = b"".join(encode(delta.ops, new_fd, "new"))
        builder = Builder(out_fd, old_fd, len(old), len(new), "out")
        for at in range(0, len(stream), frame):
            builder.feed(stream[at:at + frame])
        assert builder.complete
        assert file_digest(out_fd, len(new)) == delta.hash == builder.digest()
        assert builder.matched == delta.matched
        # the signature the destination keeps of what it built is the one a read would give
        assert builder.signature(sig) == signature(out_fd, len(new), "out")
    finally:
        for fd in (old_fd, new_fd, out_fd):
            os.close(fd)
    return (tmp / "out").read_bytes(), delta.literal, delta.matched


def boundaries(old: bytes, tmp: Path) -> list[int]:
    (tmp / "b").write_bytes(old)
    fd = os.open(tmp / "b", os.O_RDONLY)
    try:
        return [offset for offset, _ in chunks(fd, len(old), "b")]
    finally:
        os.close(fd)


OLD = data(8 * MiB, 1)
EDIT = data(100_000, 2)


@pytest.mark.parametrize("name, make", [
    ("insert in the middle", lambda o: o[:4 * MiB] + EDIT + o[4 * MiB:]),
    ("delete from the middle", lambda o: o[:3 * MiB] + o[3 * MiB + 100_000:]),
    ("insert at the start (everything shifts)", lambda o: EDIT + o),
    ("delete at the start", lambda o: o[77_777:]),
    ("overwrite in place", lambda o: o[:5 * MiB] + EDIT + o[5 * MiB + 100_000:]),
    ("grow at the end", lambda o: o + EDIT),
    ("shrink at the end", lambda o: o[:6 * MiB]),
    ("move a block", lambda o: o[2 * MiB:3 * MiB] + o[:2 * MiB] + o[3 * MiB:]),
])
def test_edits_rebuild_identically_and_cost_what_they_touch(tmp_path: Path, name: str,
                                                            make: object) -> None:
    new = make(OLD)  # type: ignore[operator]
    out, literal, matched = rebuild(tmp_path, OLD, new)
    assert out == new
    assert literal <= 100_000 + 4 * CDC_MAX, name  # an edit costs the chunks around it
    assert matched + literal == len(new)


def test_edits_at_chunk_boundaries(tmp_path: Path) -> None:
    cuts = boundaries(OLD, tmp_path)[1:6]
    for cut in cuts:
        for new in (OLD[:cut] + b"!" + OLD[cut:], OLD[:cut] + OLD[cut + 1:],
                    OLD[:cut - 1] + b"?" + OLD[cut:]):
            out, literal, _ = rebuild(tmp_path, OLD, new)
            assert out == new and literal <= 3 * CDC_MAX


def test_nothing_in_common_and_empty_files(tmp_path: Path) -> None:
    other = data(3 * MiB, 5)
    assert rebuild(tmp_path, OLD, other)[:2] == (other, len(other))
    assert rebuild(tmp_path, OLD, b"")[0] == b""
    assert rebuild(tmp_path, b"", other)[0] == other
    assert rebuild(tmp_path, OLD, OLD, frame=1)[1:] == (0, len(OLD))  # fed byte by byte


def test_chunking_in_windows_equals_chunking_whole(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    whole = boundaries(OLD, tmp_path)
    monkeypatch.setattr("tether.storage.delta.WINDOW", 1_000_003)
    assert boundaries(OLD, tmp_path) == whole


@settings(max_examples=25, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 2 * MiB), st.integers(0, 50_000),
                                st.binary(max_size=3000)), max_size=4))
def test_any_edits_rebuild_identically(tmp_path_factory: pytest.TempPathFactory,
                                       edits: list[tuple[int, int, bytes]]) -> None:
    old = OLD[:2 * MiB]
    new = old
    for at, cut, insert in edits:
        new = new[:at] + insert + new[at + cut:]
    assert rebuild(tmp_path_factory.mktemp("d"), old, new)[0] == new


def _builder(tmp: Path, size: int) -> Builder:
    (tmp / "old").write_bytes(b"o" * 1000)
    old = os.open(tmp / "old", os.O_RDONLY)
    out = os.open(tmp / "out", os.O_RDWR | os.O_CREAT, 0o600)
    return Builder(out, old, 1000, size, "f")


@pytest.mark.parametrize("record, match", [
    (COPY + (990).to_bytes(8, "big") + (20).to_bytes(8, "big"), "copies bytes 990"),
    (COPY + (0).to_bytes(8, "big") + (0).to_bytes(8, "big"), "copies bytes"),
    (LITERAL + (MAX_LITERAL + 1).to_bytes(4, "big"), "literal of"),
    (LITERAL + (0).to_bytes(4, "big"), "literal of 0"),
    (LITERAL + (600).to_bytes(4, "big"), "more than the announced 500"),
    (COPY + (0).to_bytes(8, "big") + (501).to_bytes(8, "big"), "more than the announced"),
    (b"Z", "unknown delta record"),
])
def test_a_hostile_delta_is_refused(tmp_path: Path, record: bytes, match: str) -> None:
    builder = _builder(tmp_path, 500)
    with pytest.raises(BadRequest, match=match):
        builder.feed(record)
    assert (tmp_path / "out").stat().st_size == 0  # nothing was written


def test_a_copy_off_the_old_chunks_derives_no_signature(tmp_path: Path) -> None:
    """A sender that cuts otherwise (copies starting inside an old chunk) still gets its file
    built, but the destination keeps no signature that would misdescribe it."""
    old = OLD[:MiB]
    (tmp_path / "old").write_bytes(old)
    fd = os.open(tmp_path / "old", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        sig = signature(fd, len(old), "old")
        off = Builder(out, fd, len(old), 2000, "out")
        off.feed(COPY + (0).to_bytes(8, "big") + (1000).to_bytes(8, "big")
                     + LITERAL + (1000).to_bytes(4, "big") + EDIT[:1000])
        assert off.complete
        assert (tmp_path / "out").read_bytes() == old[:1000] + EDIT[:1000]
        assert off.signature(sig) is None  # 1000 bytes end inside the first old chunk
        whole = boundaries(old, tmp_path)[1]  # the second chunk's offset: the first's length
        built = Builder(out, fd, len(old), whole + 1000, "out")
        built.feed(COPY + (0).to_bytes(8, "big") + whole.to_bytes(8, "big")
                   + LITERAL + (1000).to_bytes(4, "big") + EDIT[:1000])
        assert built.signature(sig) == signature(out, whole + 1000, "out")
    finally:
        os.close(fd)
        os.close(out)


def test_ops_sent_while_the_file_is_cut_are_the_whole_delta(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source sends a delta's ops as the file is cut (``emit``): joined, they are the ops of
    the delta made at once, in order, with nothing left behind."""
    from tether.storage import delta as delta_module

    monkeypatch.setattr(delta_module, "EMIT_EVERY", MiB)
    new = OLD[:3 * MiB] + EDIT + OLD[3 * MiB:5 * MiB] + EDIT + OLD[6 * MiB:]
    (tmp_path / "old").write_bytes(OLD)
    (tmp_path / "new").write_bytes(new)
    old_fd = os.open(tmp_path / "old", os.O_RDONLY)
    new_fd = os.open(tmp_path / "new", os.O_RDONLY)
    try:
        sig = signature(old_fd, len(OLD), "old")
        whole = make_delta(new_fd, len(new), sig, "new")
        parts: list[list[tuple[bytes, int, int]]] = []
        streamed = make_delta(new_fd, len(new), sig, "new", parts.append)
    finally:
        os.close(old_fd)
        os.close(new_fd)
    assert len(parts) > 3 and streamed.ops == []
    assert [op for part in parts for op in part] == whole.ops
    assert (streamed.hash, streamed.matched, streamed.literal) == (
        whole.hash, whole.matched, whole.literal)
