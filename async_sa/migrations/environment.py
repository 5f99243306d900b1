"""The migration environment: what the generated ``env.py`` runs.

Online, each bind runs on its own async engine (``run_sync`` on an
``AsyncConnection``) in a transaction of its own, the default bind first;
offline (``--sql``), each bind's script is printed in turn. The commands pass
the :class:`Target` and their name in ``Config.attributes``.
"""

from __future__ import annotations

import asyncio
import logging
import types
import typing as t
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from async_sa.engines import redact
from async_sa.target import bind_label
from async_sa.target import Target

logger = logging.getLogger("alembic.env")


class MigrationError(Exception):
    """A migration command cannot run, or failed; the message says why and
    what to do. The command line prints it without a traceback."""


TARGET_KEY = "async_sa.target"
"""``Config.attributes`` key: the :class:`Target` the command works on."""
COMMAND_KEY = "async_sa.command"
"""``Config.attributes`` key: the command's name (``upgrade``, ``migrate``, ...)."""
_VERBS = {
    "upgrade": "upgraded",
    "downgrade": "downgraded",
    "stamp": "stamped",
}


def revision_bind_names(config: Config) -> list[str]:
    """The bind names a new revision gets functions for (``script.py.mako``)."""
    return list(target_of(config).binds())


def target_of(config: Config) -> Target:
    """The :class:`Target` a command put in ``config``, or a
    :class:`MigrationError` for ``env.py`` run by another tool."""
    target = config.attributes.get(TARGET_KEY)
    if not isinstance(target, Target):
        raise MigrationError(
            "These migrations run through `quart db ...` or `python -m async_sa "
            "db --db MODULE:NAME ...`, which know the engines; the `alembic` "
            "command does not."
        )
    return target


def run_migrations(
    context: types.ModuleType | EnvironmentContext, **configure_args: t.Any
) -> None:
    """Run the current command on every bind: what the generated ``env.py`` calls.

    Online, each bind runs on its own async engine (``run_sync`` on an
    ``AsyncConnection``) in a transaction of its own; offline (``--sql``), each
    bind's script is printed after a ``-- <bind>`` comment line. Autogenerate
    compares types and server defaults and renders batch operations (SQLite).

    :param context: ``alembic.context`` (the module that stands for the
        current ``EnvironmentContext``), or that ``EnvironmentContext``.
    :param configure_args: passed to every bind's ``context.configure()``; they
        win over async_sa's.
    :raises MigrationError: the configured binds and those of the migrations
        differ, two binds are one database, or a bind failed (naming the
        binds done before it).
    """
    context = t.cast(EnvironmentContext, context)
    target = target_of(context.config)
    binds = target.binds()
    _check_binds(context.script, list(binds))
    if context.is_offline_mode():
        _run_offline(context, binds, configure_args)
    else:
        asyncmy = logging.getLogger("asyncmy")
        asyncmy.addFilter(_ignored_primary_key_name)
        try:
            asyncio.run(_run_online(context, target, binds, configure_args))
        finally:
            asyncmy.removeFilter(_ignored_primary_key_name)


def _ignored_primary_key_name(record: logging.LogRecord) -> bool:
    """Drop MariaDB's (and MySQL's) note that the name Alembic gives the
    version table's primary key is ignored: harmless (their primary keys are
    all named PRIMARY), yet asyncmy logs every server note as a warning."""
    return not record.getMessage().endswith("_pkc' ignored for PRIMARY key.")


def _check_binds(script: ScriptDirectory, configured: list[str]) -> None:
    """The head revisions must have a function pair for exactly the configured
    binds, so no database is silently left out of an upgrade."""
    for head in script.get_revisions("heads"):
        if head is None:
            continue
        covered = {
            name.removeprefix("upgrade_")
            for name in vars(head.module)
            if name.startswith("upgrade_")
        }
        for name in sorted(covered - set(configured)):
            raise MigrationError(
                f"The migrations have {bind_label(name)} (upgrade_{name}() in revision "
                f"{head.revision}), but no engine is configured for it: configure "
                f"it (SQLALCHEMY_BINDS or binds=), or remove upgrade_{name}() and "
                f"downgrade_{name}() from the revisions."
            )
        for name in configured:
            if name not in covered:
                label = bind_label(name).capitalize()
                raise MigrationError(
                    f"{label} is configured, but the migrations do not cover it "
                    f"(revision {head.revision} has no "
                    f"upgrade_{name}()): add upgrade_{name}() and downgrade_{name}() "
                    "(`pass` where the bind has nothing to do) to the revisions, "
                    "or remove the bind from the configuration."
                )


def _configure_args(
    context: EnvironmentContext, name: str, configure_args: Mapping[str, t.Any]
) -> dict[str, t.Any]:
    target = target_of(context.config)
    metadata = target.db.metadatas.get(name or None)
    args: dict[str, t.Any] = {
        "target_metadata": metadata if metadata is not None else sa.MetaData(),
        "upgrade_token": f"{name}_upgrades",
        "downgrade_token": f"{name}_downgrades",
        "compare_type": True,
        "compare_server_default": True,
        "render_as_batch": True,
    }
    if context.config.attributes.get(COMMAND_KEY) == "migrate":
        args["process_revision_directives"] = _skip_empty(len(target.engines))
    return {**args, **configure_args}


def _skip_empty(bind_count: int) -> t.Callable[..., None]:
    """Drop an autogenerated revision with no change in any bind."""

    def process_revision_directives(
        context: MigrationContext, revision: t.Any, directives: list[t.Any]
    ) -> None:
        script = directives[0]
        if len(script.upgrade_ops_list) < bind_count:
            return
        if all(upgrade_ops.is_empty() for upgrade_ops in script.upgrade_ops_list):
            directives[:] = []
            logger.info("No changes in schema detected.")

    return process_revision_directives


def _run_offline(
    context: EnvironmentContext,
    binds: Mapping[str, sa_async.AsyncEngine],
    configure_args: Mapping[str, t.Any],
) -> None:
    config = context.config
    for name, engine in binds.items():
        config.print_stdout(f"-- {bind_label(name)}: {redact(engine.url)}")
        context.configure(
            url=engine.url,
            literal_binds=True,
            output_buffer=config.stdout,
            **_configure_args(context, name, configure_args),
        )
        with context.begin_transaction():
            context.run_migrations(engine_name=name)


async def _run_online(
    context: EnvironmentContext,
    target: Target,
    binds: Mapping[str, sa_async.AsyncEngine],
    configure_args: Mapping[str, t.Any],
) -> None:
    command_name = str(context.config.attributes.get(COMMAND_KEY))
    done: list[str] = []
    try:
        async with target.app_context():
            databases: dict[tuple[str, ...], str] = {}
            for name, engine in binds.items():
                try:
                    database = await _database_of(engine)
                except Exception as error:
                    raise MigrationError(
                        _failure(command_name, name, error, done, list(binds))
                    ) from error
                if database in databases:
                    raise MigrationError(_shared(databases[database], name, database))
                databases[database] = name
            for name, engine in binds.items():
                logger.info("Migrating %s", bind_label(name))
                if command_name == "current":
                    context.config.print_stdout(f"{bind_label(name)}:")
                try:
                    async with engine.connect() as connection:
                        await connection.run_sync(
                            _run_bind, context, name, configure_args
                        )
                except Exception as error:
                    raise MigrationError(
                        _failure(command_name, name, error, done, list(binds))
                    ) from error
                done.append(name)
    finally:
        await target.dispose()


async def _database_of(engine: sa_async.AsyncEngine) -> tuple[str, ...]:
    """What tells databases apart: the SQLite file, the PostgreSQL database
    and schema, the MySQL database (with the server's address), else the URL."""
    url = engine.url
    async with engine.connect() as connection:
        dialect = connection.dialect.name
        if dialect == "sqlite":
            result = await connection.exec_driver_sql("PRAGMA database_list")
            files = {row["name"]: row["file"] for row in result.mappings()}
            path = files.get("main", "")
            # Each in-memory database is one of a kind.
            return (dialect, path or f"memory {id(engine)}")
        if dialect == "postgresql":
            query = "SELECT current_database(), current_schema()"
        elif dialect in ("mysql", "mariadb"):
            query = "SELECT DATABASE()"
        else:
            return (dialect, redact(url))
        row = (await connection.exec_driver_sql(query)).one()
        return (dialect, url.host or "", str(url.port or ""), *map(str, row))


def _shared(first: str, second: str, database: tuple[str, ...]) -> str:
    where = " ".join(part for part in database[1:] if part)
    return (
        f"{bind_label(first).capitalize()} and {bind_label(second)} are the same "
        f"database ({where}): migrations need a database (or PostgreSQL schema) "
        "per bind, as each database records its own revision in alembic_version "
        "and autogenerate compares the whole database with that bind's models. "
        f"Point {bind_label(second)} at a database of its own."
    )


def _run_bind(
    connection: sa.Connection,
    context: EnvironmentContext,
    name: str,
    configure_args: Mapping[str, t.Any],
) -> None:
    context.configure(
        connection=connection, **_configure_args(context, name, configure_args)
    )
    if context.config.attributes.get(COMMAND_KEY) in ("migrate", "check"):
        _require_head(context, name)
    with context.begin_transaction():
        context.run_migrations(engine_name=name)


def _require_head(context: EnvironmentContext, name: str) -> None:
    """Autogenerate compares against the head: the database must be there."""
    current = set(context.get_context().get_current_heads())
    heads = set(context.script.get_heads())
    if current != heads:
        at = ", ".join(sorted(current)) or "no revision"
        raise MigrationError(
            f"The database of {bind_label(name)} is at {at}, behind the head "
            f"{', '.join(sorted(heads))}: run `db upgrade` first."
        )


def _failure(
    command_name: str,
    name: str,
    error: Exception,
    done: list[str],
    names: list[str],
) -> str:
    """The message for a bind that failed, saying which binds were done."""
    if isinstance(error, MigrationError):
        message = str(error)
    else:
        message = f"{command_name} failed on {bind_label(name)}: "
        message += f"{type(error).__name__}: {error}"
    verb = _VERBS.get(command_name)
    if verb is None:
        return message
    left = [n for n in names if n not in done]
    if done:
        message += (
            f"\nAlready {verb} (each database records its own version): "
            f"{', '.join(map(bind_label, done))}."
        )
    message += f"\nNot {verb}: {', '.join(map(bind_label, left))}."
    message += "\n`db current` shows each database's revision."
    return message
