"""Exceptions raised by async_sa, each naming the cause and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa


class UnknownBindKeyError(sa.exc.UnboundExecutionError, LookupError):
    """A bind key was used that has no engine configured.

    Raised by ``db.get_engine``, ``create_all``/``drop_all``/``reflect`` and by
    sessions routing a model or table whose ``__bind_key__`` has no engine.
    """

    def __init__(self, key: str | None, configured: Iterable[str | None]) -> None:
        self.key = key
        shown = ", ".join(repr(k) for k in configured) or "none"
        if key is None:
            fix = (
                "set SQLALCHEMY_DATABASE_URI (or pass url= to SQLAlchemy()) to "
                "have a default engine"
            )
        else:
            fix = f"add {key!r} to SQLALCHEMY_BINDS (or to binds= of SQLAlchemy())"
        super().__init__(
            f"No engine is configured for bind key {key!r} (configured keys: "
            f"{shown}); {fix}."
        )


class NotFound(LookupError):
    """Raised by the ``*_or_404`` helpers and pagination where no framework
    answers 404s: under Quart they call ``quart.abort(404)``, under Starlette,
    FastAPI and Litestar they raise the framework's own 404 (see
    :mod:`async_sa.asgi`)."""

    def __init__(self, description: str | None = None) -> None:
        self.description = description
        super().__init__(description or "Not Found")


class TransactionAbortedError(sa.exc.PendingRollbackError):
    """``commit()`` refused: the database aborted the transaction.

    A statement failed earlier in the transaction and the error was caught;
    PostgreSQL then aborts the whole transaction and answers ``COMMIT`` with
    ``ROLLBACK``, so committing would store nothing while reporting success.
    Nothing is stored and ``models_committed`` is not sent. Roll the session
    back (leaving ``async with`` does it) before using it again. To recover
    from an expected error inside a transaction, run the statement in a
    savepoint: ``async with session.begin_nested(): ...``.
    """


class ConcurrentSessionUseError(RuntimeError):
    """Two tasks used the one session of ``db.session.shared()`` (or of
    ``db.test_isolation()``) at once.

    Raised in the task that came second, before it touches the session, so
    the first task's operation goes on unharmed. Await one operation before
    starting the other, or give concurrent work its own session from
    ``db.sessionmaker()``.
    """


class ModelsCommittedError(Exception):
    """The commit is durable, but a ``models_committed`` receiver raised.

    Raised by ``commit()`` once the data is stored and every receiver has run;
    the session is usable. ``errors`` holds each receiver's exception, in the
    order they were called; the first is also the ``__cause__``. Commit on
    success under Quart logs it and keeps the response: the data is stored.
    """

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = errors
        failed = (
            "a models_committed receiver"
            if len(errors) == 1
            else f"{len(errors)} models_committed receivers"
        )
        super().__init__(
            f"The commit is durable (the data is stored), but {failed} raised "
            + ", ".join(type(error).__name__ for error in errors)
            + " (see the cause)."
        )
