"""The async shell under Quart: the real ``quart db shell`` and ``python -m
async_sa shell --db app:create_app``, with the app context pushed for the
whole shell."""

from __future__ import annotations

import asyncio
import sys
import typing as t

import pytest
import quart

from async_sa import shell
from async_sa import SQLAlchemy
from async_sa.shell import ShellError
from async_sa.target import app_target
from tests.migration_project import Project
from tests.migration_project import project_fixture
from tests.test_quart_migrations import with_app

project = project_fixture("sqlite_file", "postgresql", "mariadb", prepare=with_app)

STATEMENTS = """\
from quart import current_app
await db.create_all()
g.mark = 'kept'
note = Note(text='from the shell')
db.session.add(note)
print('app', app.name, current_app.name == app.name, g.mark)
await db.session.commit()
print('attached', note in db.session, len(db.engines))
"""


@pytest.mark.parametrize(
    "command",
    [
        ("quart", "--app", "app:create_app", "db", "shell"),
        ("async_sa", "shell", "--db", "app:create_app"),
    ],
)
async def test_the_apps_shell_keeps_its_app_context_and_its_session(
    project: Project, command: tuple[str, ...]
) -> None:
    """`quart db shell`, or `--db` naming the app factory: the app's engines,
    `app` and `g` in the namespace, one app context (and its `g`) and one
    session across statements."""
    result = project.run(sys.executable, "-m", *command, input=STATEMENTS)
    assert "app app True kept" in result.stdout
    assert "attached True 2" in result.stdout
    assert "Closed the session and disposed the engines." in result.stdout
    assert set(await project.columns()) == {None, "users"}


async def test_a_failure_opening_the_shell_names_its_cause_and_shows_no_prompt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app context that cannot be pushed: ShellError naming the cause,
    before any prompt."""
    app = quart.Quart(__name__)
    SQLAlchemy(app, url="sqlite://")

    def no_context() -> t.Any:
        raise RuntimeError("no context here")

    monkeypatch.setattr(app, "app_context", no_context)
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        raise EOFError

    with pytest.raises(ShellError, match="opening the shell failed: RuntimeError"):
        await asyncio.to_thread(shell.run, app_target(app), readfunc=read)
    assert prompts == []
