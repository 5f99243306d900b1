"""The ``pgbouncer`` bind option: driver settings for PgBouncer's transaction pooling.

In transaction pooling, PgBouncer lends a server connection to a client for one
transaction only, so anything a driver leaves on "its" server connection between
transactions is gone, or on another client's, by the next one. Both PostgreSQL
drivers do that with named prepared statements: asyncpg (through SQLAlchemy)
prepares every statement under a name, and psycopg prepares a query run five
times on one connection. The next transaction then fails with ``prepared
statement "..." does not exist`` or ``... already exists``.

``pgbouncer=True`` in a bind's options makes the driver use only the unnamed
statement, which lives within one protocol exchange and so never crosses a
transaction: nothing is left on a server connection, whatever PgBouncer's
version or ``max_prepared_statements``.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

OPTION = "pgbouncer"
"""The name of the bind option."""

_DRIVER_CONNECT_ARGS: dict[str, dict[str, t.Any]] = {
    "asyncpg": {
        # asyncpg: no statement cache, so a statement asyncpg prepares itself is
        # unnamed and parsed again right before it is executed.
        "statement_cache_size": 0,
        # SQLAlchemy's asyncpg adapter: keep no prepared statement across
        # executions, and prepare each one as the unnamed statement.
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: "",
    },
    "psycopg": {"prepare_threshold": None},
}
_DRIVER_CONNECT_ARGS["psycopg_async"] = _DRIVER_CONNECT_ARGS["psycopg"]


def apply(
    url: sa.URL,
    options: dict[str, t.Any],
    *,
    where: str,
    shared: bool,
    in_binds: bool,
) -> None:
    """Replace the ``pgbouncer`` switch in ``options`` by the driver settings it
    stands for (``connect_args`` given by the user win).

    :param url: the engine's URL, its async driver already chosen.
    :param where: the bind, as its config key or argument, for error messages.
    :param shared: the switch came from the engine options every bind shares
        rather than from this bind's own options.
    :param in_binds: the engine is one of the binds (whose dict form may turn the
        switch off), not the default engine.
    :raises TypeError: the switch is neither ``True`` nor ``False``.
    :raises ValueError: the switch is on for a URL that is not PostgreSQL, or
        for a PostgreSQL driver other than asyncpg and psycopg.
    """
    enabled = options.pop(OPTION, False)
    if not isinstance(enabled, bool):
        raise TypeError(f"{where}: {OPTION!r} must be True or False, not {enabled!r}.")
    if not enabled:
        return
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() != "postgresql":
        if not shared:
            fix = f"remove {OPTION!r} from this bind's options"
        else:
            fix = (
                "it comes from the engine options every bind shares: set it in the "
                f"PostgreSQL binds' own options instead ({{'url': ..., {OPTION!r}: "
                "True})"
            )
            if in_binds:
                fix += f", or turn it off in this bind's ({{..., {OPTION!r}: False}})"
        raise ValueError(
            f"{where} ({shown}) has {OPTION}=True, but PgBouncer pools PostgreSQL "
            f"connections only: {fix}."
        )
    driver_args = _DRIVER_CONNECT_ARGS.get(url.get_driver_name())
    if driver_args is None:
        raise ValueError(
            f"{where} ({shown}) has {OPTION}=True, which knows the asyncpg and "
            "psycopg drivers only: use 'postgresql+asyncpg://' or "
            "'postgresql+psycopg://', or configure the driver yourself."
        )
    options["connect_args"] = {**driver_args, **options.get("connect_args", {})}
