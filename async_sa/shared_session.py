"""One ``db.session`` for every task of a block: ``db.session.shared()``.

``db.session`` is one session per asyncio task. Tests and interactive shells
want the opposite: the fixture that made a user, the test that changes it and
the test client's request that reads it should see one session, so objects stay
attached and what one part commits the others see (Flask-SQLAlchemy's session
belongs to the app context, which its tests share).

Usage::

    async with db.session.shared():
        user = User(name="a")
        db.session.add(user)
        await asyncio.create_task(change(user))  # same session in the child task
        response = await app.test_client().post("/users")  # and in requests

Or, where the code that must share the session does not run inside one block
(a REPL whose statements run as tasks made from one ``contextvars.Context``, a
pytest fixture that yields), enter it in that context and close it later::

    scope = db.session.shared().enter()      # sync: current in this context
    await run_statements_as_tasks_of_this_context()
    await scope.aclose()                     # closes the session, ends the scope

The scope is a :mod:`contextvars` value: tasks created inside it (``create_task``,
``gather``, ``TaskGroup``, the requests and background tasks of Quart's test
client, async fixtures under pytest-asyncio 0.25+, which copy a fixture's
context to the test) share the session; tasks of another event loop, and code
outside the scope, keep their own per-task session. Its session is made on first
use, for the owner current then (the app whose context is active, else the
standalone ``db``).

Inside the scope the scope owns the session: ``db.session.remove()``, Quart's
teardown and leaving ``async with db.session()`` leave it open (objects stay
attached across requests); leaving the scope closes it (within
``close_timeout``), and a task still running with the scope in its context
gets its own per-task session from then on.

One session runs one operation at a time: a task that uses ``db.session`` while
another task is awaiting an operation on it (two requests at once,
``gather(db.session.execute(a), db.session.execute(b))``) gets
:class:`~async_sa.ConcurrentSessionUseError` instead of corrupting the session;
concurrent work takes its own session from ``db.sessionmaker()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import typing as t
from collections.abc import Coroutine

from async_sa import event_loops
from async_sa.errors import ConcurrentSessionUseError

if t.TYPE_CHECKING:
    from async_sa.scoping import TaskRegistry
    from async_sa.session import AsyncSession

_AS = t.TypeVar("_AS", bound="AsyncSession")
_T = t.TypeVar("_T")


class SharedSessionScope(t.Generic[_AS]):
    """While entered, ``db.session`` is one session in every task of its
    context (see :mod:`async_sa.shared_session`).

    Made by ``db.session.shared()``; an async context manager, or
    :meth:`enter` then :meth:`aclose`.
    """

    def __init__(self, registry: TaskRegistry[_AS]) -> None:
        self._registry = registry
        self._token: contextvars.Token[SharedSessionScope[t.Any] | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _AS | None = None
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether the scope was entered and not closed yet."""
        return self._loop is not None and not self._closed

    def enter(self) -> SharedSessionScope[_AS]:
        """Make this scope current in the calling context and in the tasks
        created from it from now on; it applies to tasks of the running loop.

        :raises RuntimeError: no running event loop, or entered already.
        """
        if self._loop is not None:
            raise RuntimeError(
                "This shared session scope was entered already: make a new one "
                "with db.session.shared()."
            )
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "db.session.shared() needs a running event loop: enter it from "
                "async code."
            ) from None
        self._token = self._registry.shared.set(self)
        self._registry.open_scopes += 1
        event_loops.close_sessions_at_loop_end(self)
        return self

    async def aclose(self) -> None:
        """End the scope everywhere and close its session (rolling back what
        was not committed), once no other task is awaiting an operation on it,
        within ``close_timeout``. Cancelling the caller does not interrupt it."""
        session = self.end()
        if session is not None:
            await session.close()

    def end(self) -> _AS | None:
        """End the scope everywhere and hand its session (if it was made) to
        the caller, who closes it; for :meth:`aclose` and callers that must do
        something first (the test isolation's rollback)."""
        token, self._token = self._token, None
        if token is not None:
            try:
                self._registry.shared.reset(token)
            except ValueError:
                pass  # ended in another context than it was entered in
        if self._loop is not None and not self._closed:
            self._registry.open_scopes -= 1
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            session._async_sa_scope = None
        return session

    async def __aenter__(self) -> SharedSessionScope[_AS]:
        return self.enter()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def applies_to(self, task: asyncio.Task[t.Any] | None) -> bool:
        """Whether ``task`` (in whose context the scope is) shares the session:
        the scope is open and ``task`` runs in the scope's loop."""
        return not self._closed and task is not None and task.get_loop() is self._loop

    def has_session(self) -> bool:
        """Whether the shared session was made (it is, on first use)."""
        return self._session is not None

    def session(self) -> _AS | None:
        """The shared session for the calling task, made on first use; ``None``
        when the scope does not apply to it (see :meth:`applies_to`).

        :raises ConcurrentSessionUseError: another task is awaiting an operation
            on the session.
        """
        task = asyncio.current_task()
        if not self.applies_to(task):
            return None
        session = self._session
        if session is None:
            session = self._session = self._registry.createfunc()
            session._async_sa_scope = self
            session._async_sa_users = []
        elif session._async_sa_users:
            _check_alone(session._async_sa_users, task)
        return session

    async def wait_closed(self) -> None:
        """At the end of the scope's loop (:func:`asyncio.run`), close its
        session if the scope was never left."""
        if self._loop is asyncio.get_running_loop():
            await self.aclose()


async def one_task_at_a_time(
    users: list[asyncio.Task[t.Any] | None], operation: Coroutine[t.Any, t.Any, _T]
) -> _T:
    """Await ``operation``, an operation on a shared scope's session, as the
    only task awaiting one; ``users`` are those tasks (the session's
    ``_async_sa_users``).

    :raises ConcurrentSessionUseError: another task is awaiting one.
    """
    task = asyncio.current_task()
    try:
        _check_alone(users, task)
    except ConcurrentSessionUseError:
        operation.close()
        raise
    users.append(task)
    try:
        return await operation
    finally:
        users.remove(task)


def _check_alone(
    users: list[asyncio.Task[t.Any] | None], task: asyncio.Task[t.Any] | None
) -> None:
    for user in users:
        if user is not task:
            raise ConcurrentSessionUseError(
                "db.session is shared by every task inside db.session.shared() "
                "(and db.test_isolation()), and this task used it while "
                f"{_name(user)} was awaiting an operation on it: a session "
                "runs one operation at a time. Await one before starting the "
                "other, or give the concurrent work its own session: "
                "'async with db.sessionmaker() as session: ...'."
            )


def _name(task: asyncio.Task[t.Any] | None) -> str:
    return "another task" if task is None else f"task {task.get_name()!r}"
