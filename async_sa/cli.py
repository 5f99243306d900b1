"""The ``db`` commands: ``quart db ...`` and ``python -m async_sa db --db M:NAME ...``.

One set of click commands serves both: the ``db`` group of each entry point
only says how to find the :class:`async_sa.migrations.Target` (the Quart app's
engines, or what ``--db`` names). Alembic is imported when a command runs, so
``--help`` works without the ``migrations`` extra.
"""

from __future__ import annotations

import typing as t
import weakref
from collections.abc import Callable

import click

if t.TYPE_CHECKING:
    from async_sa.migrations import Target

_LOAD_TARGET = "async_sa.load_target"

_directory = click.option(
    "-d",
    "--directory",
    default="migrations",
    show_default=True,
    help="The migrations directory.",
)
_sql = click.option(
    "--sql", is_flag=True, help="Print the SQL script instead of running it."
)
_message = click.option("-m", "--message", help="The revision's message.")


def _run(name: str, *args: t.Any, needs_target: bool = True) -> None:
    """Run ``async_sa.migrations.<name>``; its errors end the command cleanly."""
    try:
        from alembic.util import CommandError

        from async_sa import migrations
    except ImportError as error:
        if (error.name or "").partition(".")[0] not in ("alembic", "mako"):
            raise
        raise click.ClickException(
            "The db commands need Alembic: pip install 'async_sa[migrations]'."
        ) from None
    try:
        if needs_target:
            load: Callable[[], Target] = click.get_current_context().meta[_LOAD_TARGET]
            args = (load(), *args)
        getattr(migrations, name)(*args)
    except (migrations.MigrationError, CommandError) as error:
        raise click.ClickException(str(error)) from None


@click.command()
@_directory
def init(directory: str) -> None:
    """Create the migrations directory (env.py, script template, versions/)."""
    _run("init", directory, needs_target=False)


@click.command()
@_directory
@_message
def migrate(directory: str, message: str | None) -> None:
    """Write a revision from the models' changes in every bind (autogenerate:
    tables, columns, indexes, constraints, types and server defaults)."""
    _run("migrate", directory, message)


@click.command()
@_directory
@_message
def revision(directory: str, message: str | None) -> None:
    """Write an empty revision, with upgrade and downgrade functions per bind."""
    _run("revision", directory, message)


@click.command()
@_directory
@_sql
@click.argument("revision", default="head")
def upgrade(directory: str, sql: bool, revision: str) -> None:
    """Upgrade every bind's database to REVISION (default: head)."""
    _run("upgrade", directory, revision, sql)


@click.command()
@_directory
@_sql
@click.argument("revision", default="-1")
def downgrade(directory: str, sql: bool, revision: str) -> None:
    """Downgrade every bind's database to REVISION (default: -1, one step)."""
    _run("downgrade", directory, revision, sql)


@click.command()
@_directory
def current(directory: str) -> None:
    """Show each bind's database revision."""
    _run("current", directory)


@click.command()
@_directory
@click.option("-r", "--rev-range", help="Only these revisions, as START:END.")
def history(directory: str, rev_range: str | None) -> None:
    """List the revisions, newest first."""
    _run("history", directory, rev_range)


@click.command()
@_directory
def heads(directory: str) -> None:
    """Show the head revisions."""
    _run("heads", directory)


@click.command()
@_directory
@_sql
@click.argument("revision")
def stamp(directory: str, sql: bool, revision: str) -> None:
    """Record REVISION in every bind's database without running migrations."""
    _run("stamp", directory, revision, sql)


@click.command()
@_directory
def check(directory: str) -> None:
    """Fail (exit status 1) when the models differ from what the migrations
    make, or a database is not at the head revision."""
    _run("check", directory)


COMMANDS: tuple[click.Command, ...] = (
    init,
    migrate,
    revision,
    upgrade,
    downgrade,
    current,
    history,
    heads,
    stamp,
    check,
)

_GROUP_HELP = (
    "Database migrations (Alembic) for every bind: one revision covers every "
    "bind's database; each database records its own version."
)


def quart_command(app: t.Any) -> click.Group:
    """The ``quart db`` group for ``app`` (registered by ``db.init_app(app)``)."""
    app_ref = weakref.ref(app)

    @click.group("db", help=_GROUP_HELP)
    @click.pass_context
    def db(ctx: click.Context) -> None:
        from async_sa.migrations import app_target

        ctx.meta[_LOAD_TARGET] = lambda: app_target(app_ref())

    for command in COMMANDS:
        db.add_command(command)
    return db


@click.group("db", help=_GROUP_HELP)
@click.option(
    "--db",
    "spec",
    metavar="MODULE:NAME",
    envvar="ASYNC_SA_DB",
    help="The SQLAlchemy object, Quart app or app factory "
    "(a callable returning an app), e.g. myapp:db. Env: ASYNC_SA_DB.",
)
@click.pass_context
def standalone_db(ctx: click.Context, spec: str | None) -> None:
    def load() -> Target:
        from async_sa.migrations import load_target
        from async_sa.migrations import MigrationError

        if not spec:
            raise MigrationError(
                "Which database? Pass --db MODULE:NAME (or set ASYNC_SA_DB): "
                "the SQLAlchemy object, a Quart app or an app factory."
            )
        return load_target(spec)

    ctx.meta[_LOAD_TARGET] = load


for _command in COMMANDS:
    standalone_db.add_command(_command)


@click.group()
def main() -> None:
    """async_sa's command line: `python -m async_sa db --help`."""


main.add_command(standalone_db)
