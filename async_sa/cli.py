"""The command line: ``quart db ...`` and ``python -m async_sa db --db M:NAME ...``
(migrations), ``quart db shell`` and ``python -m async_sa shell --db M:NAME``.

One set of click commands serves both entry points: each only says how to find
the :class:`async_sa.target.Target` (the Quart app's engines, or what ``--db``
names). Alembic is imported when a migration command runs, so ``--help`` and
the shell work without it.
"""

from __future__ import annotations

import typing as t
import weakref
from collections.abc import Callable

import click

from async_sa.target import app_target
from async_sa.target import load_target
from async_sa.target import Target
from async_sa.target import TargetError

_LOAD_TARGET = "async_sa.load_target"
_C = t.TypeVar("_C", bound=t.Callable[..., t.Any] | click.Command)

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
            args = (_load_target(), *args)
        getattr(migrations, name)(*args)
    except (migrations.MigrationError, TargetError, CommandError) as error:
        raise click.ClickException(str(error)) from None


def _load_target() -> Target:
    """The target of the running command, or a clean exit saying what is wrong."""
    load: Callable[[], Target] = click.get_current_context().meta[_LOAD_TARGET]
    try:
        return load()
    except TargetError as error:
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


def shell_command() -> click.Command:
    """A new ``shell`` command (each entry point adds its own options to it)."""

    @click.command("shell")
    def shell() -> None:
        """An asyncio shell: top-level await, db and every model loaded, the app
        context pushed and one session kept for the whole shell (each statement
        runs as a task of its own). Ctrl+C cancels the running statement; Ctrl+D
        closes the session and disposes the engines."""
        from async_sa.shell import run
        from async_sa.shell import ShellError

        try:
            run(_load_target())
        except ShellError as error:
            raise click.ClickException(str(error)) from None

    return shell


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
        ctx.meta[_LOAD_TARGET] = lambda: app_target(app_ref())

    for command in (*COMMANDS, shell_command()):
        db.add_command(command)
    return db


def _db_option(command: _C) -> _C:
    """``--db MODULE:NAME`` (or ``ASYNC_SA_DB``): the command's target is loaded
    from it when the command needs it."""

    def remember(ctx: click.Context, _: click.Parameter, spec: str | None) -> None:
        ctx.meta[_LOAD_TARGET] = lambda: _load_spec(spec)

    return click.option(
        "--db",
        metavar="MODULE:NAME",
        envvar="ASYNC_SA_DB",
        expose_value=False,
        callback=remember,
        help="The SQLAlchemy object, Quart app or app factory "
        "(a callable returning an app), e.g. myapp:db. Env: ASYNC_SA_DB.",
    )(command)


def _load_spec(spec: str | None) -> Target:
    if not spec:
        raise TargetError(
            "Which database? Pass --db MODULE:NAME (or set ASYNC_SA_DB): "
            "the SQLAlchemy object, a Quart app or an app factory."
        )
    return load_target(spec)


@click.group("db", help=_GROUP_HELP)
@_db_option
def standalone_db() -> None:
    pass


for _command in COMMANDS:
    standalone_db.add_command(_command)


@click.group()
def main() -> None:
    """async_sa's command line: `python -m async_sa db --help` (migrations),
    `python -m async_sa shell --help` (the async shell)."""


main.add_command(standalone_db)
main.add_command(_db_option(shell_command()))
