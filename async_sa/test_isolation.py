"""``async with db.test_isolation():``: everything a test writes is rolled back.

On entry, one connection per engine of the current owner (the Quart app whose
context is active, else the standalone ``db``) is checked out and an outer
transaction begun on it. Every session made for that owner while the isolation
lasts, by any task of its event loop (``db.session``, ``db.sessionmaker()``,
test-client requests, background tasks), is bound to those connections with
SQLAlchemy's ``join_transaction_mode="create_savepoint"``: its transactions are
savepoints of the outer one, so the app's ``commit()``, ``rollback()`` and
``begin_nested()`` behave as in production (a commit is a commit for the app and
sends the commit signals) while nothing reaches the database for good. At exit
the outer transaction is rolled back and the connections go back to their pools.

Inside it, ``db.session`` is one session shared by the test and every task it
starts (:meth:`db.session.shared() <async_sa.scoping.ScopedSession.shared>`), so
objects stay attached across fixtures, tests and requests.

SQLite: its driver begins a transaction only before a data-changing statement,
and a ``SAVEPOINT`` outside a transaction starts one that its ``RELEASE``
commits; so the outer transaction is begun with an explicit ``BEGIN``.

Not covered: tables created or connections opened directly from an engine
(``db.create_all()``, ``db.engine.connect()``) inside the block; they use other
connections. Create tables before entering it. All sessions of an engine share
one connection, so their transactions cannot run concurrently: a session may
work inside another's transaction (its savepoint nested in the other's), but
one ending its transaction while a later-begun one is still open gets
:class:`~async_sa.ConcurrentSessionUseError` (the connection's savepoints
are out of step after it; the exit still rolls everything back).
"""

from __future__ import annotations

import asyncio
import dataclasses
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async

from async_sa.cleanup import run_to_completion
from async_sa.engines import BindKey
from async_sa.errors import ConcurrentSessionUseError
from async_sa.shared_session import SharedSessionScope
from async_sa.state import State

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy
    from async_sa.session import Session


class TestIsolation:
    """``db.test_isolation()``: see :mod:`async_sa.test_isolation`.

    An async context manager, entered once.

    :raises RuntimeError: entered outside a running event loop, inside another
        isolation of the same owner, or for an app ``db`` is not registered
        with (``init_app``).
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, db: SQLAlchemy) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "db.test_isolation() needs a running event loop: use "
                "'async with db.test_isolation():' in an async test or fixture."
            ) from None
        self._db = db
        self._state: State | None = None
        self._joined: State | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: list[sa_async.AsyncConnection] = []
        self._scope: SharedSessionScope[t.Any] | None = None

    async def __aenter__(self) -> TestIsolation:
        if self._state is not None:
            raise RuntimeError(
                "This test isolation was entered already: make a new one with "
                "db.test_isolation()."
            )
        state = self._db._current_state()
        if state.isolation is not None:
            raise RuntimeError(
                "db.test_isolation() is already active for this "
                f"{_owner_name(state)}: isolations do not nest. Use "
                "'async with db.session.begin_nested():' inside it for a part "
                "to roll back on its own."
            )
        self._state = state
        self._loop = asyncio.get_running_loop()
        try:
            await run_to_completion(self._begin(state))
        except BaseException:
            await run_to_completion(self._end())
            raise
        return self

    async def _begin(self, state: State) -> None:
        sync_connections: dict[BindKey, sa.Connection | None] = {}
        for key, engine in state.engines.items():
            connection = await engine.connect()
            self._connections.append(connection)
            await connection.begin()
            if connection.dialect.name == "sqlite":
                await connection.exec_driver_sql("BEGIN")
            sync_connections[key] = connection.sync_connection
            sa.event.listen(
                connection.sync_connection, "release_savepoint", _release_innermost
            )
        # get_bind hands these out where it would hand out the engines, and
        # caches them in routes of their own.
        # Reads too: the replicas would not see what the test wrote.
        joined = dataclasses.replace(state, routes={})
        joined.sync_engines = t.cast(dict[BindKey, sa.Engine], sync_connections)
        joined.replicas = {}
        self._joined = joined
        state.isolation = self
        self._scope = self._db.session.shared().enter()

    async def __aexit__(self, *exc_info: object) -> None:
        await run_to_completion(self._end())

    async def _end(self) -> None:
        """Roll everything back and give the connections back, each step even
        if another failed; the first error is raised at the end.

        The sessions of finished tasks are closed first (rolling back their
        savepoints). The outer rollback then discards the shared session's
        savepoint with the rest, so closing that session sends nothing: one
        round trip fewer per engine. A shared session another task is still
        awaiting is closed first instead, which waits for that task.
        """
        errors: list[BaseException] = []
        scope, self._scope = self._scope, None
        shared = None if scope is None else scope.end()
        if shared is not None and shared._async_sa_users:
            await _collect(errors, shared.close())
            shared = None
        await _collect(errors, self._db.session.registry.wait_closed())
        if self._state is not None and self._state.isolation is self:
            self._state.isolation = None
        connections, self._connections = self._connections, []
        for connection in connections:
            transaction = connection.get_transaction()
            if transaction is not None:
                await _collect(errors, transaction.rollback())
        if shared is not None:
            await _collect(errors, shared.close())
        for connection in connections:
            await _collect(errors, connection.close())
        if errors:
            raise errors[0]

    def join(self, session: Session) -> None:
        """Bind ``session`` (made for this isolation's owner) to its
        connections, its transactions being savepoints there, if it is made in
        this isolation's event loop (another loop's sessions are left alone:
        the connections belong to this one)."""
        if self._joined is None or self._loop is not asyncio._get_running_loop():
            return
        session._async_sa_state = self._joined
        session.join_transaction_mode = "create_savepoint"

    def __enter__(self) -> t.NoReturn:
        raise TypeError(
            "db.test_isolation() is an async context manager: use "
            "'async with db.test_isolation():' in an async test or fixture."
        )

    def __exit__(self, *exc_info: object) -> None:
        """Never reached: :meth:`__enter__` raises."""


def _release_innermost(connection: sa.Connection, name: str, context: None) -> None:
    """Fail clearly when sessions sharing an isolation's connection end their
    savepoints out of order (two sessions' transactions running concurrently).

    Releasing a savepoint releases those begun after it too, so a session
    committing while another session's later savepoint is open would take
    that session's work along, and its own ``RELEASE`` would then fail with
    the database's "no such savepoint". The release is refused first, naming
    the cause: it must be the connection's innermost savepoint
    (``release_savepoint`` listener of the isolation's connections).
    """
    innermost = connection._nested_transaction
    if innermost is not None and innermost._savepoint != name:
        raise ConcurrentSessionUseError(
            "Inside db.test_isolation() every session of an engine runs on "
            f"one connection, and savepoint {name!r} was released while a "
            f"later one ({innermost._savepoint!r}) is still open: two "
            "sessions ran transactions at the same time. Inside the "
            "isolation, let one session's transaction end before another's "
            "begins (concurrency cannot be isolated on one connection)."
        )


async def _collect(
    errors: list[BaseException], step: t.Coroutine[t.Any, t.Any, None]
) -> None:
    """Await ``step``; an exception it raises is added to ``errors``."""
    try:
        await step
    except Exception as error:
        errors.append(error)


def _owner_name(state: State) -> str:
    sender = state.sender
    name = getattr(sender, "name", None)
    return f"app {name!r}" if isinstance(name, str) else "SQLAlchemy object"
