"""The Windows suite's fixtures: a ``tether serve`` under Wine per test module (winserver.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .winserver import WinServer, require_wine, start_wine_server, stop_wine


@pytest.fixture(scope="module")
def win_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WinServer]:
    require_wine()
    server = start_wine_server(tmp_path_factory.mktemp("win"))
    try:
        yield server
    finally:
        stop_wine(server.proc, server.copier)


@pytest.fixture
def server(win_server: WinServer) -> WinServer:
    return win_server.checked()
