"""db.session: one session per asyncio task, its lifecycle, and db.sessionmaker."""

from __future__ import annotations

import asyncio
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa
from async_sa import SQLAlchemy
from tests.conftest import count
from tests.conftest import MakeDb
from tests.conftest import todo_model


async def test_session_is_the_same_within_a_task(db: SQLAlchemy) -> None:
    """db.session() returns one session per task, an async_sa.AsyncSession."""
    session = db.session()
    assert db.session() is session
    assert isinstance(session, async_sa.AsyncSession)
    assert isinstance(session.sync_session, async_sa.Session)


async def test_each_task_and_gather_child_has_its_own_session(db: SQLAlchemy) -> None:
    """Two tasks never share a session; gather children each get their own."""

    async def session_of_child() -> async_sa.AsyncSession:
        first = db.session()
        await asyncio.sleep(0)
        assert db.session() is first
        return first

    children = await asyncio.gather(*(session_of_child() for _ in range(5)))
    assert len({id(child) for child in children}) == 5
    assert db.session() not in children


async def test_proxy_methods_act_on_the_current_tasks_session(db: SQLAlchemy) -> None:
    """add/flush/execute/commit on db.session go to this task's session."""
    Todo = todo_model(db)
    await db.create_all()
    todo = Todo(title="proxy")
    db.session.add(todo)
    assert todo in db.session().new
    await db.session.flush()
    assert db.session.in_transaction()
    assert not db.session.in_nested_transaction()
    assert db.session.get_nested_transaction() is None
    assert await db.session.run_sync(lambda sync: sync.in_transaction())
    assert (await db.session.scalars(sa.select(Todo.title))).all() == ["proxy"]
    assert await db.session.scalar(sa.select(Todo.id)) == todo.id
    assert await db.session.get(Todo, todo.id) is todo
    await db.session.commit()
    assert await count(db, Todo) == 1


async def test_proxy_exposes_the_asyncsession_api(db: SQLAlchemy) -> None:
    """The whole AsyncSession API is reachable through db.session."""
    Todo = todo_model(db)
    await db.create_all()
    db.session.add_all([Todo(id=1), Todo(id=2)])
    await db.session.commit()
    todo = await db.session.get_one(Todo, 1)
    todo.title = "changed"
    assert db.session.is_modified(todo)
    assert todo in db.session.dirty
    await db.session.refresh(todo)
    assert todo.title == ""
    merged = await db.session.merge(Todo(id=3))
    await db.session.delete(await db.session.get_one(Todo, 2))
    await db.session.commit()
    assert merged.id == 3
    streamed = [
        row async for row in await db.session.stream_scalars(sa.select(Todo.id))
    ]
    assert sorted(streamed) == [1, 3]
    result = await db.session.stream(sa.select(Todo.id).order_by(Todo.id))
    assert [row.id async for row in result] == [1, 3]
    db.session.info["who"] = "me"
    assert db.session().info == {"who": "me"}
    db.session.expunge_all()
    assert not db.session().identity_map


async def test_async_with_session_closes_and_unregisters(db: SQLAlchemy) -> None:
    """Leaving async with db.session() rolls back and gives the task a fresh session."""
    Todo = todo_model(db)
    await db.create_all()
    async with db.session() as session:
        session.add(Todo(title="never committed"))
        await session.flush()
    assert db.session() is not session
    assert await count(db, Todo) == 0


async def test_async_with_session_exits_cleanly_when_cancelled(db: SQLAlchemy) -> None:
    """Cancelled inside async with db.session(): closed, unregistered, re-raised."""
    Todo = todo_model(db)
    await db.create_all()
    entered = asyncio.Event()

    async def work() -> None:
        async with db.session() as session:
            session.add(Todo(title="x"))
            await session.flush()
            entered.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert not db.session.registry.registry
    assert await count(db, Todo) == 0


async def test_begin_commits_on_success_and_rolls_back_on_error(db: SQLAlchemy) -> None:
    """async with db.session.begin() commits, or rolls back on an exception."""
    Todo = todo_model(db)
    await db.create_all()
    async with db.session.begin():
        db.session.add(Todo(title="kept"))
    with pytest.raises(ValueError, match="boom"):
        async with db.session.begin():
            db.session.add(Todo(title="dropped"))
            await db.session.flush()
            raise ValueError("boom")
    assert await count(db, Todo) == 1


async def test_remove_rolls_back_and_forgets(db: SQLAlchemy) -> None:
    """remove() closes (rolling back) and the next db.session() is new."""
    Todo = todo_model(db)
    await db.create_all()
    first = db.session()
    db.session.add(Todo(title="uncommitted"))
    await db.session.flush()
    await db.session.remove()
    assert db.session() is not first
    assert await count(db, Todo) == 0
    await db.session.remove()
    await db.session.remove()


async def test_many_remove_cycles_in_one_task_keep_no_callbacks(db: SQLAlchemy) -> None:
    """A long-lived task that opens and removes sessions does not accumulate state."""
    task = asyncio.current_task()
    assert task is not None
    for _ in range(50):
        db.session()
        await db.session.remove()
        async with db.session():
            pass
    assert not db.session.registry.registry
    assert len(task._callbacks) < 5


async def test_expire_on_commit_is_off_by_default(db: SQLAlchemy) -> None:
    """Attributes stay loaded after commit: no implicit IO (MissingGreenlet)."""
    Todo = todo_model(db)
    await db.create_all()
    todo = Todo(title="loaded")
    db.session.add(todo)
    await db.session.commit()
    assert todo.title == "loaded"
    assert not db.session().sync_session.expire_on_commit


async def test_session_options_override_defaults(make_db: MakeDb) -> None:
    """session_options reach the sessionmaker, custom classes included."""

    class CustomSync(async_sa.Session):
        pass

    class Custom(async_sa.AsyncSession):
        sync_session_class = CustomSync

    db = make_db(
        session_options={
            "expire_on_commit": True,
            "class_": Custom,
            "sync_session_class": CustomSync,
        }
    )
    session = db.session()
    assert type(session) is Custom
    assert type(session.sync_session) is CustomSync
    assert session.sync_session.expire_on_commit
    async with db.sessionmaker() as explicit:
        assert type(explicit) is Custom


async def test_sessionmaker_merges_call_info_into_the_configured_info(
    make_db: MakeDb,
) -> None:
    """``info`` given when making a session is merged into session_options'
    ``info`` (the call's keys win), as async_sessionmaker does; other call
    options replace the configured ones."""
    db = make_db(
        session_options={"info": {"app": "notes", "tier": "web"}, "autoflush": False}
    )
    async with db.sessionmaker(info={"tier": "worker"}, autoflush=True) as session:
        assert session.info == {"app": "notes", "tier": "worker"}
        assert session.sync_session.autoflush
    assert db.session().info == {"app": "notes", "tier": "web"}
    assert db.sessionmaker.kw["info"] == {"app": "notes", "tier": "web"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"class_": object}, r"'class_'\] must be a subclass of .*AsyncSession"),
        ({"class_": sa_orm.Session}, r"'class_'\] must be a subclass of"),
        ({"class_": "AsyncSession"}, r"'class_'\] must be a subclass of"),
        (
            {"sync_session_class": sa_async.AsyncSession},
            r"'sync_session_class'\] must be a subclass of sqlalchemy.orm.Session",
        ),
        ({"sync_session_class": lambda **kw: None}, "must be a subclass of"),
        ({"scopefunc": lambda: 1}, "scopefunc'] is not supported"),
    ],
)
def test_session_options_that_break_routing_are_refused(
    options: dict[str, t.Any], message: str
) -> None:
    """What is not a session class, or another scope, is refused with the fix."""
    with pytest.raises(TypeError, match=message):
        SQLAlchemy(url="sqlite://", session_options=options)


class PlainSync(sa_orm.Session):
    """A plain SQLAlchemy session subclass, as Flask-SQLAlchemy users have."""

    def __init__(self, **kwargs: t.Any) -> None:
        self.made_by_plain = True
        super().__init__(**kwargs)


class PlainAsync(sa_async.AsyncSession):
    """A plain SQLAlchemy async session subclass, naming its sync class."""

    sync_session_class = PlainSync

    def describe(self) -> str:
        return "plain"


@pytest.mark.parametrize(
    "options",
    [
        {"class_": PlainAsync, "sync_session_class": PlainSync},
        {"class_": PlainAsync},
    ],
    ids=["both given", "sync class from class_"],
)
async def test_plain_sqlalchemy_session_classes_are_composed_with_ours(
    make_db: MakeDb, options: dict[str, t.Any]
) -> None:
    """Plain AsyncSession / Session subclasses work: combined with ours first,
    so routing, signals and the cancellation-safe close stay; the combined
    class is made once per given class."""
    db = make_db(
        binds={"a": {"url": "sqlite://", "connect_args": {}}},
        session_options=options,
        track_modifications=True,
    )
    Todo = todo_model(db)

    class Post(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    session = db.session()
    assert isinstance(session, PlainAsync)
    assert type(session).__mro__[1] is async_sa.AsyncSession
    assert type(session).close is async_sa.AsyncSession.close
    assert session.describe() == "plain"
    sync = session.sync_session
    assert isinstance(sync, PlainSync) and isinstance(sync, async_sa.Session)
    assert type(sync).__mro__[1] is async_sa.Session
    assert sync.made_by_plain
    assert session.get_bind(Post) is db.engines["a"].sync_engine
    sent: list[t.Any] = []
    with async_sa.models_committed.connected_to(
        lambda sender, changes: sent.append(changes)
    ):
        session.add_all([Todo(title="x"), Post(id=1)])
        await session.commit()
    assert len(sent) == 1 and len(sent[0]) == 2
    assert await count(db, Todo) == 1
    async with db.sessionmaker() as explicit:
        assert type(explicit) is type(session)
    other = make_db(session_options=options)
    assert type(other.session()) is type(session)
    assert type(other.session().sync_session) is type(sync)


async def test_plain_base_classes_mean_ours(make_db: MakeDb) -> None:
    """The plain SQLAlchemy classes themselves stand for ours."""
    db = make_db(
        session_options={
            "class_": sa_async.AsyncSession,
            "sync_session_class": sa_orm.Session,
        }
    )
    assert type(db.session()) is async_sa.AsyncSession
    assert type(db.session().sync_session) is async_sa.Session


async def test_sessionmaker_sessions_are_unscoped_and_route(make_db: MakeDb) -> None:
    """db.sessionmaker() makes independent sessions with the same routing."""
    db = make_db(binds={"a": {"url": "sqlite://", "connect_args": {}}})

    class Post(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    async with db.sessionmaker() as one, db.sessionmaker() as two:
        assert one is not two
        assert one is not db.session()
        assert one.get_bind(Post) is db.engines["a"].sync_engine
    async with db.sessionmaker.begin() as session:
        session.add(Post(id=1))
    assert await count(db, Post) == 1
    assert len(db.session.registry.registry) == 1


def test_session_outside_event_loop_says_why() -> None:
    """Using db.session with no running loop raises RuntimeError explaining it."""
    db = SQLAlchemy(url="sqlite://")
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        db.session()
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        db.session.add(object())


async def test_session_from_a_bare_callback_says_why(db: SQLAlchemy) -> None:
    """A loop callback is not a task: the error says to use a task."""
    loop = asyncio.get_running_loop()
    failure: asyncio.Future[BaseException] = loop.create_future()

    def callback() -> None:
        try:
            db.session()
        except RuntimeError as error:
            failure.set_result(error)

    loop.call_soon(callback)
    assert "must be used from an asyncio task" in str(await failure)


async def test_concurrent_tasks_commit_independently(db: SQLAlchemy) -> None:
    """Many tasks writing at once: each one's rollback leaves the others' work."""
    Todo = todo_model(db)
    await db.create_all()

    async def write(number: int) -> None:
        db.session.add(Todo(id=number, title=str(number)))
        await db.session.flush()
        await asyncio.sleep(0)
        if number % 2:
            await db.session.rollback()
        else:
            await db.session.commit()

    await asyncio.gather(*(write(number) for number in range(1, 41)))
    assert await count(db, Todo) == 20
