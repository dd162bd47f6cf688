"""Issue 13 item 1: the server's own TETHER_HOME and audit log are out of every client's reach.

Before, a client with only ``put`` and no ``--root`` overwrote ``$TETHER_HOME/authorized`` (with
``--force``) and granted itself ``exec``; one with only ``get`` downloaded ``server_key.pem``. Now
every transfer, listing and symlink target that resolves there is refused, whatever the spelling
(absolute, ``..``, a symlink in the root, a confined client whose root holds the home), and a
listing leaves the home and the audit log out.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.errors import RemoteError
from tether.identity import AuthorizedClient, add_authorized, generate_identity

from .conftest import Setup, make_setup
from .rawclient import RawClient, msg_frame


@pytest.fixture
async def audited(tmp_path: Path) -> Setup:
    s = await make_setup(tmp_path, audit=tmp_path / "audit.jsonl")
    yield s  # type: ignore[misc]
    await s.server.close()


def _home(setup: Setup) -> Path:
    return setup.server.config.home


def _digests(home: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in home.iterdir()
            if p.is_file()}


def _raw(setup: Setup, identity: Any, header: dict[str, Any]) -> dict[str, Any]:
    client = RawClient.connect(setup.port, identity, timeout=10)
    try:
        client.handshake()
        client.send(msg_frame(header, stream=1))
        (frame,) = client.frames(1)
        return frame.header or {}
    finally:
        client.close()


def _raw_requests(setup: Setup) -> dict[str, dict[str, Any]]:
    home = str(_home(setup))
    audit = str(setup.server.config.audit)
    return {
        "put authorized": {"t": "put", "path": f"{home}/authorized", "size": 1, "force": True},
        "put into home": {"t": "put", "path": f"{home}/", "name": "x", "size": 1},
        "put over the audit log": {"t": "put", "path": audit, "size": 1, "force": True},
        "get key": {"t": "get", "path": f"{home}/server_key.pem"},
        "get key by ..": {"t": "get", "path": "../server/server_key.pem"},
        "get audit": {"t": "get", "path": audit},
        "list home": {"t": "list", "path": home},
        "list audit": {"t": "list", "path": audit},
        "fetch key": {"t": "fetch", "path": home, "names": ["server_key.pem"]},
        "batch authorized": {"t": "batch", "path": home, "names": ["authorized"], "sizes": [0],
                             "modes": [420], "mtimes": [0], "hashes": [""], "force": True},
        "symlink to home": {"t": "put", "path": "", "name": "l", "kind": "symlink",
                            "target": home},
        "symlink to a key": {"t": "put", "path": "", "name": "k", "kind": "symlink",
                             "target": f"{home}/server_key.pem"},
        "symlink to the audit log": {"t": "put", "path": "", "name": "a", "kind": "symlink",
                                     "target": audit},
        "get through a symlink": {"t": "get", "path": "to-home/server_key.pem"},
        "get a symlinked key": {"t": "get", "path": "to-key"},
        "put through a symlink": {"t": "put", "path": "to-home/authorized", "size": 1,
                                  "force": True},
    }


@pytest.mark.parametrize("name", [
    "put authorized", "put into home", "put over the audit log", "get key", "get key by ..",
    "get audit", "list home", "list audit", "fetch key", "batch authorized", "symlink to home",
    "symlink to a key", "symlink to the audit log", "get through a symlink",
    "get a symlinked key", "put through a symlink"])
async def test_an_unconfined_client_cannot_reach_the_servers_files(audited: Setup, name: str
                                                                   ) -> None:
    home = _home(audited)
    (audited.root / "to-home").symlink_to(home)
    (audited.root / "to-key").symlink_to(home / "server_key.pem")
    before = _digests(home)
    answer = await asyncio.to_thread(_raw, audited, audited.client_id,
                                     _raw_requests(audited)[name])
    assert answer.get("t") == "error", answer
    assert answer["code"] == "permission_denied", answer
    assert "the server's own files" in answer["message"]
    assert _digests(home) == before
    made = {p.name for p in audited.root.iterdir()} - {"to-home", "to-key"}
    assert made == set()


async def test_get_and_put_through_the_api_are_refused(audited: Setup, tmp_path: Path) -> None:
    home = _home(audited)
    before = _digests(home)
    evil = tmp_path / "evil"
    evil.write_text("x exec,put,get,shell\n")
    async with tether.connect("127.0.0.1", audited.port, home=audited.client_home,
                              accept_new=True) as conn:
        with pytest.raises(RemoteError, match="the server's own files"):
            await conn.put(evil, f"{home}/authorized", force=True)
        with pytest.raises(RemoteError, match="the server's own files"):
            await conn.get(f"{home}/server_key.pem", tmp_path / "stolen")
        with pytest.raises(RemoteError, match="the server's own files"):
            await conn.get(str(home), tmp_path / "stolen-tree", recursive=True)
        assert (await conn.run(["echo", "ok"])).stdout == b"ok\n"
    assert _digests(home) == before
    assert not (tmp_path / "stolen").exists()


async def test_a_confined_client_whose_root_holds_the_home(audited: Setup, tmp_path: Path
                                                           ) -> None:
    """Root tmp_path holds the server's home ("server") and the audit log: a get -r of the root
    leaves both out, and naming them is refused."""
    jailed = generate_identity(tmp_path / "jailed", "jailed")
    add_authorized(_home(audited), AuthorizedClient(jailed.cert_der, "jailed",
                                                    root=str(tmp_path)))
    (tmp_path / "public.txt").write_text("hello")
    out = tmp_path / "out"
    async with tether.connect("127.0.0.1", audited.port, home=tmp_path / "jailed",
                              accept_new=True) as conn:
        with pytest.raises(RemoteError, match="the server's own files"):
            await conn.get("server/server_key.pem", tmp_path / "stolen")
        with pytest.raises(RemoteError, match="the server's own files"):
            await conn.get("audit.jsonl", tmp_path / "stolen")
        out.mkdir()
        await conn.get("", out, recursive=True)
    names = {p.name for p in out.rglob("*")}
    assert "public.txt" in names
    assert "server_key.pem" not in names and "authorized" not in names
    assert "audit.jsonl" not in names
