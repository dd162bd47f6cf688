"""Fixtures of the fleet-trust tests: a lab (a CA and the servers trusting it) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Lab, lab_fixture


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    yield from lab_fixture(tmp_path)
