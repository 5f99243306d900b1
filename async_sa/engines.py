"""Engine configuration: async driver upgrade, option merging and SQLite defaults.

Everything here is plain data in, :class:`AsyncEngine` out, so the standalone
``SQLAlchemy(url=...)`` and the Quart extension build engines the same way.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sqlite3
import typing as t
import uuid
import weakref
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import AsyncAdaptedQueuePool

from async_sa import event_loops
from async_sa import pgbouncer
from async_sa.cleanup import run_to_completion

BindKey = str | None
"""The key of an engine: ``None`` for the default engine, else a ``__bind_key__``."""

UrlLike = str | sa.URL
BindConfig = UrlLike | Mapping[str, t.Any]

_UPGRADE_BARE_BACKEND: dict[str, tuple[str, ...]] = {
    "sqlite": ("sqlite+aiosqlite",),
    "postgresql": ("postgresql+asyncpg", "postgresql+psycopg"),
    "postgres": ("postgresql+asyncpg", "postgresql+psycopg"),
    "mysql": ("mysql+asyncmy",),
    "mariadb": ("mariadb+asyncmy",),
}
"""The async drivers a bare backend is upgraded to: the first one installed."""
_SUGGESTED_ASYNC_DRIVER = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg' or 'postgresql+psycopg",
    "mysql": "mysql+asyncmy",
    "mariadb": "mariadb+asyncmy",
    "mssql": "mssql+aioodbc",
    "oracle": "oracle+oracledb",
}
DRIVER_EXTRAS = {
    "asyncpg": "postgresql",
    "psycopg": "psycopg",
    "asyncmy": "mysql",
}
"""The ``async_sa[extra]`` that installs each driver module."""
SQLITE_BUSY_TIMEOUT = 30.0
"""Seconds a SQLite connection waits for another's write lock before failing."""


def redact(url: sa.URL) -> str:
    """Render ``url`` for humans: the password, if any, is replaced by ``***``."""
    return url.render_as_string(hide_password=True)


def to_async_url(value: UrlLike, *, where: str) -> sa.URL:
    """Parse ``value`` and make sure it names an async driver.

    A bare backend is upgraded to its async driver: ``sqlite://`` to aiosqlite,
    ``mysql://`` and ``mariadb://`` to asyncmy, ``postgresql://`` and
    ``postgres://`` to asyncpg or, when only psycopg is installed, psycopg. A
    sync-only driver raises :class:`ValueError` naming the driver and the async
    one to use.

    :raises ImportError: for a bare ``postgresql://`` with neither PostgreSQL
        driver installed, naming the extra of each.

    :param where: the config key or argument the URL came from, for error messages.
    """
    try:
        url = sa.make_url(value)
    except sa.exc.ArgumentError:
        shown = value if isinstance(value, str) and "@" not in value else "<hidden>"
        raise ValueError(
            f"{where} is not a database URL: {shown!r}. Expected something like "
            "'sqlite:///app.db' or 'postgresql://user@host/dbname'."
        ) from None
    candidates = _UPGRADE_BARE_BACKEND.get(url.drivername)
    if candidates is not None:
        url = url.set(drivername=_installed_driver(candidates, url, where))
    try:
        dialect = url.get_dialect(_is_async=True)
    except sa.exc.NoSuchModuleError:
        raise ValueError(
            f"{where} names an unknown database dialect {url.drivername!r} "
            f"({redact(url)})."
        ) from None
    if not dialect.is_async:
        backend = url.get_backend_name()
        suggestion = _SUGGESTED_ASYNC_DRIVER.get(backend, f"{backend}+<async driver>")
        raise ValueError(
            f"{where} uses the synchronous driver {url.get_driver_name()!r} "
            f"({redact(url)}); async_sa needs an async driver: use "
            f"{suggestion!r} instead."
        )
    return url


def _installed_driver(candidates: tuple[str, ...], url: sa.URL, where: str) -> str:
    """The first of ``candidates`` (``backend+driver`` names) whose driver
    module is installed; the first one when none needs an extra (aiosqlite is
    a dependency), else an :class:`ImportError` naming every extra."""
    for drivername in candidates:
        module = drivername.partition("+")[2]
        if module not in DRIVER_EXTRAS or importlib.util.find_spec(module):
            return drivername
    if len(candidates) == 1:
        return candidates[0]
    extras = " or ".join(
        f"'async_sa[{DRIVER_EXTRAS[name.partition('+')[2]]}]' "
        f"({name.partition('+')[2]})"
        for name in candidates
    )
    raise ImportError(
        f"{where} ({redact(url)}) needs an async {url.get_backend_name()} driver "
        f"and none is installed: pip install {extras}."
    )


def resolve_engine_options(
    *,
    url: UrlLike | None,
    binds: Mapping[str | None, BindConfig],
    engine_options: Mapping[str, t.Any],
    echo: bool | None,
    sqlite_base_dir: str,
    url_source: str,
    binds_source: str,
) -> dict[BindKey, dict[str, t.Any]]:
    """Work out the ``create_async_engine`` options of every engine.

    Each bind starts from ``engine_options``; its own dict form wins over them.
    The default engine (key ``None``) exists only when ``url`` is given. The
    ``pgbouncer`` switch becomes driver settings (see :mod:`async_sa.pgbouncer`).

    :param url_source: the config key or argument ``url`` came from.
    :param binds_source: the config key or argument ``binds`` came from.
    """
    resolved: dict[BindKey, dict[str, t.Any]] = {}
    for key, value in binds.items():
        where = f"{binds_source}[{key!r}]"
        if isinstance(value, Mapping):
            options = {**engine_options, **value}
            shared = pgbouncer.OPTION not in value
            if "url" not in options:
                raise ValueError(
                    f"{where} has no 'url': add one, as in {{'url': ...}}."
                )
        elif isinstance(value, (str, sa.URL)):
            options = {**engine_options, "url": value}
            shared = True
        else:
            raise TypeError(
                f"{where} must be a URL string, a sqlalchemy.URL or a dict with a "
                f"'url' key, not {type(value).__name__}."
            )
        resolved[key] = _finish_options(
            options, echo, sqlite_base_dir, where, shared=shared, in_binds=True
        )
    if url is not None:
        options = {**engine_options, "url": url}
        resolved[None] = _finish_options(
            options, echo, sqlite_base_dir, url_source, shared=True, in_binds=False
        )
    return resolved


def _finish_options(
    options: dict[str, t.Any],
    echo: bool | None,
    sqlite_base_dir: str,
    where: str,
    *,
    shared: bool,
    in_binds: bool,
) -> dict[str, t.Any]:
    url = to_async_url(options["url"], where=where)
    pgbouncer.apply(url, options, where=where, shared=shared, in_binds=in_binds)
    if echo is not None:
        options.setdefault("echo", echo)
        options.setdefault("echo_pool", echo)
    if url.get_backend_name() == "sqlite":
        url = _apply_sqlite_defaults(url, options, sqlite_base_dir)
    options["url"] = url
    return options


def _apply_sqlite_defaults(
    url: sa.URL, options: dict[str, t.Any], base_dir: str
) -> sa.URL:
    """Give SQLite the defaults concurrent async code needs.

    ``:memory:`` becomes a named in-memory database (SQLite's ``memdb`` VFS) that
    every connection of the engine shares, so each session keeps its own
    transaction instead of all of them sharing one connection. Relative file paths
    are made absolute under ``base_dir``. Both get a busy timeout, a queue pool
    (SQLAlchemy before 2.0.38 gave files none), and connections that close their
    cursors (see :class:`_CursorClosingConnection`), opened so that a cancelled
    open still closes its connection (see :func:`_open_aiosqlite`).
    """
    connect_args = dict(options.get("connect_args", {}))
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT)
    connect_args.setdefault("factory", _CursorClosingConnection)
    if url.get_driver_name() == "aiosqlite":
        connect_args.setdefault("async_creator_fn", _open_aiosqlite)
    options["connect_args"] = connect_args
    options.setdefault("poolclass", AsyncAdaptedQueuePool)
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return url.set(
            database=f"file:/async_sa_memory_{uuid.uuid4().hex}",
            query={"vfs": "memdb", "uri": "true"},
        )
    is_uri = url.query.get("uri") == "true" and database.startswith("file:")
    path = database[len("file:") :] if is_uri else database
    if os.path.isabs(path):
        return url
    os.makedirs(base_dir, exist_ok=True)
    path = os.path.join(base_dir, path)
    return url.set(database=f"file:{path}" if is_uri else path)


def create_engine(options: Mapping[str, t.Any]) -> sa_async.AsyncEngine:
    """Create one engine from resolved options (see :func:`resolve_engine_options`).

    Its connections are tied to the event loop that opened them (see
    :mod:`async_sa.event_loops`): where the pool would be SQLAlchemy's default
    :class:`AsyncAdaptedQueuePool`, it is a :class:`~async_sa.event_loops.LoopPool`
    (the same, per event loop). A shared in-memory SQLite database is kept alive
    for as long as the engine exists.
    """
    options = dict(options)
    url: sa.URL = options.pop("url")
    if "pool" not in options:
        poolclass = options.get("poolclass")
        dialect = url.get_dialect(_is_async=True)
        if poolclass is None and issubclass(dialect, DefaultDialect):
            poolclass = dialect.get_pool_class(url)
        if poolclass is AsyncAdaptedQueuePool:
            options["poolclass"] = event_loops.LoopPool
    try:
        engine = sa_async.create_async_engine(url, **options)
    except ImportError as error:
        package = error.name or url.get_driver_name()
        extra = DRIVER_EXTRAS.get(package.partition(".")[0])
        fix = f"'async_sa[{extra}]' (or {package})" if extra else package
        raise ImportError(
            f"The driver {url.get_driver_name()!r} of {redact(url)} is not "
            f"installed: pip install {fix}."
        ) from error
    if url.query.get("vfs") == "memdb":
        _keep_memory_database_alive(engine, url)
    event_loops.keep_connections_in_their_loop(engine)
    return engine


class _CursorClosingConnection(sqlite3.Connection):
    """A sqlite3 connection that closes its cursors before closing itself.

    Since Python 3.11, ``close()`` leaves statements that are still active (a
    query cancelled between execute and fetch) unfinalized, so SQLite keeps the
    connection alive as a "zombie" that holds its lock until garbage collection,
    and every other writer waits out the busy timeout.
    """

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def cursor(  # type: ignore[override]
        self, *args: t.Any, **kwargs: t.Any
    ) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = super().cursor(*args, **kwargs)
        self._cursors.add(cursor)
        return cursor

    def close(self) -> None:
        for cursor in list(self._cursors):
            cursor.close()
        super().close()


async def _open_aiosqlite(*args: t.Any, **kwargs: t.Any) -> t.Any:
    """Open an aiosqlite connection (SQLAlchemy's ``async_creator_fn``).

    A task cancelled while aiosqlite's worker opens the database drops the
    sqlite3 connection unclosed (omnilib/aiosqlite#259; a ResourceWarning since
    Python 3.13). So the open runs to completion, and a cancellation received
    meanwhile closes the connection before it is raised.
    """
    import aiosqlite

    connection = aiosqlite.connect(*args, **kwargs)
    # As SQLAlchemy's own open does: a daemon worker never holds the
    # interpreter at exit.
    connection._thread.daemon = True
    opened = False

    async def open_connection() -> None:
        nonlocal opened
        await connection
        opened = True

    try:
        await run_to_completion(open_connection())
    except asyncio.CancelledError:
        if opened:
            await run_to_completion(connection.close())
        raise
    return connection


def _keep_memory_database_alive(engine: sa_async.AsyncEngine, url: sa.URL) -> None:
    """Hold one plain connection to a ``memdb`` database while the engine lives.

    SQLite frees such a database when its last connection closes; without this,
    disposing the pool (which happens whenever an event loop ends) would empty it.
    """
    anchor = sqlite3.connect(
        f"{url.database}?vfs=memdb", uri=True, check_same_thread=False
    )
    weakref.finalize(engine.sync_engine, anchor.close)
