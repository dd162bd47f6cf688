"""Issue 13 item 1 for the classic port: its downloads and uploads go through the file area, so
the server's audit log (here in the classic root) can be neither read nor replaced."""

from __future__ import annotations

import asyncio
from pathlib import Path

from classic.classic_clients import connect, download
from tether.server.audit import AuditLog
from tether.server.classic import ClassicServer
from tether.server.config import ClassicConfig
from tether.storage.reserved import Reserved


async def test_the_audit_log_is_out_of_the_classic_ports_reach(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    audit_path = root / "audit.jsonl"
    audit = AuditLog(audit_path)
    audit.event("marker", note="written by the server")
    (root / "public.txt").write_text("hello")
    server = ClassicServer(ClassicConfig(), root, "utf-8", audit=audit,
                           reserved=Reserved([tmp_path / "home"], [audit_path]))
    await server.start()
    try:
        def attempt() -> tuple[dict[str, object], dict[str, object]]:
            sock = connect(server.port)
            try:
                refused, _ = download(sock, "audit.jsonl")
                allowed, body = download(sock, "public.txt")
                assert body == b"hello"
                return refused, allowed
            finally:
                sock.close()

        refused, allowed = await asyncio.to_thread(attempt)
        assert refused["filesize"] == 0 and "the server's own files" in str(refused["error"])
        assert "error" not in allowed
    finally:
        await server.close()
        audit.close()
    assert b"written by the server" in audit_path.read_bytes()

