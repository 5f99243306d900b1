"""Engine configuration: async driver upgrade, option merging and SQLite defaults.

Everything here is plain data in, :class:`AsyncEngine` out, so the standalone
``SQLAlchemy(url=...)`` and the Quart extension build engines the same way.
"""

from __future__ import annotations

import importlib.util
import typing as t
from collections.abc import Iterable
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.pool import AsyncAdaptedQueuePool

from async_sa import event_loops
from async_sa import pgbouncer
from async_sa import psycopg_open
from async_sa import psycopg_terminate
from async_sa import sqlite

BindKey = str | None
"""The key of an engine: ``None`` for the default engine, else a ``__bind_key__``."""

UrlLike = str | sa.URL
BindConfig = UrlLike | Mapping[str, t.Any]

REPLICAS = "replicas"
"""The option of a bind's dict form listing its read replicas."""
MAX_LAG = "max_replica_lag"
"""The option of a bind's dict form bounding its replicas' lag (seconds)."""

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
    default_replicas: t.Any = None,
    replicas_source: str = "SQLALCHEMY_REPLICAS",
) -> dict[BindKey, dict[str, t.Any]]:
    """Work out the ``create_async_engine`` options of every engine.

    Each bind starts from ``engine_options``; its own dict form wins over them.
    The default engine (key ``None``) exists only when ``url`` is given. The
    ``pgbouncer`` switch becomes driver settings (see :mod:`async_sa.pgbouncer`).

    A bind's ``"replicas"`` (in its dict form) become, under the same key, a
    list of the options of each replica: its primary's, with the replica's URL
    (a replica given as a dict may override options too); see
    :func:`resolve_replicas`.

    :param url_source: the config key or argument ``url`` came from.
    :param binds_source: the config key or argument ``binds`` came from.
    :param default_replicas: the default bind's replicas given apart from it
        (``SQLALCHEMY_REPLICAS``), which replace those of its dict form.
    :param replicas_source: the config key ``default_replicas`` came from.
    :raises ValueError: ``default_replicas`` is given but no default bind.
    """
    for option in (REPLICAS, MAX_LAG):
        if option in engine_options:
            raise ValueError(
                f"{option!r} is not an engine option every engine shares (in "
                "SQLALCHEMY_ENGINE_OPTIONS or engine_options=): give it in the "
                f"options of a bind that has replicas ({{'url': ..., {REPLICAS!r}: "
                "[...]}), or list the default bind's replicas in "
                "SQLALCHEMY_REPLICAS."
            )
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
        replicas = options.pop(REPLICAS, None)
        max_lag = options.pop(MAX_LAG, None)
        replicas_where = f"{where}[{REPLICAS!r}]"
        if key is None and default_replicas is not None and url is None:
            replicas, replicas_where = default_replicas, replicas_source
        resolved[key] = _resolve_bind(
            options,
            echo,
            sqlite_base_dir,
            where,
            shared=shared,
            in_binds=True,
            replicas=replicas,
            replicas_where=replicas_where,
            max_lag=max_lag,
        )
    if url is not None:
        options = {**engine_options, "url": url}
        resolved[None] = _resolve_bind(
            options,
            echo,
            sqlite_base_dir,
            url_source,
            shared=True,
            in_binds=False,
            replicas=default_replicas,
            replicas_where=replicas_source,
        )
    if default_replicas is not None and None not in resolved:
        raise ValueError(
            f"{replicas_source} lists replicas of the default bind, but there is "
            "none: set SQLALCHEMY_DATABASE_URI (or pass url= to SQLAlchemy())."
        )
    return resolved


def _resolve_bind(
    options: dict[str, t.Any],
    echo: bool | None,
    sqlite_base_dir: str,
    where: str,
    *,
    shared: bool,
    in_binds: bool,
    replicas: t.Any,
    replicas_where: str,
    max_lag: t.Any = None,
) -> dict[str, t.Any]:
    """The finished options of one bind, its replicas' under ``"replicas"``
    and their lag bound under ``"max_replica_lag"``.

    :raises ValueError: a lag bound without replicas, not a number of seconds
        above 0, or on another database system than PostgreSQL.
    """
    primary_options = dict(options)
    finished = _finish_options(
        options, echo, sqlite_base_dir, where, shared=shared, in_binds=in_binds
    )
    if max_lag is not None:
        if replicas is None:
            raise ValueError(
                f"{where} has {MAX_LAG!r} but no {REPLICAS!r}: list the replicas "
                "whose lag it bounds, or leave it out."
            )
        if (
            isinstance(max_lag, bool)
            or not isinstance(max_lag, (int, float))
            or not max_lag > 0
        ):
            raise ValueError(
                f"{where}[{MAX_LAG!r}] must be a number of seconds above 0, not "
                f"{max_lag!r}."
            )
        if finished["url"].get_backend_name() != "postgresql":
            raise ValueError(
                f"{where}[{MAX_LAG!r}]: the replica lag is measured on PostgreSQL "
                f"only, and this bind is {finished['url'].get_backend_name()}; "
                "leave it out."
            )
        finished[MAX_LAG] = float(max_lag)
    if replicas is not None:
        finished[REPLICAS] = resolve_replicas(
            replicas,
            primary_options,
            finished["url"],
            echo,
            sqlite_base_dir,
            where=replicas_where,
        )
    return finished


def resolve_replicas(
    replicas: t.Any,
    primary_options: Mapping[str, t.Any],
    primary_url: sa.URL,
    echo: bool | None,
    sqlite_base_dir: str,
    *,
    where: str,
) -> list[dict[str, t.Any]]:
    """The options of each replica of a bind: its primary's options (as given,
    before they were finished) with the replica's URL, or with the replica's
    own dict form over them.

    :param where: the config key the replicas came from, for error messages.
    :raises TypeError: ``replicas`` is not a list of URLs or dicts.
    :raises ValueError: the list is empty; a replica is on another database
        system than its primary, or is an in-memory SQLite database.
    """
    if isinstance(replicas, (str, sa.URL, Mapping)) or not isinstance(
        replicas, Iterable
    ):
        raise TypeError(
            f"{where} must be a list of replica URLs (or of dicts with a 'url'), "
            f"not {type(replicas).__name__}."
        )
    replicas = list(replicas)
    if not replicas:
        raise ValueError(
            f"{where} is empty: list at least one replica URL, or leave "
            f"{REPLICAS!r} out."
        )
    resolved = []
    for index, replica in enumerate(replicas):
        replica_where = f"{where}[{index}]"
        base = {k: v for k, v in primary_options.items() if k != "url"}
        if isinstance(replica, Mapping):
            if REPLICAS in replica or "url" not in replica:
                raise ValueError(
                    f"{replica_where} must have a 'url' and no {REPLICAS!r} of "
                    "its own, as in {'url': ..., **engine options}."
                )
            options = {**base, **replica}
        elif isinstance(replica, (str, sa.URL)):
            options = {**base, "url": replica}
        else:
            raise TypeError(
                f"{replica_where} must be a URL string, a sqlalchemy.URL or a dict "
                f"with a 'url' key, not {type(replica).__name__}."
            )
        url = to_async_url(options["url"], where=replica_where)
        if url.get_backend_name() != primary_url.get_backend_name():
            raise ValueError(
                f"{replica_where} ({redact(url)}) is a {url.get_backend_name()} "
                f"database, but its primary ({redact(primary_url)}) is "
                f"{primary_url.get_backend_name()}: a replica is a copy of its "
                "primary, on the same database system."
            )
        if url.get_backend_name() == "sqlite" and sqlite.is_memory(url):
            raise ValueError(
                f"{replica_where} ({redact(url)}) is an in-memory SQLite database, "
                "which cannot be a replica: it would be a separate, empty "
                "database. Use a file kept up to date from the primary, or leave "
                "it out."
            )
        resolved.append(
            _finish_options(
                options,
                echo,
                sqlite_base_dir,
                replica_where,
                shared=pgbouncer.OPTION not in options,
                in_binds=True,
            )
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
        url = sqlite.apply_defaults(url, options, sqlite_base_dir)
    options["url"] = url
    return options


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
    if url.get_driver_name() == "psycopg" and "async_creator_fn" not in options.get(
        "connect_args", {}
    ):
        options["connect_args"] = {
            **options.get("connect_args", {}),
            "async_creator_fn": psycopg_open.open_psycopg,
        }
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
        sqlite.keep_memory_database_alive(engine, url)
    event_loops.keep_connections_in_their_loop(engine)
    if url.get_driver_name() == "psycopg":
        psycopg_terminate.install(engine)
    return engine
