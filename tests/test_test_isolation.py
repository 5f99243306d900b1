"""db.test_isolation(): what a test writes, by any task and through any bind, is
rolled back at exit, while commits, rollbacks and savepoints behave as in
production inside."""

from __future__ import annotations

import asyncio
import typing as t

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa
from async_sa import signals
from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import count
from tests.conftest import MakeDb
from tests.conftest import todo_model


@pytest.fixture
async def todo(db: SQLAlchemy) -> type[t.Any]:
    """The Todo model, its table created."""
    model = todo_model(db)
    await db.create_all()
    return model


async def test_commits_of_every_task_and_session_are_rolled_back_at_exit(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """The test's, a child task's and an explicit session's commits are seen
    inside and gone after; nothing stays checked out."""

    async def in_child() -> None:
        db.session.add(todo(title="child"))
        await db.session.commit()

    async with db.test_isolation():
        db.session.add(todo(title="test"))
        await db.session.commit()
        await asyncio.create_task(in_child())
        async with db.sessionmaker() as session:
            session.add(todo(title="explicit"))
            await session.commit()
            assert await session.scalar(sa.select(sa.func.count(todo.id))) == 3
        titles = await db.session.scalars(sa.select(todo.title).order_by(todo.id))
        assert titles.all() == ["test", "child", "explicit"]
    assert checked_out(db) == 0
    assert await count(db, todo) == 0


async def test_commits_rollbacks_savepoints_and_signals_behave_as_in_production(
    make_db: MakeDb,
) -> None:
    """Inside: a rollback undoes only what followed the last commit, a
    rolled-back savepoint only its own part, and models_committed reports
    each commit's changes."""
    db = make_db(track_modifications=True)
    todo = todo_model(db)
    await db.create_all()
    seen: list[list[str]] = []

    def receiver(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        seen.append([f"{item.title}:{operation}" for item, operation in changes])

    with signals.models_committed.connected_to(receiver):
        async with db.test_isolation():
            db.session.add(todo(title="committed"))
            await db.session.commit()
            db.session.add(todo(title="rolled back"))
            await db.session.flush()
            await db.session.rollback()
            async with db.session.begin_nested():
                db.session.add(todo(title="kept savepoint"))
            savepoint = await db.session.begin_nested()
            db.session.add(todo(title="discarded savepoint"))
            await savepoint.rollback()
            await db.session.commit()
            titles = await db.session.scalars(sa.select(todo.title).order_by(todo.id))
            assert titles.all() == ["committed", "kept savepoint"]
    assert seen == [["committed:insert"], ["kept savepoint:insert"]]
    assert await count(db, todo) == 0


async def test_several_binds_are_all_rolled_back(
    backend: Backend, new_db: t.Callable[..., SQLAlchemy], tmp_path: t.Any
) -> None:
    """Writes through the default engine and a bind are both undone."""
    db = new_db(
        binds={None: backend.bind(), "audit": f"sqlite:///{tmp_path / 'audit.db'}"}
    )
    todo = todo_model(db)

    class Entry(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "audit"
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    async with db.test_isolation():
        db.session.add_all([todo(title="main"), Entry()])
        await db.session.commit()
        assert await db.session.scalar(sa.select(sa.func.count(Entry.id))) == 1
    assert await count(db, todo) == 0
    assert await count(db, Entry) == 0
    assert checked_out(db) == 0


async def test_an_error_inside_still_rolls_back_and_returns_connections(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """An exception escaping the block: everything is rolled back, 0 checked out."""
    with pytest.raises(ValueError, match="the test failed"):
        async with db.test_isolation():
            db.session.add(todo(title="a"))
            await db.session.commit()
            raise ValueError("the test failed")
    assert checked_out(db) == 0
    assert await count(db, todo) == 0


async def test_a_test_cut_by_a_timeout_still_rolls_back(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """A test body cancelled inside the block (by wait_for's timeout): rolled
    back, nothing checked out."""

    async def body() -> None:
        async with db.test_isolation():
            db.session.add(todo(title="a"))
            await db.session.commit()
            await asyncio.sleep(10)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(body(), 0.2)
    assert checked_out(db) == 0
    assert await count(db, todo) == 0


async def test_each_isolation_starts_from_the_same_data(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """Two isolations in a row: the second does not see the first's rows."""
    for _ in range(2):
        async with db.test_isolation():
            assert await db.session.scalar(sa.select(sa.func.count(todo.id))) == 0
            db.session.add(todo(title="a"))
            await db.session.commit()


async def test_nesting_is_refused_with_the_alternative(db: SQLAlchemy) -> None:
    """A second isolation of the same owner inside the first fails clearly."""
    async with db.test_isolation():
        with pytest.raises(RuntimeError, match="do not nest.*begin_nested"):
            async with db.test_isolation():
                pass
    assert checked_out(db) == 0


def test_outside_a_running_loop_says_why(db: SQLAlchemy) -> None:
    """Made without a running loop: an error saying to use it in async code."""
    with pytest.raises(RuntimeError, match="running event loop"):
        db.test_isolation()


async def test_a_plain_with_says_to_use_async_with(db: SQLAlchemy) -> None:
    """``with db.test_isolation()`` (no ``async``) fails naming the fix."""
    with pytest.raises(TypeError, match="async with db.test_isolation"):
        with db.test_isolation():
            pass


async def test_without_a_database_the_error_names_the_config(
    new_db: t.Callable[..., SQLAlchemy],
) -> None:
    """A db with no URL: the configuration error, before any connection."""
    with pytest.raises(RuntimeError, match="No database is configured"):
        async with new_db().test_isolation():
            pass


class RoundTrips:
    """Counts what a connection of ``engine`` sends: statements (cursor
    executes, SAVEPOINT and RELEASE included) and transaction commands."""

    def __init__(self, db: SQLAlchemy) -> None:
        self.sent: list[str] = []
        engine = db.engine.sync_engine
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        for command in ("begin", "commit", "rollback"):
            sa.event.listen(engine, command, self._command(command.upper()))

    def _statement(self, *args: t.Any) -> None:
        self.sent.append(str(args[2]).split()[0].upper())

    def _command(self, name: str) -> t.Callable[..., None]:
        return lambda *args: self.sent.append(name)


async def _a_test_body(db: SQLAlchemy, todo: type[t.Any]) -> None:
    """What a typical test does: write and commit, then read back."""
    db.session.add(todo(title="a"))
    await db.session.commit()
    assert await db.session.scalar(sa.select(sa.func.count(todo.id))) == 1


async def test_the_isolation_costs_one_round_trip_per_test_and_engine(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """The same test body, outside then inside the isolation: the sessions'
    BEGIN/COMMIT/ROLLBACK become SAVEPOINT/RELEASE/ROLLBACK TO one for one; the
    isolation adds its outer BEGIN, and its outer ROLLBACK replaces the last
    session's (SQLAlchemy's begin event on SQLite sends nothing: the explicit
    BEGIN is the one counted there)."""
    trips = RoundTrips(db)
    await _a_test_body(db, todo)
    await db.session.remove()
    plain = list(trips.sent)
    async with db.sessionmaker() as session:
        await session.execute(sa.delete(todo))
        await session.commit()
    trips.sent = []
    async with db.test_isolation():
        await _a_test_body(db, todo)
    isolated = trips.sent
    print(f"\nplain {len(plain)}: {plain}\nisolated {len(isolated)}: {isolated}")
    sent = [command for command in isolated if command != "BEGIN"]
    assert sent == ["SAVEPOINT", "INSERT", "RELEASE", "SAVEPOINT", "SELECT", "ROLLBACK"]
    assert len(plain) == 6
    assert isolated.count("BEGIN") == (2 if db.engine.dialect.name == "sqlite" else 1)


async def test_a_statement_cancelled_inside_still_rolls_everything_back(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """Statements cut by cancellation at successive points inside the block:
    the exit still rolls back what was committed and returns the connection."""
    for delay in (0, 0.001, 0.005):
        async with db.test_isolation():
            db.session.add(todo(title="committed"))
            await db.session.commit()
            statement = asyncio.create_task(
                db.session.execute(sa.select(todo).where(todo.title != ""))
            )
            await asyncio.sleep(delay)
            statement.cancel()
            await asyncio.gather(statement, return_exceptions=True)
        assert checked_out(db) == 0
        assert await count(db, todo) == 0


async def test_sessions_committing_concurrently_fail_clearly(
    db: SQLAlchemy, todo: type[t.Any]
) -> None:
    """Two sessions' transactions interleaved on the isolation's connection:
    the first to end while the other's later savepoint is open gets
    ConcurrentSessionUseError (not the database's "no such savepoint"); the
    isolation still rolls everything back and returns its connections."""

    async def add(title: str) -> None:
        async with db.sessionmaker() as session:
            session.add(todo(title=title))
            await session.flush()
            await asyncio.sleep(0.01)
            await session.commit()

    async with db.test_isolation():
        results = await asyncio.gather(add("a"), add("b"), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], async_sa.ConcurrentSessionUseError)
        assert "one connection" in str(errors[0])
    assert checked_out(db) == 0
    assert await count(db, todo) == 0
