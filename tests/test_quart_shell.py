"""The async shell under Quart: the real ``quart db shell`` and ``python -m
async_sa shell --db app:create_app``, with the app context pushed for the
whole shell."""

from __future__ import annotations

import sys

import pytest

from tests.migration_project import Project
from tests.migration_project import project_fixture
from tests.test_quart_migrations import with_app

project = project_fixture("sqlite_file", "postgresql", prepare=with_app)

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
