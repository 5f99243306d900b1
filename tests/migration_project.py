"""A temporary project with two binds, for running the real ``db`` commands.

The models live in ``models.py`` in the project's directory: a default bind
(``Note``) and a ``users`` bind (``User``). On PostgreSQL each bind is a schema
of its own (``search_path``), on MariaDB a database of its own, made for the
test and dropped after it, so each keeps its own ``alembic_version``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import typing as t
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from async_sa import SQLAlchemy
from async_sa.migrations import init
from tests.conftest import Backend
from tests.conftest import open_backend

MODELS = """\
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import SQLAlchemy

BINDS = {binds!r}
db = SQLAlchemy({arguments})


class Note(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String({text_length}))
{note_extra}

class User(db.Model):
    __bind_key__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), server_default="{name_default}")
{user_extra}
"""
NOTE_TITLE = "    title: Mapped[str | None] = mapped_column(sa.String(200))"
USER_EMAIL = "    email: Mapped[str | None] = mapped_column(sa.String(200))"


@dataclasses.dataclass
class Project:
    """A project directory, the binds its models use, and a way to run commands."""

    path: Path
    binds: dict[str | None, dict[str, t.Any]]
    backend: str
    standalone: bool = True
    """The models' ``db`` has the binds; else it waits for ``init_app``."""
    servers: dict[str | None, Backend] = dataclasses.field(default_factory=dict)
    """Bind key → its schema or database on the server (none on SQLite)."""

    def write_models(
        self,
        *,
        columns_added: bool = False,
        types_changed: bool = False,
        binds: dict[str | None, dict[str, t.Any]] | None = None,
    ) -> None:
        """(Re)write ``models.py``.

        :param columns_added: add a column to the model of each bind.
        :param types_changed: widen ``Note.text`` (default bind) and change the
            server default of ``User.name`` (``users``).
        """
        text = MODELS.format(
            binds=self.binds if binds is None else binds,
            arguments="binds=BINDS" if self.standalone else "",
            note_extra=NOTE_TITLE if columns_added else "",
            user_extra=USER_EMAIL if columns_added else "",
            text_length=200 if types_changed else 100,
            name_default="nobody" if types_changed else "anonymous",
        )
        (self.path / "models.py").write_text(text)

    def env(self) -> dict[str, str]:
        """The environment commands run in: the project on ``PYTHONPATH``,
        every ResourceWarning shown."""
        return {
            **os.environ,
            "PYTHONWARNINGS": "always::ResourceWarning",
            "PYTHONPATH": os.pathsep.join(
                [str(self.path), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }

    def run(
        self, *args: str, ok: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` (a command line) in the project, ``input`` on its
        standard input; ``ok``: it must succeed, else it must fail. Either way
        no traceback and no leaked resource may be reported."""
        result = subprocess.run(
            args,
            cwd=self.path,
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        shown = f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        assert (result.returncode == 0) == ok, shown
        assert "Traceback" not in result.stderr, shown
        assert "ResourceWarning" not in result.stderr, shown
        assert "Exception ignored" not in result.stderr, shown
        return result

    def db(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        """``python -m async_sa db --db models:db ARGS``."""
        return self.run(
            sys.executable, "-m", "async_sa", "db", "--db", "models:db", *args, ok=ok
        )

    def init(self) -> None:
        """``db init``, in this process: tests of other commands start here."""
        init(str(self.path / "migrations"))

    def revisions(self) -> list[Path]:
        return sorted((self.path / "migrations" / "versions").glob("*.py"))

    async def columns(self) -> dict[str | None, dict[str, set[str]]]:
        """Bind key → table → column names, as the databases have them now."""
        db = SQLAlchemy(binds=self.binds)
        try:
            found: dict[str | None, dict[str, set[str]]] = {}
            for key, engine in db.engines.items():
                async with engine.connect() as connection:
                    found[key] = await connection.run_sync(_columns)
            return found
        finally:
            await db.dispose()

    async def versions(self) -> dict[str | None, list[str]]:
        """Bind key → the revisions its ``alembic_version`` records."""
        db = SQLAlchemy(binds=self.binds)
        query = sa.text("SELECT version_num FROM alembic_version")
        try:
            found: dict[str | None, list[str]] = {}
            for key, engine in db.engines.items():
                async with engine.connect() as connection:
                    found[key] = list((await connection.scalars(query)).all())
            return found
        finally:
            await db.dispose()

    async def connections(self) -> int:
        """How many connections the binds have open on their server now."""
        total = 0
        for server in self.servers.values():
            total += await server.count_connections(server.namespace)
        return total


def _columns(connection: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(connection)
    return {
        table: {column["name"] for column in inspector.get_columns(table)}
        for table in inspector.get_table_names()
    }


def sqlite_project_at(path: Path) -> Project:
    """A project on two SQLite files in ``path``."""
    binds: dict[str | None, dict[str, t.Any]] = {
        None: {"url": f"sqlite:///{path / 'main.db'}"},
        "users": {"url": f"sqlite:///{path / 'users.db'}"},
    }
    project = Project(path, binds, "sqlite_file")
    project.write_models()
    return project


def project_fixture(
    *backends: str, prepare: t.Callable[[Project], Project] = lambda made: made
) -> t.Any:
    """A ``project`` fixture: a project with two binds on each of ``backends``,
    passed through ``prepare`` (e.g. to add a Quart app)."""

    @pytest.fixture(params=backends)
    async def project(
        request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[Project]:
        async for made in make_project(request.param, tmp_path):
            yield prepare(made)

    return project


async def make_project(backend: str, path: Path) -> AsyncIterator[Project]:
    """A project on ``backend`` (``sqlite_file``, or a server backend of
    :func:`tests.conftest.open_backend`: a schema or database per bind) in
    ``path``."""
    if backend == "sqlite_file":
        yield sqlite_project_at(path)
        return
    async with contextlib.AsyncExitStack() as stack:
        servers = {
            key: await stack.enter_async_context(open_database(backend, path))
            for key in (None, "users")
        }
        binds = {
            key: {"url": server.url, **server.tagged(server.namespace)}
            for key, server in servers.items()
        }
        project = Project(path, binds, backend, servers=servers)
        project.write_models()
        yield project


open_database = contextlib.asynccontextmanager(open_backend)
