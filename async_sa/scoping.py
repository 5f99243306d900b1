"""``db.session``: one session per asyncio task, closed when the task ends."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import typing as t
from collections.abc import Coroutine

import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.util import ScopedRegistry

from async_sa import event_loops
from async_sa.cleanup import close_in_background
from async_sa.replicas import Primary
from async_sa.session import AsyncSession
from async_sa.shared_session import SharedSessionScope

_AS = t.TypeVar("_AS", bound=AsyncSession)
_T = t.TypeVar("_T")
_P = t.ParamSpec("_P")
_S = t.TypeVar("_S")


def current_task() -> asyncio.Task[t.Any]:
    """The running task, or a :class:`RuntimeError` saying why there is none."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        raise RuntimeError(
            "db.session needs a running event loop: use it from async code, "
            "for example inside asyncio.run(...) or a request handler."
        ) from None
    if task is None:
        raise RuntimeError(
            "db.session must be used from an asyncio task, not from a bare "
            "callback: wrap the code in a coroutine run by asyncio.create_task()."
        )
    return task


class TaskRegistry(ScopedRegistry[_AS]):
    """Sessions keyed by the task that uses them.

    A task that ends without removing its session has it closed in the
    background (its connection goes back to the pool) and forgotten, so the
    registry never keeps a finished task or its session alive.

    Inside a :class:`~async_sa.shared_session.SharedSessionScope` (the
    ``shared`` context variable), every task of its loop gets the scope's one
    session instead.
    """

    def __init__(self, createfunc: t.Callable[[], _AS]) -> None:
        super().__init__(createfunc, current_task)
        self._closing: set[asyncio.Task[None]] = set()
        self.shared: contextvars.ContextVar[SharedSessionScope[_AS] | None] = (
            contextvars.ContextVar(f"async_sa_shared_{id(self):x}", default=None)
        )
        """The shared scope entered in the current context, if any."""
        self.open_scopes = 0
        """How many shared scopes are open, in any context: while none is,
        a lookup does not even read ``shared``."""
        event_loops.close_sessions_at_loop_end(self)

    def __call__(self) -> _AS:
        if self.open_scopes:
            scope = self.shared.get()
            if scope is not None:
                shared = scope.session()
                if shared is not None:
                    return shared
        try:
            session: _AS = self.registry[asyncio.current_task()]
            return session
        except (KeyError, RuntimeError):
            task = current_task()
        session = self.createfunc()
        self._register(task, session)
        return session

    def has(self) -> bool:
        task = current_task()
        scope = self.shared.get()
        if scope is not None and scope.applies_to(task):
            return scope.has_session()
        return task in self.registry

    def in_shared_scope(self) -> bool:
        """Whether the calling task is inside an active shared scope."""
        scope = self.shared.get()
        return scope is not None and scope.applies_to(current_task())

    def set(self, obj: _AS) -> None:
        task = current_task()
        self.pop(task)
        self._register(task, obj)

    def clear(self) -> None:
        self.pop(current_task())

    def pop(self, task: asyncio.Task[t.Any]) -> _AS | None:
        """Unregister and return the session of ``task``, without closing it."""
        session: _AS | None = self.registry.pop(task, None)
        if session is not None:
            task.remove_done_callback(self._close_orphan)
            session._async_sa_registry = session._async_sa_task = None
        return session

    def forget(self, session: AsyncSession) -> None:
        """Unregister ``session`` if it is still its task's session."""
        task = session._async_sa_task
        if task is not None and self.registry.get(task) is session:
            self.pop(task)

    async def wait_closed(self) -> None:
        """Wait until the sessions of finished tasks are closed (in the running
        loop), including tasks whose done-callbacks have not run yet."""
        loop = asyncio.get_running_loop()
        for task in list(self.registry):
            if task.done() and task.get_loop() is loop:
                self._close_orphan(task)
        pending = [task for task in self._closing if task.get_loop() is loop]
        if pending:
            await asyncio.wait(pending)

    def _register(self, task: asyncio.Task[t.Any], session: _AS) -> None:
        self.registry[task] = session
        session._async_sa_registry = self
        session._async_sa_task = task
        task.add_done_callback(self._close_orphan)

    def _close_orphan(self, task: asyncio.Task[t.Any]) -> None:
        session = self.registry.pop(task, None)
        if session is None:
            return
        session._async_sa_registry = session._async_sa_task = None
        closer = close_in_background(session, task.get_loop())
        self._closing.add(closer)
        closer.add_done_callback(self._closing.discard)


def _resolved_when_called(cls: type[_S]) -> type[_S]:
    """Replace each of SQLAlchemy's awaitable proxy methods on ``cls`` (those
    ``cls`` does not define) by one that finds the session when it is called.

    SQLAlchemy's are coroutines that look the session up only once they run, by
    then perhaps in another task (``asyncio.shield``, ``wait_for``, ``gather``,
    ``create_task``), whose new, empty session they would act on. The
    replacement returns the caller's session's own coroutine, one frame fewer.
    The type checker keeps the inherited signatures, exact for the installed
    SQLAlchemy.
    """
    for name, value in vars(sa_async.async_scoped_session).items():
        if (
            inspect.isfunction(value)
            and inspect.iscoroutinefunction(value)
            and name not in vars(cls)
        ):
            setattr(cls, name, _called_on_the_callers_session(name))
    return cls


def _called_on_the_callers_session(name: str) -> t.Callable[..., t.Any]:
    def method(self: ScopedSession[t.Any], /, *args: t.Any, **kwargs: t.Any) -> t.Any:
        return getattr(self.registry(), name)(*args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"ScopedSession.{name}"
    method.__doc__ = getattr(sa_async.async_scoped_session, name).__doc__
    return method


@_resolved_when_called
class ScopedSession(sa_async.async_scoped_session[_AS]):
    """``db.session``: proxies every :class:`AsyncSession` method to the session of
    the current task, made on first use.

    ``db.session()`` returns that session. ``await db.session.remove()`` closes and
    unregisters it; a task that ends without doing so has it closed for it.
    Outside a running event loop, every use raises :class:`RuntimeError`.
    """

    registry: TaskRegistry[_AS]

    def __init__(self, session_factory: sa_async.async_sessionmaker[_AS]) -> None:
        super().__init__(session_factory, scopefunc=current_task)
        self.registry = TaskRegistry(session_factory)

    def in_transaction(self) -> bool:
        """Whether the current task's session is in a transaction."""
        return self.registry().in_transaction()

    def in_nested_transaction(self) -> bool:
        """Whether the current task's session is in a savepoint."""
        return self.registry().in_nested_transaction()

    def get_transaction(self) -> sa_async.AsyncSessionTransaction | None:
        """The current task's session transaction, if one is in progress."""
        return self.registry().get_transaction()

    def get_nested_transaction(self) -> sa_async.AsyncSessionTransaction | None:
        """The current task's innermost savepoint, if one is in progress."""
        return self.registry().get_nested_transaction()

    def run_sync(
        self,
        fn: t.Callable[t.Concatenate[sa_orm.Session, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Coroutine[t.Any, t.Any, _T]:
        """Run ``fn(sync_session, ...)`` on the calling task's session."""
        return self.registry().run_sync(fn, *args, **kwargs)

    def shared(self) -> SharedSessionScope[_AS]:
        """A scope in which ``db.session`` is one session for every task::

            async with db.session.shared():
                ...  # fixtures, tests, test-client requests: one session

        See :mod:`async_sa.shared_session`: objects stay attached across
        tasks, ``remove()`` and request teardown leave the session open, the
        scope's end closes it, and two tasks using it at once get
        :class:`~async_sa.ConcurrentSessionUseError`.
        """
        return SharedSessionScope(self.registry)

    def primary(self) -> Primary:
        """A block whose reads go to the primary, not to read replicas::

            async with db.session.primary():
                ...  # reads the primary, as do the tasks started here

        See :mod:`async_sa.replicas`. Without replicas it changes nothing.
        """
        return Primary()

    def remove(self) -> Coroutine[t.Any, t.Any, None]:
        """Close the calling task's session (rolling back uncommitted work) and
        unregister it. Cancelling the caller does not interrupt the close.
        Inside :meth:`shared`, the shared session is left open (the scope
        closes it)."""
        task = current_task()
        shared = self.registry.open_scopes > 0 and self.registry.in_shared_scope()
        return self._remove(task, shared=shared)

    async def _remove(self, task: asyncio.Task[t.Any], *, shared: bool) -> None:
        if shared:
            return
        session = self.registry.pop(task)
        if session is not None:
            await session.close()
