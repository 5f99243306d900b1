"""db.session.shared(): one session for every task of a block, closed at its end;
outside it, task scoping is unchanged."""

from __future__ import annotations

import asyncio
import contextvars
import typing as t

import pytest
import sqlalchemy as sa

import async_sa
from async_sa import signals
from async_sa import SQLAlchemy
from tests.conftest import checked_out
from tests.conftest import count
from tests.conftest import MakeDb
from tests.conftest import todo_model
from tests.test_task_ownership import WRAPPERS


@pytest.fixture
async def todo(db: SQLAlchemy) -> type[t.Any]:
    """The Todo model, its table created."""
    model = todo_model(db)
    await db.create_all()
    return model


CHILDREN = [p for p in WRAPPERS if p.id in ("create_task", "gather", "TaskGroup")]
"""The wrappers that run a coroutine in a child task of the caller."""


@pytest.mark.parametrize("child", CHILDREN)
async def test_an_object_made_in_one_task_is_changed_and_committed_in_another(
    db: SQLAlchemy,
    todo: type[t.Any],
    child: t.Callable[[t.Coroutine[t.Any, t.Any, t.Any]], t.Awaitable[t.Any]],
) -> None:
    """Inside the scope, child tasks share the session: an object made in one
    stays attached in the other, and its change is stored."""

    async def make() -> t.Any:
        item = todo(title="made")
        db.session.add(item)
        await db.session.commit()
        return item

    async def change(item: t.Any) -> None:
        assert item in db.session
        item.title = "changed"
        await db.session.commit()

    async with db.session.shared():
        item = await child(make())
        await child(change(item))
        assert item in db.session
    async with db.sessionmaker() as session:
        assert await session.scalar(sa.select(todo.title)) == "changed"
    assert checked_out(db) == 0


async def test_outside_the_scope_each_task_keeps_its_own_session(
    db: SQLAlchemy,
) -> None:
    """Before, after and beside the scope, task scoping is unchanged."""
    before = db.session()
    async with db.session.shared():
        shared = db.session()
        assert shared is not before
        assert await asyncio.create_task(_current_session(db)) is shared
    assert db.session() is before
    assert await asyncio.create_task(_current_session(db)) is not shared
    assert db.session.registry.open_scopes == 0
    await db.session.remove()


async def _current_session(db: SQLAlchemy) -> async_sa.AsyncSession:
    return db.session()


async def test_a_task_outside_the_scopes_context_is_not_shared(db: SQLAlchemy) -> None:
    """A task made before the scope was entered keeps its own session."""
    started = asyncio.Event()
    go_on = asyncio.Event()

    async def outsider() -> async_sa.AsyncSession:
        started.set()
        await go_on.wait()
        return db.session()

    task = asyncio.create_task(outsider())
    await started.wait()
    async with db.session.shared():
        go_on.set()
        assert await task is not db.session()


async def test_two_tasks_awaiting_operations_at_once_fail_clearly(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """gather() of two operations on the shared session: the second fails with
    an error naming db.sessionmaker(); the first is unharmed, the session usable."""
    async with db.session.shared():
        db.session.add(todo(title="a"))
        slow = sa.select(todo.id)
        results = await asyncio.gather(
            db.session.execute(slow),
            db.session.execute(slow),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], async_sa.ConcurrentSessionUseError)
        assert "db.sessionmaker()" in str(errors[0])
        await db.session.commit()
    assert await count(db, todo) == 1
    assert checked_out(db) == 0


async def test_using_the_session_while_another_task_awaits_it_fails(
    make_db: MakeDb,
) -> None:
    """A sync use (``db.session.add``) from a second task while a commit is in
    flight fails at once, before touching the session; the commit is stored."""
    db = make_db(track_modifications=True)
    todo = todo_model(db)
    await db.create_all()
    committing = asyncio.Event()
    release = asyncio.Event()

    async def receiver(sender: t.Any, changes: t.Any) -> None:
        committing.set()
        await release.wait()

    async def intruder() -> None:
        db.session.add(todo(title="intruder"))

    with signals.models_committed.connected_to(receiver):
        async with db.session.shared():
            db.session.add(todo(title="committed"))
            commit = asyncio.create_task(_commit(db))
            await committing.wait()
            with pytest.raises(
                async_sa.ConcurrentSessionUseError, match="sessionmaker"
            ):
                await asyncio.create_task(intruder())
            release.set()
            await commit
            assert not db.session.new
    assert await count(db, todo) == 1
    assert checked_out(db) == 0


async def test_remove_and_async_with_leave_the_shared_session_open(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """remove() and leaving ``async with db.session()`` inside the scope keep
    the shared session and its objects; the scope's end closes it."""
    async with db.session.shared():
        item = todo(title="kept")
        db.session.add(item)
        await db.session.commit()
        await db.session.remove()
        async with db.session() as session:
            assert item in session
        assert item in db.session
        shared = db.session()
    assert item not in shared
    assert checked_out(db) == 0


async def test_the_scopes_end_rolls_back_and_returns_the_connection(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """Uncommitted work is rolled back when the scope ends; nothing stays
    checked out, even when the block raised."""
    with pytest.raises(ValueError, match="boom"):
        async with db.session.shared():
            db.session.add(todo(title="lost"))
            await db.session.flush()
            assert checked_out(db) == 1
            raise ValueError("boom")
    assert checked_out(db) == 0
    assert await count(db, todo) == 0


async def test_a_task_still_running_after_the_scope_gets_its_own_session(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """A task that outlives the scope (the scope still in its context) falls
    back to its own session, closed when it ends: nothing leaks."""
    go_on = asyncio.Event()

    async def late() -> async_sa.AsyncSession:
        await go_on.wait()
        db.session.add(todo(title="late"))
        await db.session.commit()
        return db.session()

    async with db.session.shared():
        shared = db.session()
        task = asyncio.create_task(late())
    go_on.set()
    assert await task is not shared
    await db.session.registry.wait_closed()
    assert checked_out(db) == 0
    assert await count(db, todo) == 1


async def test_cancelling_a_task_inside_the_scope_leaks_nothing(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """A task cancelled while awaiting the shared session leaves it usable
    after a rollback (as any session whose operation was cut), and nothing
    checked out once the scope ends."""
    async with db.session.shared():
        db.session.add(todo(title="a"))
        await db.session.commit()
        for _ in range(5):
            task = asyncio.create_task(db.session.execute(sa.select(todo)))
            await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await db.session.rollback()
        assert (await db.session.scalars(sa.select(todo.title))).all() == ["a"]
    assert checked_out(db) == 0


async def test_cancelling_the_scopes_end_still_closes_the_session(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """A cancellation received while the scope closes its session is raised
    once the close is done: the connection is back in the pool."""
    scope = db.session.shared()

    async def use() -> None:
        async with scope:
            db.session.add(todo(title="a"))
            await db.session.flush()
            asyncio.current_task().cancel()  # type: ignore[union-attr]

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(use())
    assert checked_out(db) == 0
    assert await count(db, todo) == 0


async def test_the_scopes_end_waits_for_another_tasks_operation(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """The scope's end does not close the session under a task still awaiting
    a commit on it (a shielded commit, say): the commit is stored."""
    async with db.session.shared():
        db.session.add(todo(title="shielded"))
        commit = asyncio.ensure_future(asyncio.shield(db.session.commit()))
        await asyncio.sleep(0)
    await commit
    assert await count(db, todo) == 1
    assert checked_out(db) == 0


async def test_enter_and_aclose_share_the_session_without_a_block(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """``enter()`` makes the scope current in the calling context (as a shell
    does), ``aclose()`` ends it everywhere and closes the session."""
    scope = db.session.shared().enter()
    assert scope.active
    item = todo(title="shell")
    db.session.add(item)
    await asyncio.create_task(_commit(db))
    assert item.id is not None
    await scope.aclose()
    assert not scope.active
    assert item not in db.session
    await db.session.remove()
    assert checked_out(db) == 0


async def _commit(db: SQLAlchemy) -> None:
    await db.session.commit()


async def test_entering_a_scope_twice_says_to_make_a_new_one(db: SQLAlchemy) -> None:
    """A scope is entered once."""
    async with db.session.shared() as scope:
        with pytest.raises(RuntimeError, match=r"db\.session\.shared\(\)"):
            scope.enter()


def test_entering_a_scope_outside_a_loop_says_why(db: SQLAlchemy) -> None:
    """Without a running loop, entering fails saying so."""
    with pytest.raises(RuntimeError, match="running event loop"):
        db.session.shared().enter()


def test_a_scope_never_left_is_closed_when_its_loop_ends(make_db: MakeDb) -> None:
    """asyncio.run ending inside an open scope closes its session first."""
    db = make_db()
    todo = todo_model(db)

    async def main() -> None:
        await db.create_all()
        db.session.shared().enter()
        db.session.add(todo(title="open"))
        await db.session.flush()
        assert checked_out(db) == 1

    asyncio.run(main())
    assert checked_out(db) == 0

    async def rows() -> int:
        n = await count(db, todo)
        await db.dispose()
        return n

    assert asyncio.run(rows()) == 0


async def test_another_event_loop_inside_the_scope_keeps_task_scoping(
    make_db: MakeDb,
) -> None:
    """asyncio.run in a thread copies the scope's context; its tasks still get
    their own sessions (the scope belongs to its loop)."""
    db = make_db()
    todo = todo_model(db)
    await db.create_all()

    async def other_loop() -> int:
        db.session.add(todo(title="other loop"))
        await db.session.commit()
        await db.session.remove()
        await db.dispose()
        return 1

    async with db.session.shared():
        shared = db.session()
        assert await asyncio.to_thread(asyncio.run, other_loop()) == 1
        assert not shared.in_transaction()
    assert await count(db, todo) == 1


async def test_statements_run_as_tasks_of_one_context_share_the_session(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """As an asyncio REPL runs each statement: a task made from one Context
    in which the scope was entered; an object of one statement stays attached
    in the next."""
    context = contextvars.copy_context()
    scope = context.run(db.session.shared().enter)
    loop = asyncio.get_running_loop()

    async def run_statement(
        statement: t.Callable[[], t.Coroutine[t.Any, t.Any, t.Any]],
    ) -> t.Any:
        made: asyncio.Future[asyncio.Task[t.Any]] = loop.create_future()
        loop.call_soon(
            lambda: made.set_result(loop.create_task(statement())), context=context
        )
        return await (await made)

    async def make() -> t.Any:
        item = todo(title="first statement")
        db.session.add(item)
        await db.session.commit()
        return item

    item = await run_statement(make)

    async def change() -> None:
        assert item in db.session
        item.title = "second statement"
        await db.session.commit()

    await run_statement(change)
    assert db.session() is not scope.session()
    await scope.aclose()
    assert checked_out(db) == 0
    async with db.sessionmaker() as session:
        assert await session.scalar(sa.select(todo.title)) == "second statement"
