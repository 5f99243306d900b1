"""Task ownership: a db.session call acts on its caller's session wherever it is
awaited, and a session is not closed under a task still awaiting it."""

from __future__ import annotations

import asyncio
import inspect
import sys
import typing as t
import uuid
from collections.abc import Awaitable
from collections.abc import Callable

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async

import async_sa
from async_sa import signals
from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import count
from tests.conftest import MakeDb
from tests.conftest import todo_model

_T = t.TypeVar("_T")
Wrapper = Callable[[Awaitable[t.Any]], Awaitable[t.Any]]
OWNERS = 100
SETTLE_SECONDS = 30


async def in_wait_for(awaitable: Awaitable[_T]) -> _T:
    return await asyncio.wait_for(awaitable, 5)


async def in_shield(awaitable: Awaitable[_T]) -> _T:
    return await asyncio.shield(awaitable)


async def in_gather(awaitable: Awaitable[_T]) -> _T:
    (result,) = await asyncio.gather(awaitable)
    return result


async def in_task(awaitable: t.Coroutine[t.Any, t.Any, _T]) -> _T:
    return await asyncio.create_task(awaitable)


async def in_task_group(awaitable: t.Coroutine[t.Any, t.Any, _T]) -> _T:
    async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
        task = group.create_task(awaitable)
    return t.cast(_T, task.result())


WRAPPERS: list[t.Any] = [
    pytest.param(in_wait_for, id="wait_for"),
    pytest.param(in_shield, id="shield"),
    pytest.param(in_gather, id="gather"),
    pytest.param(in_task, id="create_task"),
    pytest.param(
        in_task_group,
        id="TaskGroup",
        marks=pytest.mark.skipif(
            sys.version_info < (3, 11), reason="asyncio.TaskGroup is 3.11+"
        ),
    ),
]


@pytest.fixture(params=WRAPPERS)
def wrapper(request: pytest.FixtureRequest) -> Wrapper:
    """An asyncio wrapper that awaits a coroutine in a task of its own (on
    Python 3.11, wait_for too)."""
    return t.cast(Wrapper, request.param)


async def test_commit_through_a_wrapper_stores_the_callers_rows(
    make_db: MakeDb, wrapper: Wrapper
) -> None:
    """The caller's changes are committed and signalled, from the caller's
    session; no other session is made or committed."""
    db = make_db(track_modifications=True)
    Todo = todo_model(db)
    await db.create_all()
    sent: list[tuple[t.Any, list[tuple[t.Any, str]]]] = []

    def receiver(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        sent.append((sender, changes))

    todo = Todo(title="wrapped")
    db.session.add(todo)
    with signals.models_committed.connected_to(receiver):
        await wrapper(db.session.commit())
    assert await count(db, Todo) == 1
    assert sent == [(db, [(todo, "insert")])]
    assert not db.session().new


async def test_flush_and_execute_through_a_wrapper_join_the_callers_transaction(
    db: SQLAlchemy, wrapper: Wrapper
) -> None:
    """A wrapped flush and a wrapped insert run in the caller's transaction, which
    the caller then commits or rolls back."""
    Todo = todo_model(db)
    await db.create_all()
    todo = Todo(title="flushed")
    db.session.add(todo)
    await wrapper(db.session.flush())
    assert todo.id is not None
    assert todo in db.session() and not db.session().new
    await wrapper(db.session.execute(sa.insert(Todo).values(title="core")))
    assert db.session.in_transaction()
    await db.session.commit()
    assert await count(db, Todo) == 2
    await wrapper(db.session.execute(sa.insert(Todo).values(title="dropped")))
    await wrapper(db.session.rollback())
    assert not db.session.in_transaction()
    assert await count(db, Todo) == 2


async def test_reads_through_a_wrapper_see_the_callers_objects(
    db: SQLAlchemy, wrapper: Wrapper
) -> None:
    """get, scalar, scalars, execute and run_sync, wrapped, read the caller's
    uncommitted object from the caller's identity map."""
    Todo = todo_model(db)
    await db.create_all()
    todo = Todo(title="mine")
    db.session.add(todo)
    await db.session.flush()
    query = sa.select(Todo).where(Todo.title == "mine")
    assert await wrapper(db.session.get(Todo, todo.id)) is todo
    assert await wrapper(db.session.get_one(Todo, todo.id)) is todo
    assert await wrapper(db.session.scalar(query)) is todo
    assert (await wrapper(db.session.scalars(query))).all() == [todo]
    assert (await wrapper(db.session.execute(query))).scalar_one() is todo
    sync_session = db.session().sync_session
    assert await wrapper(db.session.run_sync(lambda session: session)) is sync_session
    await db.session.rollback()


async def test_remove_through_a_wrapper_closes_the_callers_session(
    db: SQLAlchemy, wrapper: Wrapper
) -> None:
    """A wrapped remove() rolls back and unregisters the caller's session."""
    Todo = todo_model(db)
    await db.create_all()
    session = db.session()
    db.session.add(Todo(title="uncommitted"))
    await db.session.flush()
    await wrapper(db.session.remove())
    assert db.session() is not session
    assert not session.in_transaction()
    assert await count(db, Todo) == 0


class Recorder:
    """Stands in for a task's session: records each method called on it, with
    the task it was called from and its arguments, at the moment of the call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, asyncio.Task[t.Any] | None, tuple[t.Any, ...]]]
        self.calls = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        def method(*args: t.Any) -> None:
            self.calls.append((name, asyncio.current_task(), args))

        return method


def awaitable_proxy_methods() -> list[str]:
    """Every awaitable AsyncSession method async_scoped_session proxies, in the
    installed SQLAlchemy, and run_sync."""
    names = [
        name
        for name, value in vars(sa_async.async_scoped_session).items()
        if inspect.iscoroutinefunction(value) and name != "remove"
    ]
    assert {"commit", "execute", "get", "scalar", "stream", "close"} <= set(names)
    return sorted([*names, "run_sync"])


def required_arguments(name: str) -> tuple[object, ...]:
    """A placeholder for each required positional parameter of the method."""
    parameters = inspect.signature(getattr(sa_async.AsyncSession, name)).parameters
    return tuple(
        object()
        for parameter in list(parameters.values())[1:]
        if parameter.default is parameter.empty
        and parameter.kind
        in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    )


@pytest.mark.parametrize("name", awaitable_proxy_methods())
async def test_every_awaitable_proxy_method_finds_the_session_when_called(
    name: str,
) -> None:
    """The session is looked up in the calling task when the method is called,
    not when the awaitable it returns starts running."""
    db = SQLAlchemy(url="sqlite://")
    recorder = Recorder()
    task = asyncio.current_task()
    assert task is not None
    arguments = required_arguments(name)
    db.session.registry.registry[task] = t.cast(async_sa.AsyncSession, recorder)
    returned = None
    try:
        returned = getattr(db.session, name)(*arguments)
        assert recorder.calls == [(name, task, arguments)]
    finally:
        db.session.registry.registry.pop(task)
        if inspect.iscoroutine(returned):
            returned.close()
        await db.dispose()


def named_backend(backend: Backend) -> tuple[dict[str, t.Any], str]:
    """The backend's engine options, with a pool of 10 connections that fails
    fast when exhausted, tagged with a name of their own, and that name."""
    application_name = f"async_sa_{uuid.uuid4().hex[:12]}"
    options = backend.tagged(
        application_name, pool_size=10, max_overflow=0, pool_timeout=10
    )
    return options, application_name


async def test_shielded_commits_outlive_their_cancelled_owners(
    backend: Backend, make_db: MakeDb, caplog: pytest.LogCaptureFixture
) -> None:
    """100 tasks shield their session's commit and are cancelled while it runs:
    every commit is stored, then every session closed; no connection stays
    checked out or idle in transaction, and nothing is logged."""
    options, application_name = named_backend(backend)
    db = make_db(engine_options=options)
    Todo = todo_model(db)
    await db.create_all()
    committing = asyncio.Semaphore(0)

    async def owner(number: int) -> None:
        session = db.session()
        session.add(Todo(id=number))
        sa.event.listen(
            session.sync_session, "before_commit", lambda _: committing.release()
        )
        await asyncio.shield(session.commit())

    try:
        owners = [asyncio.create_task(owner(number)) for number in range(1, OWNERS + 1)]
        for _ in owners:
            await committing.acquire()
        for task in owners:
            task.cancel()
        await asyncio.gather(*owners, return_exceptions=True)
        await asyncio.wait_for(db.session.registry.wait_closed(), SETTLE_SECONDS)
        stored = await count(db, Todo)
        checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
        idle_in_transaction = await backend.count_connections(
            application_name, "idle in transaction"
        )
        assert (stored, checked_out, idle_in_transaction) == (OWNERS, 0, 0)
        assert caplog.records == []
    finally:
        # Ours only, by name: a lost session's connection holds locks.
        await backend.kill_connections(application_name)


async def test_remove_waits_for_another_tasks_commit(db: SQLAlchemy) -> None:
    """remove() while another task commits the session: the commit finishes and
    is stored, then the session is closed."""
    Todo = todo_model(db)
    await db.create_all()
    session = db.session()
    session.add(Todo(title="committed elsewhere"))
    committing = asyncio.Event()
    sa.event.listen(session.sync_session, "before_commit", lambda _: committing.set())
    commit = asyncio.create_task(session.commit())
    await committing.wait()
    await db.session.remove()
    assert commit.done()
    await commit
    assert db.session() is not session
    assert not session.in_transaction()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await count(db, Todo) == 1


async def test_async_with_exit_waits_for_another_tasks_commit(db: SQLAlchemy) -> None:
    """Leaving ``async with db.session()`` while a task commits the session: the
    commit is stored, then the session is closed and unregistered."""
    Todo = todo_model(db)
    await db.create_all()
    committing = asyncio.Event()
    async with db.session() as session:
        session.add(Todo(title="committed elsewhere"))
        sa.event.listen(
            session.sync_session, "before_commit", lambda _: committing.set()
        )
        commit = asyncio.create_task(session.commit())
        await committing.wait()
    assert commit.done()
    await commit
    assert db.session() is not session
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await count(db, Todo) == 1


async def test_owner_cleanup_waits_for_a_transaction_block(db: SQLAlchemy) -> None:
    """The owner ends while another task's ``async with session.begin()`` block
    commits: the block's commit is stored, then the session is closed."""
    Todo = todo_model(db)
    await db.create_all()
    committing = asyncio.Event()
    blocks: list[asyncio.Task[None]] = []

    async def in_block(session: async_sa.AsyncSession) -> None:
        async with session.begin():
            session.add(Todo(title="block"))
            sa.event.listen(
                session.sync_session, "before_commit", lambda _: committing.set()
            )

    async def owner() -> None:
        blocks.append(asyncio.create_task(in_block(db.session())))
        await committing.wait()

    await asyncio.create_task(owner())
    await db.session.registry.wait_closed()
    await blocks[0]
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await count(db, Todo) == 1
