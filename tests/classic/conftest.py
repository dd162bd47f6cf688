"""Fixtures for the classic-protocol tests (helpers live in classic_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from classic_harness import ServeProcess, start_serve


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """One server per test module; tests use file names of their own."""
    server = start_serve(tmp_path_factory.mktemp("classic"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(serve: ServeProcess) -> ServeProcess:
    assert serve.alive(), serve.log_text()[-4000:]
    return serve
