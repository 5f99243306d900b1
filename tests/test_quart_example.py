"""The example Quart app (examples/notes_app) on every backend, and its demo."""

from __future__ import annotations

import typing as t
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import quart

from examples import notes_app
from examples.notes_app import __main__ as notes_main
from tests.conftest import Backend


@pytest.fixture
async def app(backend: Backend, tmp_path: Path) -> AsyncIterator[quart.Quart]:
    """The notes app on ``backend``, both binds on it, tables created."""
    app = notes_app.create_app(
        {
            "SQLALCHEMY_DATABASE_URI": backend.url,
            "SQLALCHEMY_ENGINE_OPTIONS": backend.engine_options,
            "SQLALCHEMY_BINDS": {"audit": backend.bind()},
        },
        instance_path=str(tmp_path),
    )
    async with app.app_context():
        await notes_app.db.create_all()
    yield app
    for engine in app.extensions["sqlalchemy"].state_for(app).engines.values():
        await engine.dispose()


async def test_notes_api_stores_lists_and_reports_errors_as_json(
    app: quart.Quart,
) -> None:
    """POST stores (committed on success), GET reads, errors are JSON."""
    client = app.test_client()
    created = await client.post("/notes", json={"text": "buy milk"})
    assert created.status_code == 201
    note = await created.get_json()
    assert note["text"] == "buy milk"
    assert (await client.get(f"/notes/{note['id']}")).status_code == 200
    missing = await client.get("/notes/999")
    assert missing.status_code == 404
    assert (await missing.get_json())["description"] == "no note 999"
    bad = await client.post("/notes", json={"text": ""})
    assert bad.status_code == 400
    for text in ("two", "three"):
        await client.post("/notes", json={"text": text})
    listing = await (await client.get("/notes?per_page=2&page=2")).get_json()
    assert [item["text"] for item in listing["items"]] == ["three"]
    assert (listing["page"], listing["pages"], listing["total"]) == (2, 2, 3)
    assert (await client.get("/notes?page=3&per_page=2")).status_code == 404
    assert (await client.get("/notes?page=abc")).status_code == 404


async def test_demo_serves_requests_and_stops(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo command answers its requests under hypercorn and stops."""
    await notes_main.demo()
    output = capsys.readouterr().out
    assert output.count("-> 201") == 3
    assert "-> 404" in output
    assert output.rstrip().endswith("server stopped")


def test_config_comes_from_quart_environment_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """QUART_SQLALCHEMY_DATABASE_URI points the app elsewhere; audit follows it."""
    url = "postgresql://notes@db.example/notes"
    monkeypatch.setenv("QUART_SQLALCHEMY_DATABASE_URI", url)
    app = notes_app.create_app(instance_path=str(tmp_path))
    engines: dict[t.Any, t.Any] = app.extensions["sqlalchemy"].state_for(app).engines
    assert str(engines[None].url) == "postgresql+asyncpg://notes@db.example/notes"
    assert engines["audit"].url == engines[None].url


async def test_committed_notes_are_audited_on_the_audit_bind(
    app: quart.Quart,
) -> None:
    """The models_committed receiver writes one audit entry per committed note."""
    client = app.test_client()
    for text in ("one", "two"):
        assert (await client.post("/notes", json={"text": text})).status_code == 201
    assert (await client.post("/notes", json={"text": ""})).status_code == 400
    audit = await (await client.get("/audit")).get_json()
    assert [(e["note_id"], e["operation"]) for e in audit["items"]] == [
        (2, "insert"),
        (1, "insert"),
    ]
