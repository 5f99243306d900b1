"""The async shell under Quart: the real ``quart db shell`` and ``python -m
async_sa shell --db app:create_app``, with the app context pushed for the
whole shell."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.migration_project import make_project
from tests.migration_project import Project
from tests.test_quart_migrations import with_app

STATEMENTS = [
    "from quart import current_app",
    "await db.create_all()",
    "g.mark = 'kept'",
    "note = Note(text='from the shell')",
    "db.session.add(note)",
    "print('app', app.name, current_app.name == app.name, g.mark)",
    "await db.session.commit()",
    "print('attached', note in db.session, len(db.engines))",
]


@pytest.fixture(params=["sqlite_file", "postgresql"])
async def project(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Project]:
    """A project whose Quart app (``app.py``) configures the two binds."""
    async for made in make_project(request.param, tmp_path):
        yield with_app(made)


async def test_quart_db_shell_keeps_the_app_context_and_the_session(
    project: Project,
) -> None:
    """`quart db shell`: the app's engines, `app` and `g` in the namespace, one
    app context (and its `g`) and one session across statements."""
    result = project.run(
        sys.executable,
        "-m",
        "quart",
        "--app",
        "app:create_app",
        "db",
        "shell",
        input="\n".join(STATEMENTS) + "\n",
    )
    assert "app app True kept" in result.stdout
    assert "attached True 2" in result.stdout
    assert "Closed the session and disposed the engines." in result.stdout
    assert set(await project.columns()) == {None, "users"}


async def test_db_option_opens_the_shell_of_an_app_factory(tmp_path: Path) -> None:
    """`python -m async_sa shell --db app:create_app` opens the app's shell."""
    async for made in make_project("sqlite_file", tmp_path):
        project = with_app(made)
        result = project.run(
            sys.executable,
            "-m",
            "async_sa",
            "shell",
            "--db",
            "app:create_app",
            input="\n".join(STATEMENTS) + "\n",
        )
        assert "app app True kept" in result.stdout
