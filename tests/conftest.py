"""Shared fixtures. Tests use the real pieces: SQLite, HDF5, torchrun with 2 gloo ranks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("ASIARCH_UPDATE_GOLDEN") == "1"


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with tests/golden/NAME; ASIARCH_UPDATE_GOLDEN=1 rewrites the file."""
    path = GOLDEN / name
    if UPDATE_GOLDEN or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if not UPDATE_GOLDEN:
            pytest.fail(f"golden file {path} did not exist and was written; check it and rerun")
    assert text == path.read_text(), (
        f"output differs from golden file {path}; if the change is intended, rerun with ASIARCH_UPDATE_GOLDEN=1")


@pytest.fixture
def tmp_path_spaces(tmp_path: Path) -> Path:
    """A temporary directory whose path has spaces and quotes, as users' paths sometimes do."""
    p = tmp_path / "my exp 'q' dir"
    p.mkdir()
    return p


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
