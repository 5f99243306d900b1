"""The ``*_or_404`` helpers: a missing row ends the request with a 404.

Each ends through the integration's ``not_found`` hook: ``abort(404)`` under Quart,
:class:`async_sa.NotFound` (a :class:`LookupError`) standalone.
"""

from __future__ import annotations

import re
import typing as t
import uuid
from collections.abc import Iterable

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy

_T = t.TypeVar("_T")
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
"""A decimal integer that can fit in a 64-bit primary key column."""
_NO_ROW = object()
_INT_REFUSED = (sa.String, sa.Uuid)
"""Key types an integer cannot name a row of (an enum is a string type)."""
_FLOAT_REFUSED = (sa.Integer, sa.String, sa.Uuid, sa.Boolean)
"""Key types a float cannot name a row of: ``1.5`` (or ``1.0``) is not row 1."""


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

    - a string for an integer or UUID key column is parsed first, so ``"42"``
      finds row 42 on every backend and ``"abc"`` is a 404;
    - any JSON-decoded value that cannot be the identity is a 404: a list or
      dict of the wrong shape, ``None``, ``1.5`` or ``True`` for an integer key
      (never row 1); a tuple, list or dict with one valid value per key column
      works as with ``session.get``;
    - a value the database rejects as data (out of range, a NUL byte, text that
      cannot be encoded) is a 404, after the session is rolled back, as
      PostgreSQL aborts the transaction on such an error. Pending changes are
      flushed before the lookup, so a failing flush is still raised as such.
    """
    session = db.session()
    ident = _identity(entity, ident)
    if ident is _NO_ROW:
        db._integration.not_found(description)
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
        db._integration.not_found(description)
    return instance


async def first_or_404(
    db: SQLAlchemy, statement: sa.Executable, *, description: str | None = None
) -> t.Any:
    """The first column of the first row of ``statement``, or a 404 when there is
    no row (or that value is ``NULL``)."""
    value = await db.session.scalar(statement)
    if value is None:
        db._integration.not_found(description)
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
        db._integration.not_found(description)


def _identity(entity: t.Any, ident: t.Any) -> t.Any:
    """``ident`` made ready for ``session.get``, or ``_NO_ROW`` when it cannot
    name a row.

    The shapes ``session.get`` takes are kept: a scalar for a single-column
    key, a sequence with one value per key column, a dict by attribute name.
    Each value is checked against its column (see :func:`_key_value`), so a
    JSON-decoded value of the wrong shape or type is a 404, not a server error.
    """
    mapper = sa.inspect(entity).mapper
    columns = mapper.primary_key
    if isinstance(ident, dict):
        names = _key_names(mapper)
        if len(ident) != len(columns) or not all(
            isinstance(name, str) and name in names for name in ident
        ):
            return _NO_ROW
        if {names[name] for name in ident} != set(columns):
            return _NO_ROW
        values = {name: _key_value(names[name], ident[name]) for name in ident}
        return _NO_ROW if _NO_ROW in values.values() else values
    if isinstance(ident, Iterable) and not isinstance(ident, (str, bytes)):
        items = list(ident)
        if len(items) != len(columns):
            return _NO_ROW
        checked = [
            _key_value(c, value) for c, value in zip(columns, items, strict=True)
        ]
        return _NO_ROW if any(v is _NO_ROW for v in checked) else checked
    if len(columns) != 1:
        return _NO_ROW
    return _key_value(columns[0], ident)


def _key_names(mapper: sa_orm.Mapper[t.Any]) -> dict[str, sa.ColumnElement[t.Any]]:
    """Attribute name (or synonym) → key column, the names a dict ident uses."""
    names = {mapper.get_property_by_column(c).key: c for c in mapper.primary_key}
    for synonym in mapper.synonyms:
        if synonym.name in names:
            names[synonym.key] = names[synonym.name]
    return names


def _key_value(column: sa.ColumnElement[t.Any], value: t.Any) -> t.Any:
    """``value`` for key ``column``, or ``_NO_ROW`` when it cannot be one.

    Text for an integer or UUID key is parsed (``"42"`` finds row 42 on every
    backend). ``None`` never names a row. A JSON number or boolean is refused
    where the column cannot hold it (``1.5`` or ``True`` for an integer key,
    a number for a text or UUID key), and a list or dict where the column is
    not an array or JSON. Anything else goes to the database as it is.
    """
    column_type = column.type
    if isinstance(value, str):
        if isinstance(column_type, sa.Integer):
            return int(value) if _INTEGER.fullmatch(value) else _NO_ROW
        if isinstance(column_type, sa.Uuid) and column_type.as_uuid:
            try:
                return uuid.UUID(value)
            except ValueError:
                return _NO_ROW
        return value
    if value is None:
        return _NO_ROW
    if isinstance(value, (list, dict)):
        return value if isinstance(column_type, (sa.ARRAY, sa.JSON)) else _NO_ROW
    if isinstance(value, bool):
        return value if isinstance(column_type, sa.Boolean) else _NO_ROW
    if isinstance(value, (int, float)):
        refused = _FLOAT_REFUSED if isinstance(value, float) else _INT_REFUSED
        return _NO_ROW if isinstance(column_type, refused) else value
    return value


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
