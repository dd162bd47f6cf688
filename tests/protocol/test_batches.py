"""The batch messages of tree transfers (``batch``, ``fetch``, ``files``, ``entries``, and
``done`` with ``names``) survive any split of the byte stream, and their per-file lists are
type-checked like every other field: a wrong element type is a protocol error, never a
handler's surprise."""

from __future__ import annotations

import pytest
from protocol_helpers import (
    Pair,
    events_from,
    one_byte_at_a_time,
    payload,
    raw_msg,
    split_at,
)

from tether.errors import LocalProtocolError, RemoteProtocolError
from tether.protocol.connection import CLOSED, NEED_DATA, Connection, Event
from tether.protocol.frames import encode_data_prefix, encode_msg
from tether.protocol.messages import (
    Batch,
    Close,
    Data,
    Done,
    Entries,
    Fetch,
    Files,
    Hello,
    List,
    Message,
    Role,
    Welcome,
)

H = "blake3:" + "ab" * 32
CONTENTS = [payload(3, seed=1), b"", payload(700, seed=2), payload(1, seed=3)]
NAMES = ["ünï cødé/✓ file.txt", "empty", "a/b/c/deep", "sp ace"]


def client_items() -> list[Message | Data]:
    """A client that puts a batch (stream 1), fetches one (3) and lists a tree (5)."""
    return [
        Hello(versions=[1]),
        Batch(path="dest dir", names=NAMES, sizes=[len(c) for c in CONTENTS],
              modes=[0o644, 0o600, 0o755, 0o640], mtimes=[2**62, 0, 1, 17],
              hashes=[H] * 4, force=True, stream=1),
        Data(1, 0, b"".join(CONTENTS)),
        Fetch(path="src", names=NAMES, stream=3),
        List(path="src", batched=True, stream=5),
        Close(stream=1),
    ]


def server_items() -> list[Message | Data]:
    """A server answering that client: files and data for the fetch, entries for the list,
    done with the stored names for the batch."""
    return [
        Welcome(version=1, permissions=["get", "put"]),
        Files(sizes=[len(c) for c in CONTENTS], modes=[0o644, 0o600, 0o755, 0o640],
              mtimes=[5, 6, 7, 8], hashes=[H] * 4, stream=3),
        Data(3, 0, b"".join(CONTENTS)),
        Done(path="src", size=704, count=4, stream=3),
        Entries(names=["", "a", "a/l", "a/f"], kinds=["dir", "dir", "symlink", "file"],
                sizes=[0, 0, 0, 9], modes=[0o755, 0o700, 0o777, 0o644], mtimes=[1, 2, 3, 4],
                targets=[None, None, "../ünï", None], stream=5),
        Done(path="src", count=4, stream=5),
        Done(path="dest dir", size=704, count=4,
             names=["dest dir/ünï cødé/✓ file (1).txt", "dest dir/empty"], stream=1),
    ]


def encode(item: Message | Data) -> bytes:
    if isinstance(item, Data):
        return encode_data_prefix(item.stream, item.channel, len(item.data)) + item.data
    return encode_msg(item.stream, item.to_header())


def receive(role: Role, pieces: list[bytes]) -> list[Event]:
    """Every event a ``role`` connection yields for ``pieces``; it plays its own part (hello,
    welcome, the three requests) so that the peer's frames are valid for it."""
    conn = Connection(role)
    if role is Role.CLIENT:
        conn.send(Hello(versions=[1]))
    events: list[Event] = []
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, Hello):
                conn.send(Welcome(version=1))
            elif isinstance(event, Welcome):
                for item in client_items()[1:]:
                    if isinstance(item, Batch | Fetch | List):
                        conn.send(item)
            if event is CLOSED:
                return events
    return events


SCRIPTS = {Role.SERVER: client_items(), Role.CLIENT: server_items()}
WIRE = {role: b"".join(encode(item) for item in items) for role, items in SCRIPTS.items()}


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_whole_and_byte_by_byte(role: Role) -> None:
    expected = [*SCRIPTS[role], CLOSED]
    assert receive(role, [WIRE[role]]) == expected
    assert receive(role, one_byte_at_a_time(WIRE[role])) == expected


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_every_two_piece_split(role: Role) -> None:
    data, expected = WIRE[role], [*SCRIPTS[role], CLOSED]
    for offset in range(len(data) + 1):
        assert receive(role, split_at(data, [offset])) == expected, f"split at {offset}"


def test_every_three_piece_split_of_a_batch_frame() -> None:
    frame = encode(client_items()[1])
    for a in range(0, len(frame), 7):
        for b in range(a, len(frame), 13):
            events = receive(Role.SERVER, [encode(Hello(versions=[1])),
                                           *split_at(frame, [a, b])])
            assert events[1] == client_items()[1], (a, b)


BAD_FIELDS = [
    ("batch", {"path": "t", "names": ["a"], "sizes": ["1"], "modes": [0], "mtimes": [0],
               "hashes": [H]}),
    ("batch", {"path": "t", "names": [None], "sizes": [1], "modes": [0], "mtimes": [0],
               "hashes": [H]}),
    ("batch", {"path": "t", "names": ["a"], "sizes": [1], "modes": [0], "mtimes": [0.5],
               "hashes": [H]}),
    ("batch", {"path": "t", "names": ["a"], "sizes": [True], "modes": [0], "mtimes": [0],
               "hashes": [H]}),
    ("batch", {"path": "t", "names": "a", "sizes": [1], "modes": [0], "mtimes": [0],
               "hashes": [H]}),
    ("batch", {"path": "t", "names": ["a"], "sizes": [1], "modes": [0], "mtimes": [0]}),
    ("fetch", {"path": "t", "names": [["a"]]}),
    ("fetch", {"path": "t"}),
]


@pytest.mark.parametrize(("kind", "fields"), BAD_FIELDS)
def test_a_wrongly_typed_list_is_a_protocol_error(kind: str, fields: dict[str, object]) -> None:
    pair = Pair()
    pair.handshake()
    with pytest.raises(RemoteProtocolError, match=kind):
        pair.to_server(raw_msg({"t": kind, **fields}, stream=1))


@pytest.mark.parametrize("fields", [
    {"sizes": [1], "modes": [0], "mtimes": [0], "hashes": [7]},
    {"sizes": [-0.5], "modes": [0], "mtimes": [0], "hashes": [H]},
])
def test_a_wrongly_typed_files_answer_is_a_protocol_error(fields: dict[str, object]) -> None:
    pair = Pair()
    pair.handshake()
    pair.client_sends(Fetch(path="t", names=["a"], stream=1))
    with pytest.raises(RemoteProtocolError, match="files"):
        pair.to_client(raw_msg({"t": "files", **fields}, stream=1))


def test_entries_targets_may_be_null_but_not_numbers() -> None:
    pair = Pair()
    pair.handshake()
    pair.client_sends(List(path="t", batched=True, stream=1))
    good = {"t": "entries", "names": ["", "l"], "kinds": ["dir", "symlink"], "sizes": [0, 0],
            "modes": [0, 0], "mtimes": [0, 0], "targets": [None, "x"]}
    assert events_from(pair.client, raw_msg(good, stream=1)) == [
        Entries(names=["", "l"], kinds=["dir", "symlink"], sizes=[0, 0], modes=[0, 0],
                mtimes=[0, 0], targets=[None, "x"], stream=1)]
    with pytest.raises(RemoteProtocolError, match="entries"):
        pair.to_client(raw_msg({**good, "targets": [None, 5]}, stream=1))


def test_only_the_client_sends_batch_and_fetch_only_the_server_files_and_entries() -> None:
    server = Connection(Role.SERVER)
    client = Connection(Role.CLIENT)
    for msg in (Files(sizes=[], modes=[], mtimes=[], hashes=[], stream=1),
                Entries(names=[], kinds=[], sizes=[], modes=[], mtimes=[], targets=[],
                        stream=1)):
        with pytest.raises(LocalProtocolError):
            client.send(msg)
    for opener in (Batch(path="t", names=[], sizes=[], modes=[], mtimes=[], hashes=[],
                         stream=1), Fetch(path="t", names=[], stream=1)):
        with pytest.raises(LocalProtocolError):
            server.send(opener)
