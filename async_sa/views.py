"""The ``*_or_404`` helpers: a missing row ends the request with a 404.

Each ends through the owner's ``not_found`` hook: ``abort(404)`` under Quart,
:class:`async_sa.NotFound` (a :class:`LookupError`) standalone.
"""

from __future__ import annotations

import re
import typing as t
import uuid

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy

_T = t.TypeVar("_T")
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
"""A decimal integer that can fit in a 64-bit primary key column."""
_NO_ROW = object()


async def get_or_404(
    db: SQLAlchemy,
    entity: type[_T],
    ident: t.Any,
    *,
    description: str | None = None,
    **kwargs: t.Any,
) -> _T:
    """``session.get(entity, ident, **kwargs)``, or a 404 when there is no such row.

    An identifier that cannot name a row is a 404 too, never a server error:

    - a string for a single integer or UUID primary key is parsed first, so
      ``"42"`` finds row 42 on every backend and ``"abc"`` is a 404;
    - a value the database rejects as data (out of range, a NUL byte, text that
      cannot be encoded) is a 404, after the session is rolled back, as
      PostgreSQL aborts the transaction on such an error. Pending changes are
      flushed before the lookup, so a failing flush is still raised as such.
    """
    session = db.session()
    ident = _parse_text_identifier(entity, ident)
    if ident is _NO_ROW:
        db._current_state().not_found(description)
    # The check flush() starts with; session.new/dirty/deleted would build
    # three sets to say the same, and an empty flush costs a greenlet round.
    if session.autoflush and not session.sync_session._is_clean():
        await session.flush()
    try:
        instance = await session.get(entity, ident, **kwargs)
    except Exception as error:
        if not _is_rejected_value(error):
            raise
        await session.rollback()
        instance = None
    if instance is None:
        db._current_state().not_found(description)
    return instance


async def first_or_404(
    db: SQLAlchemy, statement: sa.Executable, *, description: str | None = None
) -> t.Any:
    """The first column of the first row of ``statement``, or a 404 when there is
    no row (or that value is ``NULL``)."""
    value = await db.session.scalar(statement)
    if value is None:
        db._current_state().not_found(description)
    return value


async def one_or_404(
    db: SQLAlchemy, statement: sa.Executable, *, description: str | None = None
) -> t.Any:
    """The first column of the only row of ``statement``, or a 404 when there is
    no row or more than one."""
    result = await db.session.execute(statement)
    try:
        return result.scalar_one()
    except (sa.exc.NoResultFound, sa.exc.MultipleResultsFound):
        db._current_state().not_found(description)


def _parse_text_identifier(entity: t.Any, ident: t.Any) -> t.Any:
    """Turn a string identifier into the type of a single integer or UUID key.

    Returns ``_NO_ROW`` when the string cannot be such a key; any other
    identifier is returned unchanged.
    """
    if not isinstance(ident, str):
        return ident
    columns = sa.inspect(entity).mapper.primary_key
    if len(columns) != 1:
        return ident
    column_type = columns[0].type
    if isinstance(column_type, sa.Integer):
        return int(ident) if _INTEGER.fullmatch(ident) else _NO_ROW
    if isinstance(column_type, sa.Uuid) and column_type.as_uuid:
        try:
            return uuid.UUID(ident)
        except ValueError:
            return _NO_ROW
    return ident


def _is_rejected_value(error: Exception) -> bool:
    """Whether ``error`` means the database or its driver refused a value as data.

    SQLite's driver raises :class:`OverflowError` and :class:`UnicodeError`
    itself; other drivers raise a DBAPI ``DataError`` or an error whose SQLSTATE
    is in class 22 (data exception), as asyncpg does.
    """
    if isinstance(error, (OverflowError, UnicodeError, sa.exc.DataError)):
        return True
    if isinstance(error, sa.exc.DBAPIError):
        sqlstate = getattr(error.orig, "sqlstate", None)
        return isinstance(sqlstate, str) and sqlstate.startswith("22")
    return False
