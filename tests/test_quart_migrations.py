"""Migrations under Quart: the real ``quart db`` and ``python -m async_sa db`` with
an app or an app factory, in a temporary project with two binds."""

from __future__ import annotations

import sys

import click
import pytest
import quart

from async_sa import SQLAlchemy
from tests.migration_project import Project
from tests.migration_project import project_fixture

APP = """\
from quart import Quart

from models import BINDS
from models import db


def create_app() -> Quart:
    app = Quart(__name__)
    app.config["SQLALCHEMY_BINDS"] = BINDS
    db.init_app(app)
    return app


app = create_app()
"""


def with_app(project: Project) -> Project:
    """``project`` with its binds in the Quart app's config (``app.py``)."""
    project.standalone = False
    project.write_models()
    (project.path / "app.py").write_text(APP)
    return project


project = project_fixture("sqlite_file", "postgresql", "mariadb", prepare=with_app)
sqlite_project = project_fixture("sqlite_file", prepare=with_app)


async def test_quart_db_migrates_the_apps_binds(project: Project) -> None:
    """`quart db` finds the app's engines: migrate and upgrade create both
    databases' tables; a column added in each bind is migrated too."""
    quart = [sys.executable, "-m", "quart", "--app", "app:app", "db"]
    project.run(*quart, "init")
    project.run(*quart, "migrate", "-m", "first")
    project.run(*quart, "upgrade")
    columns = await project.columns()
    assert columns[None]["note"] == {"id", "text"}
    assert columns["users"]["user"] == {"id", "name"}

    project.write_models(columns_added=True)
    failed = project.run(*quart, "check", ok=False)
    assert "bind 'users': add_column user.email" in failed.stderr
    project.run(*quart, "migrate", "-m", "columns")
    project.run(*quart, "upgrade")
    columns = await project.columns()
    assert columns[None]["note"] == {"id", "text", "title"}
    assert columns["users"]["user"] == {"id", "name", "email"}


@pytest.mark.parametrize("name", ["app", "create_app", "db"])
async def test_db_option_takes_an_app_a_factory_or_its_db(
    sqlite_project: Project, name: str
) -> None:
    """--db names the app, its factory, or a db that serves that one app."""
    sqlite_project.init()
    sqlite_project.run(
        sys.executable, "-m", "async_sa", "db", "--db", f"app:{name}", "upgrade"
    )
    assert set(await sqlite_project.columns()) == {None, "users"}


def test_db_command_is_registered_unless_the_app_has_one() -> None:
    """init_app adds `db` to the app's CLI, but never replaces the app's own."""
    app = quart.Quart(__name__)
    SQLAlchemy(app, url="sqlite://")
    group = app.cli.commands["db"]
    assert isinstance(group, click.Group) and "upgrade" in group.commands

    other = quart.Quart(__name__)

    @other.cli.command("db")
    def own_db() -> None:
        """The app's own db command."""

    SQLAlchemy(other, url="sqlite://")
    assert other.cli.commands["db"].callback is own_db.callback


@pytest.mark.parametrize(
    "command", [("db", "--db", "plain:app", "upgrade"), ("shell", "--db", "plain:app")]
)
async def test_an_app_without_init_app_is_an_error(
    sqlite_project: Project, command: tuple[str, ...]
) -> None:
    """--db naming a Quart app that no SQLAlchemy object serves says to call
    init_app, for the db commands and the shell alike."""
    (sqlite_project.path / "plain.py").write_text(
        "from quart import Quart\n\napp = Quart(__name__)\n"
    )
    failed = sqlite_project.run(sys.executable, "-m", "async_sa", *command, ok=False)
    assert "The Quart app 'plain' has no async_sa SQLAlchemy object" in (failed.stderr)
    assert "call db.init_app(app)" in failed.stderr
