"""Refuse to commit a transaction the database has aborted.

When a statement fails inside a transaction and the error is caught, PostgreSQL
aborts the whole transaction: every later statement fails, and ``COMMIT`` is
answered with ``ROLLBACK`` without an error, so a plain commit would report
success for work that was thrown away. SQLite and MariaDB keep the transaction
instead, and a savepoint rolled back after the error restores it on PostgreSQL.

So a failed statement marks its connection (``handle_error``, which runs only
on errors), and a session's commit asks each marked connection whether its
transaction still runs statements (``SELECT 1`` on the driver connection).
Until a statement fails, a commit costs one look at a module flag.

One case the question cannot see: MySQL and MariaDB roll the whole transaction
back on a deadlock (error 1213), and the next statement silently starts a new
one, so a commit after the caught error would store only the work done since.
That error marks its connection as rolled back, and the commit refuses it
without asking.
"""

from __future__ import annotations

import threading
import typing as t
import weakref
from collections.abc import Iterable

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm

from async_sa.errors import TransactionAbortedError

_failed: weakref.WeakSet[sa.Connection] = weakref.WeakSet()
"""Connections on which a statement failed since their last successful check."""
_rolled_back: weakref.WeakKeyDictionary[sa.Connection, BaseException] = (
    weakref.WeakKeyDictionary()
)
"""Connections whose transaction a MySQL deadlock rolled back, with the error."""
_any_failed = False
"""Whether :data:`_failed` may hold a connection: the check every commit makes
(cheaper than asking the weak set, which the garbage collector empties).
Set and cleared under :data:`_marking`, so a failure in another thread's loop
is never lost between a commit finding the set empty and clearing the flag."""
_marking = threading.Lock()
MYSQL_DEADLOCK = 1213
"""MySQL's ``ER_LOCK_DEADLOCK``: the transaction was rolled back as a whole."""


def watch(engines: Iterable[sa_async.AsyncEngine]) -> None:
    """Mark the connections of ``engines`` on which a statement fails."""
    for engine in engines:
        sa.event.listen(engine.sync_engine, "handle_error", _statement_failed)


def _statement_failed(context: sa.engine.ExceptionContext) -> None:
    global _any_failed
    connection = context.connection
    if connection is not None:
        with _marking:
            _failed.add(connection)
            _any_failed = True
        if _rolls_back_the_transaction(context):
            _rolled_back[connection] = context.original_exception


def _rolls_back_the_transaction(context: sa.engine.ExceptionContext) -> bool:
    """Whether the error rolled back the whole MySQL/MariaDB transaction."""
    if context.dialect.name not in ("mysql", "mariadb"):
        return False
    arguments: tuple[t.Any, ...] = getattr(context.original_exception, "args", ())
    return bool(arguments) and arguments[0] == MYSQL_DEADLOCK


def refuse_aborted_commit(session: sa_orm.Session) -> None:
    """``before_commit`` of every async_sa session: raise before committing a
    transaction one of whose connections can no longer run statements.

    :raises TransactionAbortedError: with the driver's error as the cause.
    """
    global _any_failed
    if not _any_failed or session.in_nested_transaction():
        return
    with _marking:
        if not _failed:
            _any_failed = False
            return
    transaction = session.get_transaction()
    if transaction is None:
        return
    # SessionTransaction has no public way to list its connections.
    for connection, *_ in list(transaction._connections.values()):
        if connection in _failed:
            error = _rolled_back.get(connection) or _probe(connection)
            if error is not None:
                raise TransactionAbortedError(
                    "This transaction cannot be committed: a statement failed "
                    "earlier in it and the database aborted the transaction "
                    "(committing would lose the work done before the error). "
                    "Roll the session back "
                    "and redo the work; run a statement that may fail inside "
                    "'async with session.begin_nested():' to keep the rest of "
                    "the transaction."
                ) from error
            _failed.discard(connection)


def _probe(connection: sa.Connection) -> Exception | None:
    """Run ``SELECT 1`` on the driver connection; its error, if it fails."""
    cursor = connection.connection.cursor()
    try:
        cursor.execute("SELECT 1")
        cursor.fetchall()
    except Exception as error:
        return error
    finally:
        cursor.close()
    return None
