"""Fixtures for the classic-protocol tests (helpers live in classic_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from classic.classic_harness import ClassicServe, start_classic


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClassicServe]:
    """One server per test module; tests use file names of their own."""
    with start_classic(tmp_path_factory.mktemp("classic")) as server:
        yield server


@pytest.fixture
def server(serve: ClassicServe) -> ClassicServe:
    return serve.checked()
