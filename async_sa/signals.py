"""The commit signals, sent when ``track_modifications`` is on.

Both are blinker signals. Connect a plain function or a coroutine function::

    from async_sa.signals import models_committed

    @models_committed.connect
    async def reindex(sender, changes):
        for instance, operation in changes: ...

Both run inside ``await session.commit()`` (and inside the exit of
``async with session.begin():``), in the committing task, before it returns.
"""

from __future__ import annotations

import blinker

_signals = blinker.Namespace()

before_models_committed = _signals.signal(
    "before-models-committed",
    doc="""Sent just before a session commits, when it has model changes.

    :param sender: the Quart app the session belongs to, else the ``SQLAlchemy``
        object.
    :param changes: ``[(instance, "insert" | "update" | "delete"), ...]``, one
        entry per object changed in the transaction (savepoints rolled back are
        left out). Pending changes are flushed first, so new objects have their
        primary keys.

    The transaction is still open. Objects a receiver adds to the committing
    session are committed with it and reported by :data:`models_committed`.
    Receivers that need to read or write the database otherwise must use another
    session (``async with db.sessionmaker() as other:``). That session does not
    see the uncommitted changes, and must not wait for the commit's locks: the
    commit waits for the receiver (on SQLite even a read can wait; prefer
    :data:`models_committed` for database work).

    An exception raised by a receiver propagates out of ``commit()`` and aborts
    the commit: nothing is stored, the transaction stays open, and the session
    must be rolled back (leaving ``async with`` does it).
    """,
)

models_committed = _signals.signal(
    "models-committed",
    doc="""Sent once a session's commit is durable, when it had model changes.

    :param sender: the Quart app the session belongs to, else the ``SQLAlchemy``
        object.
    :param changes: ``[(instance, "insert" | "update" | "delete"), ...]``, one
        entry per object whose change was committed: an object inserted and then
        updated in the same transaction is one ``"insert"``; one inserted and
        deleted again is not reported; changes inside rolled-back savepoints are
        not reported, and releasing a savepoint sends nothing.

    The committing session has finished its transaction and cannot run SQL
    here: doing so raises ``sqlalchemy.exc.InvalidRequestError`` ("committed
    state"). Receivers that need the database must use another session
    (``async with db.sessionmaker.begin() as other:``).

    A receiver that raises does not stop the others: every receiver is called,
    then ``commit()`` raises :class:`async_sa.ModelsCommittedError`, whose
    ``errors`` are the receivers' exceptions (the first is its ``__cause__``).
    The data is stored and the session is usable; catch that type to tell
    "stored, but a receiver failed" from a failed commit. Under Quart's commit
    on success it is logged and the response is kept. A cancellation in a
    receiver is raised as itself, at once.
    """,
)
