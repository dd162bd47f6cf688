"""Bounded memory: a 1 GiB put and get keep both the client and the server process well under
64 MiB of resident memory, because data moves in flow-controlled chunks, never whole."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from .conftest import ServeFactory
from .helpers import TETHER, Identities, cli_env

GIB = 1024 * 1024 * 1024
LIMIT = 64 * 1024 * 1024


class PeakRss:
    """Samples a process's resident set size every 20 ms until stopped."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _transfer(args: list[str], ids: Identities, server_pid: int) -> tuple[int, int]:
    """Run one CLI transfer; the peak RSS of the client and of the server meanwhile."""
    server = PeakRss(server_pid)
    client = subprocess.Popen([*TETHER, *args], env=cli_env(ids.client_home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client_rss = PeakRss(client.pid)
    _, err = client.communicate(timeout=300)
    assert client.returncode == 0, err.decode()
    return client_rss.stop(), server.stop()


@pytest.mark.slow
def test_one_gib_put_and_get_stay_under_64_mib(serve: ServeFactory, ids: Identities,
                                              work: Path) -> None:
    server = serve()
    source = work / "big.bin"
    with source.open("wb") as fh:
        fh.truncate(GIB)  # sparse: cheap to make, still 1 GiB through the whole pipeline
    port = ["-p", str(server.port), "--accept-new"]
    put = _transfer(["put", *port, str(source), "127.0.0.1:big.bin"], ids, server.proc.pid)
    get = _transfer(["get", *port, "127.0.0.1:big.bin", str(work / "back.bin")], ids,
                    server.proc.pid)
    assert (server.root / "big.bin").stat().st_size == GIB
    assert (work / "back.bin").stat().st_size == GIB
    for name, (client_peak, server_peak) in {"put": put, "get": get}.items():
        print(f"{name}: client {client_peak / 2**20:.1f} MiB, server {server_peak / 2**20:.1f} MiB")
        assert client_peak < LIMIT, f"{name}: client peaked at {client_peak >> 20} MiB"
        assert server_peak < LIMIT, f"{name}: server peaked at {server_peak >> 20} MiB"
