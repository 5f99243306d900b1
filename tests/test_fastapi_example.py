"""The example FastAPI app (examples/fastapi_notes.py) under hypercorn."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path

import pytest


@pytest.fixture
async def fastapi_notes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[types.ModuleType]:
    """The example module, imported afresh on SQLite files in ``tmp_path``."""
    pytest.importorskip("fastapi", reason="FastAPI is not installed")
    monkeypatch.setenv("NOTES_DATABASE_URL", f"sqlite:///{tmp_path / 'notes.db'}")
    monkeypatch.delitem(sys.modules, "examples.fastapi_notes", raising=False)
    module = importlib.import_module("examples.fastapi_notes")
    yield module
    await module.db.dispose()
    sys.modules.pop("examples.fastapi_notes", None)


async def test_demo_stores_lists_and_answers_404s_and_422s(
    fastapi_notes: types.ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo's requests: notes committed on success (and audited), a page
    from the query string, FastAPI's own 404 and 422, then the server stops."""
    await fastapi_notes.demo()
    output = capsys.readouterr().out
    assert output.count("-> 201") == 2
    assert '-> 404 {"detail":"no note 99"}' in output
    assert "-> 422" in output
    assert '"page":2,"per_page":1,"pages":2,"total":2' in output
    assert output.count('"operation":"insert"') == 2
    assert output.rstrip().endswith("server stopped")
    assert (tmp_path / "audit.db").exists()
    assert not fastapi_notes.db.session.registry.registry
