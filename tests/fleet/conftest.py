"""Fixtures for the fleet tests: one farm of 50 in-process servers for the whole session
(``farm.py`` describes it), and a fixture that stops some of them for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .farm import STOPPED, Farm


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    f = Farm(tmp_path_factory.mktemp("fleet"))
    try:
        f.start()
        yield f
    finally:
        f.close()


@pytest.fixture
def stopped(farm: Farm) -> Iterator[list[str]]:
    """STOPPED servers are down for this test and back up after it."""
    farm.stop_nodes(STOPPED)
    try:
        yield STOPPED
    finally:
        farm.start_nodes(STOPPED)
