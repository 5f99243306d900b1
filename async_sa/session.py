"""The session classes: bind-key routing in the sync session, scope-aware exit."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.sql import visitors
from typing_extensions import TypedDict

from async_sa import aborted_transactions
from async_sa import replicas
from async_sa import track_modifications
from async_sa.cleanup import close_within
from async_sa.shared_session import one_task_at_a_time
from async_sa.state import State

if t.TYPE_CHECKING:
    from async_sa.scoping import TaskRegistry
    from async_sa.shared_session import SharedSessionScope

_NO_BIND_KEY = object()


class Session(sa_orm.Session):
    """The sync session behind every :class:`AsyncSession` of a ``db``.

    It belongs to the owner (the standalone ``db`` or the current Quart app) that
    was active when it was made, and routes each statement to one of that owner's
    engines, in this order: an explicit ``bind``; ``bind_arguments={"bind_key":
    ...}``; the bind key of the mapped table; the first table of a Core statement
    (selects, joins, subqueries, insert/update/delete); the default engine.
    An owner with read replicas has its sessions' reads sent to them (see
    :mod:`async_sa.replicas`).

    Made while ``db.test_isolation()`` is active for its owner, it is bound to
    the isolation's connections (see :mod:`async_sa.test_isolation`).

    A custom ``sync_session_class`` that subclasses SQLAlchemy's ``Session``
    rather than this one is combined with it, this one first in the MRO.
    """

    _async_sa_state: State

    def __init__(self, *, async_sa_state: State, **kwargs: t.Any) -> None:
        self._async_sa_state = async_sa_state
        super().__init__(**kwargs)
        if async_sa_state.isolation is not None:
            async_sa_state.isolation.join(self)
        if self._async_sa_state.track_modifications:
            track_modifications.track(self, self._async_sa_state.sender)

    def get_bind(
        self,
        mapper: t.Any = None,
        *,
        clause: sa.ClauseElement | None = None,
        bind: sa.Engine | sa.Connection | None = None,
        **kwargs: t.Any,
    ) -> sa.Engine | sa.Connection:
        """Pick the engine for a statement; see the class docstring for the order.

        :raises UnknownBindKeyError: the key found has no engine configured.
        """
        if bind is not None:
            return bind
        state = self._async_sa_state
        bind_key = kwargs.get("bind_key", _NO_BIND_KEY)
        if bind_key is not _NO_BIND_KEY:
            return state.sync_engine(bind_key)
        if mapper is not None:
            try:
                return state.routes[mapper]
            except KeyError:
                table = _first_table(sa.inspect(mapper).local_table)
                engine = _engine_for(self, table)
                if table in state.routes:
                    state.routes[mapper] = engine
                return engine
        if clause is not None:
            return _engine_for(self, _first_table(clause))
        return state.sync_engine(None)


sa.event.listen(Session, "before_commit", aborted_transactions.refuse_aborted_commit)


def _engine_for(session: Session, table: sa.Table | None) -> sa.Engine:
    """The engine of ``table``'s bind key, else the default one.

    Only tables of the db's own metadatas are remembered in ``State.routes``:
    tables made on the fly (one per report, each in a fresh ``MetaData``) are
    routed by their metadata's ``info["bind_key"]`` each time, so the cache
    never holds them.
    """
    state = session._async_sa_state
    if table is None:
        return state.sync_engine(None)
    try:
        return state.routes[table]
    except KeyError:
        metadata = table.metadata
        engine = state.sync_engine(metadata.info.get("bind_key"))
        if any(metadata is own for own in state.metadatas.values()):
            state.routes[table] = engine
        return engine


def _first_table(clause: sa.ClauseElement | sa.FromClause) -> sa.Table | None:
    """The first table ``clause`` names (in a select, join, subquery or DML)."""
    for element in visitors.iterate(clause):
        if isinstance(element, sa.Table):
            return element
        table = getattr(element, "table", None)
        if isinstance(table, sa.Table):
            return table
    return None


_C = t.TypeVar("_C", bound=type)
if t.TYPE_CHECKING:
    _Operation = types.CoroutineType[t.Any, t.Any, t.Any]

IN_FLIGHT_POLL = 0.005
"""Seconds between two looks of a waiting close at the operations in flight."""
_PRUNE_AT = 8
"""Operations remembered by a session before the finished ones are dropped."""


def _tracked_while_awaited(
    base: type, *, skip: t.Container[str] = ()
) -> t.Callable[[_C], _C]:
    """Class decorator: each coroutine method of ``base`` (but ``skip``) is
    overridden to remember the coroutine it returns on the session, so that a
    close can tell whether another task is awaiting one of them (see
    :meth:`AsyncSession.close`).

    The override is a plain function returning SQLAlchemy's own coroutine: no
    extra frame for the event loop to resume at every step of the operation (a
    coroutine wrapper cost 0.5 % of a unit of work). The type checker keeps
    SQLAlchemy's signatures, exact for the installed version.
    """

    def decorate(cls: _C) -> _C:
        for name, value in vars(base).items():
            if (
                inspect.isfunction(value)
                and inspect.iscoroutinefunction(value)
                and name not in skip
                and name not in vars(cls)
            ):
                setattr(cls, name, _tracked(value))
        return cls

    return decorate


def _tracked(method: t.Callable[..., _Operation]) -> t.Any:
    @functools.wraps(method)
    def tracked(self: t.Any, /, *args: t.Any, **kwargs: t.Any) -> t.Any:
        operation = method(self, *args, **kwargs)
        session = self if isinstance(self, AsyncSession) else self.session
        if session._async_sa_users is not None:
            shared = one_task_at_a_time(session._async_sa_users, operation)
            operation = t.cast("_Operation", shared)
        # _remember, but for the pruning, inlined: this runs per operation.
        operations = session._async_sa_operations
        if operations is None:
            session._async_sa_operations = [operation]
        elif len(operations) < _PRUNE_AT:
            operations.append(operation)
        else:
            _remember(session, operation)
        return operation

    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(tracked)
    return tracked


def _remember(session: AsyncSession, operation: _Operation) -> None:
    """Keep ``operation`` on ``session`` for :func:`_awaited_elsewhere`,
    dropping the finished ones now and then."""
    operations = session._async_sa_operations
    if operations is None:
        session._async_sa_operations = [operation]
        return
    if len(operations) >= _PRUNE_AT:
        operations[:] = [
            op
            for op in operations
            if inspect.getcoroutinestate(op) != inspect.CORO_CLOSED
        ]
    operations.append(operation)


def _awaited_elsewhere(operations: list[_Operation]) -> bool:
    """Whether one of ``operations`` (coroutines) is suspended at an ``await``:
    started, not finished, and not on the calling task's own stack (whose
    coroutines are running while it asks)."""
    for operation in operations:
        if (
            operation.cr_frame is not None
            and not operation.cr_running
            and inspect.getcoroutinestate(operation) == inspect.CORO_SUSPENDED
        ):
            return True
    return False


@_tracked_while_awaited(
    sa_async.AsyncSession, skip={"aclose", "close", "__aenter__", "__aexit__"}
)
class AsyncSession(sa_async.AsyncSession):
    """The async session ``db.session`` and ``db.sessionmaker`` make.

    It is not closed under a task still using it: ``close()`` (and so
    ``remove()``, leaving ``async with``, and the cleanup of a task that ended
    without closing it) first waits until no other task is awaiting one of its
    methods or those of its ``begin()`` transactions (a commit under
    :func:`asyncio.shield`, say). The close finishes even if the caller is
    cancelled meanwhile. Leaving ``async with`` closes it (rolling back
    uncommitted work) and unregisters it from ``db.session``, so the next
    ``db.session()`` in that task is a fresh one; the session of a
    ``db.session.shared()`` scope is left open instead (the scope closes it).

    A ``class_`` in ``session_options`` that subclasses SQLAlchemy's
    ``AsyncSession`` but not this one is combined with it, this one first.
    """

    sync_session_class = Session
    _async_sa_registry: TaskRegistry[t.Any] | None = None
    _async_sa_task: asyncio.Task[t.Any] | None = None
    _async_sa_scope: SharedSessionScope[t.Any] | None = None
    """The ``db.session.shared()`` scope whose session this is: it closes it."""
    _async_sa_users: list[asyncio.Task[t.Any] | None] | None = None
    """A shared scope's session: the tasks awaiting an operation on it."""
    _async_sa_operations: list[_Operation] | None = None
    """The coroutines of this session's (and its transactions') methods called
    lately; those not finished are the operations in flight."""

    def begin(self) -> sa_async.AsyncSessionTransaction:
        """A transaction whose commit and rollback a close waits for."""
        return _Transaction(self)

    def begin_nested(self) -> sa_async.AsyncSessionTransaction:
        """A savepoint whose release and rollback a close waits for."""
        return _Transaction(self, nested=True)

    async def close(self) -> None:
        """Close the session, rolling back uncommitted work, once no other task
        is awaiting an operation on it (closing would break that operation).

        Cancelling the caller does not interrupt the close (which would leave
        the connection checked out); the cancellation is raised once it is done.
        A database that does not answer within ``close_timeout`` seconds (see
        :class:`async_sa.SQLAlchemy`), the wait for other tasks included, has
        the session's connections terminated and invalidated (an operation still
        awaited on them fails), and the close returns; see
        :func:`~async_sa.cleanup.close_within`.
        """
        operations = self._async_sa_operations
        if not self.sync_session.in_transaction() and not (
            operations and _awaited_elsewhere(operations)
        ):
            # No transaction to end, no operation to wait for: SQLAlchemy's
            # close then sends nothing and never suspends, so there is nothing
            # to bound or to shield from a cancellation.
            await super().close()
            return
        state = t.cast(Session, self.sync_session)._async_sa_state
        closing = self._close_when_idle()
        _remember(self, t.cast("_Operation", closing))
        await close_within(self, closing, state.close_timeout)

    async def _close_when_idle(self) -> None:
        operations = self._async_sa_operations
        while operations and _awaited_elsewhere(operations):
            await asyncio.sleep(IN_FLIGHT_POLL)
        await super().close()

    async def __aexit__(self, type_: t.Any, value: t.Any, traceback: t.Any) -> None:
        if self._async_sa_scope is not None:
            return  # A shared scope's session stays open until the scope ends.
        try:
            await self.close()
        finally:
            if self._async_sa_registry is not None:
                self._async_sa_registry.forget(self)


@_tracked_while_awaited(sa_async.AsyncSessionTransaction)
class _Transaction(sa_async.AsyncSessionTransaction):
    """``session.begin()``: its awaitable methods count as operations in flight
    on the session, like the session's own."""

    __slots__ = ()


_AS = t.TypeVar("_AS", bound=AsyncSession)


class SessionOptions(TypedDict, t.Generic[_AS], total=False):
    """The ``session_options`` of :class:`async_sa.SQLAlchemy` that type checkers
    follow: with ``class_``, ``db.session`` and ``db.sessionmaker`` make that
    class. Any other ``async_sessionmaker`` option works too, typed as a plain
    mapping (sessions are then typed :class:`AsyncSession`)."""

    class_: type[_AS]
    sync_session_class: type[sa_orm.Session]
    autoflush: bool
    autobegin: bool
    expire_on_commit: bool
    info: dict[t.Any, t.Any]
    twophase: bool
    close_resets_only: bool


class SessionMaker(sa_async.async_sessionmaker[_AS]):
    """``db.sessionmaker``: an ``async_sessionmaker`` whose sessions belong to the
    owner current when each is made (the standalone ``db``, or the app of the
    current context), whose engines they route to. When that owner has read
    replicas, the sync session's class has
    :class:`~async_sa.replicas.ReplicaRouting` mixed in.

    :param find_state: returns the current owner's :class:`State`.
    """

    def __init__(self, find_state: t.Callable[[], State], /, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._find_state = find_state

    if not t.TYPE_CHECKING:  # the type checker keeps SQLAlchemy's signature

        def __call__(self, **local_kw):
            # async_sessionmaker.__call__'s body, inlined (one frame fewer
            # per session), ``info`` merged as there.
            state = local_kw["async_sa_state"] = self._find_state()
            for key, value in self.kw.items():
                if key == "info" and "info" in local_kw:
                    local_kw["info"] = {**value, **local_kw["info"]}
                else:
                    local_kw.setdefault(key, value)
            if not state.replicas:
                return self.class_(**local_kw)
            local_kw["sync_session_class"] = replicas.routed_class(
                local_kw["sync_session_class"]
            )
            session = self.class_(**local_kw)
            replicas.start_routing(session.sync_session)
            return session
