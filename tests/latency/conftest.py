from pathlib import Path

import pytest


@pytest.fixture
def user_tables(tmp_path, monkeypatch) -> Path:
    """An empty user table directory, as $HWNAS_TABLES."""
    directory = tmp_path / "tables"
    directory.mkdir()
    monkeypatch.setenv("HWNAS_TABLES", str(directory))
    return directory
