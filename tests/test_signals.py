"""Commit signals: what is recorded, when it is sent, and what it costs when off."""

from __future__ import annotations

import asyncio
import dataclasses
import typing as t
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

import async_sa
from async_sa import signals
from async_sa import SQLAlchemy
from tests.conftest import Backend
from tests.conftest import MakeDb
from tests.conftest import todo_model

Changes = list[tuple[t.Any, str]]
_EVENTS = [
    "before_flush",
    "before_commit",
    "after_commit",
    "after_transaction_create",
    "after_transaction_end",
]


async def titles(db: SQLAlchemy, model: type[t.Any]) -> list[str]:
    """The stored titles, as another session sees them."""
    async with db.sessionmaker() as session:
        return sorted(await session.scalars(sa.select(model.title)))


def described(changes: Changes) -> list[tuple[str, str]]:
    """``changes`` as sorted ``(title, operation)`` pairs."""
    return sorted((instance.title, operation) for instance, operation in changes)


Described = list[tuple[str, str]]


@dataclasses.dataclass
class Sent:
    """Every send of both signals: its sender, and its changes described when sent
    (the instances change afterwards)."""

    before: list[tuple[t.Any, Described]] = dataclasses.field(default_factory=list)
    after: list[tuple[t.Any, Described]] = dataclasses.field(default_factory=list)

    def described(self) -> tuple[list[Described], list[Described]]:
        """The changes of every send, before and after."""
        return [c for _, c in self.before], [c for _, c in self.after]

    def senders(self) -> list[t.Any]:
        return [sender for sender, _ in self.before + self.after]

    def clear(self) -> None:
        self.before.clear()
        self.after.clear()


@pytest.fixture
def sent() -> Iterator[Sent]:
    """Records every send of both signals while the test runs."""
    record = Sent()

    def before(sender: t.Any, changes: Changes) -> None:
        record.before.append((sender, described(changes)))

    def after(sender: t.Any, changes: Changes) -> None:
        record.after.append((sender, described(changes)))

    with signals.before_models_committed.connected_to(before):
        with signals.models_committed.connected_to(after):
            yield record


@pytest.fixture
def tracked(make_db: MakeDb) -> SQLAlchemy:
    """A ``SQLAlchemy`` object with ``track_modifications=True``."""
    return make_db(track_modifications=True)


def test_signals_are_exported_and_documented() -> None:
    """Both signals live in async_sa.signals, are exported, and say what they send."""
    assert async_sa.before_models_committed is signals.before_models_committed
    assert async_sa.models_committed is signals.models_committed
    assert {"before_models_committed", "models_committed"} <= set(async_sa.__all__)
    for signal in (signals.before_models_committed, signals.models_committed):
        doc = " ".join((signal.__doc__ or "").split())
        for topic in ("sender", "changes", "exception", "another session"):
            assert topic in doc


async def test_insert_update_delete_are_reported_with_db_as_sender(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """Each commit sends both signals once, from db, with its operations."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    todo = Todo(title="a")
    tracked.session.add_all([todo, Todo(title="b")])
    await tracked.session.commit()
    todo.title = "c"
    await tracked.session.commit()
    await tracked.session.delete(todo)
    await tracked.session.commit()
    expected = [
        [("a", "insert"), ("b", "insert")],
        [("c", "update")],
        [("c", "delete")],
    ]
    assert sent.described() == (expected, expected)
    assert sent.senders() == [tracked] * 6


async def test_before_is_sent_before_the_commit_and_after_once_durable(
    tracked: SQLAlchemy,
) -> None:
    """before_models_committed precedes COMMIT (keys flushed); the other follows it."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    seen: list[t.Any] = []

    def before(sender: t.Any, changes: Changes) -> None:
        seen.append(("before", [instance.id for instance, _ in changes]))

    async def after(sender: t.Any, changes: Changes) -> None:
        seen.append(("after", await titles(tracked, Todo)))

    sa.event.listen(
        tracked.engine.sync_engine, "commit", lambda _: seen.append("COMMIT")
    )
    with signals.before_models_committed.connected_to(before):
        with signals.models_committed.connected_to(after):
            tracked.session.add(Todo(title="a"))
            await tracked.session.commit()
    assert seen == [("before", [1]), "COMMIT", ("after", ["a"])]


async def test_commit_without_changes_sends_nothing(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """No changes, or only no-op attribute sets: neither signal is sent."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    await tracked.session.commit()
    todo = Todo(title="a")
    tracked.session.add(todo)
    await tracked.session.commit()
    sent.clear()
    todo.title = "a"
    await tracked.session.commit()
    assert sent.described() == ([], [])


async def test_object_inserted_flushed_and_updated_is_one_insert(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """An insert that is flushed and then updated is reported once, as insert."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    todo = Todo(title="a")
    tracked.session.add(todo)
    await tracked.session.flush()
    todo.title = "b"
    await tracked.session.flush()
    todo.title = "c"
    await tracked.session.commit()
    assert sent.described() == ([[("c", "insert")]], [[("c", "insert")]])


async def test_object_inserted_and_deleted_in_one_transaction_is_not_reported(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """A row inserted and deleted before the commit never became durable."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    gone, kept = Todo(title="gone"), Todo(title="kept")
    tracked.session.add_all([gone, kept])
    await tracked.session.flush()
    await tracked.session.delete(gone)
    await tracked.session.commit()
    assert sent.described() == ([[("kept", "insert")]], [[("kept", "insert")]])


async def test_rollback_discards_recorded_changes(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """Flushed then rolled back: the next commit reports only its own changes."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    tracked.session.add(Todo(title="rolled back"))
    await tracked.session.flush()
    await tracked.session.rollback()
    tracked.session.add(Todo(title="committed"))
    await tracked.session.commit()
    assert sent.described() == (
        [[("committed", "insert")]],
        [[("committed", "insert")]],
    )


async def test_rolled_back_savepoint_discards_only_its_changes(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """A savepoint rollback drops what was recorded inside it; outer changes stay."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    kept = Todo(title="outer")
    tracked.session.add(kept)
    await tracked.session.flush()
    savepoint = await tracked.session.begin_nested()
    kept.title = "changed in savepoint"
    tracked.session.add(Todo(title="inner"))
    await tracked.session.flush()
    await savepoint.rollback()
    await tracked.session.commit()
    assert await titles(tracked, Todo) == ["outer"]
    assert sent.described() == ([[("outer", "insert")]], [[("outer", "insert")]])


async def test_released_savepoint_sends_nothing_and_commit_reports_it(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """Releasing a savepoint sends nothing; the outer commit reports its changes."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    tracked.session.add(Todo(title="outer"))
    async with tracked.session.begin_nested():
        tracked.session.add(Todo(title="released"))
    assert sent.described() == ([], [])
    await tracked.session.commit()
    expected = [[("outer", "insert"), ("released", "insert")]]
    assert sent.described() == (expected, expected)


async def test_savepoint_released_inside_a_rolled_back_one_is_discarded(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """A released inner savepoint's changes go when its outer savepoint rolls back."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    tracked.session.add(Todo(title="outer"))
    outer = await tracked.session.begin_nested()
    async with tracked.session.begin_nested():
        tracked.session.add(Todo(title="inner"))
    await outer.rollback()
    await tracked.session.commit()
    assert await titles(tracked, Todo) == ["outer"]
    assert sent.described() == ([[("outer", "insert")]], [[("outer", "insert")]])


@pytest.mark.parametrize("how", ["close", "remove", "async with"])
async def test_ending_a_session_discards_recorded_changes(
    tracked: SQLAlchemy, sent: Sent, how: str
) -> None:
    """close(), db.session.remove() and leaving async with drop recorded changes."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    if how == "async with":
        async with tracked.session() as session:
            session.add(Todo(title="dropped"))
            await session.flush()
    else:
        tracked.session.add(Todo(title="dropped"))
        await tracked.session.flush()
        await (tracked.session.close() if how == "close" else tracked.session.remove())
    tracked.session.add(Todo(title="committed"))
    await tracked.session.commit()
    assert sent.described() == (
        [[("committed", "insert")]],
        [[("committed", "insert")]],
    )


async def test_exception_in_before_receiver_aborts_the_commit(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """A before_models_committed receiver raising stops the commit: nothing stored."""
    Todo = todo_model(tracked)
    await tracked.create_all()

    def refuse(sender: t.Any, changes: Changes) -> None:
        raise ValueError("refused by receiver")

    with signals.before_models_committed.connected_to(refuse):
        with pytest.raises(ValueError, match="refused by receiver"):
            async with tracked.session.begin():
                tracked.session.add(Todo(title="refused"))
    assert sent.after == []
    assert await titles(tracked, Todo) == []


async def test_exception_in_after_receiver_propagates_once_durable(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """A models_committed receiver raising: stored, raised as ModelsCommittedError
    (saying the commit is durable), session still usable."""
    Todo = todo_model(tracked)
    await tracked.create_all()

    async def fail(sender: t.Any, changes: Changes) -> None:
        raise ValueError("receiver failed")

    with signals.models_committed.connected_to(fail):
        tracked.session.add(Todo(title="stored"))
        with pytest.raises(async_sa.ModelsCommittedError, match="durable") as info:
            await tracked.session.commit()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.errors == [info.value.__cause__]
    assert "receiver failed" in str(info.value.__cause__)
    assert await titles(tracked, Todo) == ["stored"]
    sent.clear()
    tracked.session.add(Todo(title="next"))
    await tracked.session.commit()
    assert sent.described() == ([[("next", "insert")]], [[("next", "insert")]])


async def test_every_after_receiver_runs_when_one_fails(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """The receivers after a failing one are still called (the data is stored
    anyway); every failure is in ``errors``, the first is the cause."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    called: list[str] = []

    def fail_first(sender: t.Any, changes: Changes) -> None:
        called.append("first")
        raise ValueError("first failed")

    async def fail_second(sender: t.Any, changes: Changes) -> None:
        called.append("second")
        raise KeyError("second failed")

    def succeed(sender: t.Any, changes: Changes) -> None:
        called.append("third")

    with (
        signals.models_committed.connected_to(fail_first),
        signals.models_committed.connected_to(fail_second),
        signals.models_committed.connected_to(succeed),
    ):
        async with tracked.sessionmaker() as session:
            session.add(Todo(title="stored"))
            with pytest.raises(async_sa.ModelsCommittedError) as info:
                await session.commit()
    assert sorted(called) == ["first", "second", "third"]
    assert sorted(type(e).__name__ for e in info.value.errors) == [
        "KeyError",
        "ValueError",
    ]
    assert info.value.__cause__ is info.value.errors[0]
    assert "2 models_committed receivers" in str(info.value)
    assert len(sent.after) == 1
    assert await titles(tracked, Todo) == ["stored"]


CommitStyle = Callable[[SQLAlchemy, t.Any], Awaitable[None]]


async def _commit(db: SQLAlchemy, instance: t.Any) -> None:
    db.session.add(instance)
    await db.session.commit()


async def _session_begin(db: SQLAlchemy, instance: t.Any) -> None:
    async with db.session.begin():
        db.session.add(instance)


async def _sessionmaker_begin(db: SQLAlchemy, instance: t.Any) -> None:
    async with db.sessionmaker.begin() as session:
        session.add(instance)


@pytest.mark.parametrize(
    "commit",
    [_commit, _session_begin, _sessionmaker_begin],
    ids=["commit", "session.begin", "sessionmaker.begin"],
)
async def test_sync_and_async_receivers_run_before_commit_returns(
    tracked: SQLAlchemy, commit: CommitStyle
) -> None:
    """Plain and coroutine receivers of both signals have run when commit returns."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    ran: list[str] = []

    def plain_before(sender: t.Any, changes: Changes) -> None:
        ran.append("plain before")

    async def async_before(sender: t.Any, changes: Changes) -> None:
        await asyncio.sleep(0.01)
        ran.append("async before")

    def plain_after(sender: t.Any, changes: Changes) -> None:
        ran.append("plain after")

    async def async_after(sender: t.Any, changes: Changes) -> None:
        await asyncio.sleep(0.01)
        ran.append("async after")

    with (
        signals.before_models_committed.connected_to(plain_before),
        signals.before_models_committed.connected_to(async_before),
        signals.models_committed.connected_to(plain_after),
        signals.models_committed.connected_to(async_after),
    ):
        await commit(tracked, Todo(title="a"))
    assert set(ran[:2]) == {"plain before", "async before"}
    assert set(ran[2:]) == {"plain after", "async after"}


async def test_using_the_committing_session_in_a_receiver_fails_clearly(
    tracked: SQLAlchemy,
) -> None:
    """SQL on the committed session, or commit() inside the commit, raises at once."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    session = tracked.session()

    async def query(sender: t.Any, changes: Changes) -> None:
        await session.execute(sa.select(Todo))

    async def commit_again(sender: t.Any, changes: Changes) -> None:
        await session.commit()

    with signals.models_committed.connected_to(query):
        session.add(Todo(title="a"))
        with pytest.raises(async_sa.ModelsCommittedError) as info:
            await asyncio.wait_for(session.commit(), timeout=10)
    cause = info.value.__cause__
    assert isinstance(cause, sa.exc.InvalidRequestError)
    assert "'committed' state" in str(cause)
    with signals.before_models_committed.connected_to(commit_again):
        session.add(Todo(title="b"))
        with pytest.raises(sa.exc.IllegalStateChangeError, match="in progress"):
            await asyncio.wait_for(session.commit(), timeout=10)
    await session.rollback()
    assert await titles(tracked, Todo) == ["a"]


async def test_receivers_can_use_another_session_and_add_to_the_committing_one(
    tracked: SQLAlchemy, sent: Sent
) -> None:
    """Another session works in receivers; objects added before commit are committed."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    seen: list[str] = []

    def audit(sender: t.Any, changes: Changes) -> None:
        if any(instance.title == "a" for instance, _ in changes):
            tracked.session.add(Todo(title="audit"))

    async def read_back(sender: t.Any, changes: Changes) -> None:
        async with tracked.sessionmaker() as other:
            seen.extend(await other.scalars(sa.select(Todo.title)))

    with signals.before_models_committed.connected_to(audit):
        with signals.models_committed.connected_to(read_back):
            tracked.session.add(Todo(title="a"))
            await tracked.session.commit()
    assert sorted(seen) == ["a", "audit"]
    assert sent.described() == (
        [[("a", "insert")]],
        [[("a", "insert"), ("audit", "insert")]],
    )


@pytest.mark.parametrize("signal_name", ["before_models_committed", "models_committed"])
async def test_cancelled_receiver_leaves_no_half_commit_or_connection(
    tracked: SQLAlchemy, signal_name: str
) -> None:
    """Cancelled in a receiver: before aborts, after keeps the data; pool returned."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    started = asyncio.Event()

    async def slow(sender: t.Any, changes: Changes) -> None:
        started.set()
        await asyncio.sleep(10)

    async def work() -> None:
        tracked.session.add(Todo(title="a"))
        await tracked.session.commit()

    with getattr(signals, signal_name).connected_to(slow):
        task = asyncio.create_task(work())
        await asyncio.wait_for(started.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await tracked.session.registry.wait_closed()
    assert tracked.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    stored = [] if signal_name == "before_models_committed" else ["a"]
    assert await titles(tracked, Todo) == stored


class CustomAsyncSession(async_sa.AsyncSession):
    """A user's own session class."""


@pytest.mark.parametrize("source", ["db.session", "sessionmaker", "custom class_"])
async def test_every_kind_of_session_is_tracked(
    make_db: MakeDb, sent: Sent, source: str
) -> None:
    """db.session, db.sessionmaker() and a custom class_ all send the signals."""
    options = {"class_": CustomAsyncSession} if source == "custom class_" else {}
    db = make_db(track_modifications=True, session_options=options)
    Todo = todo_model(db)
    await db.create_all()
    if source == "sessionmaker":
        async with db.sessionmaker() as session:
            session.add(Todo(title="a"))
            await session.commit()
    else:
        db.session.add(Todo(title="a"))
        await db.session.commit()
        assert isinstance(db.session(), CustomAsyncSession) == (
            source == "custom class_"
        )
    assert sent.described() == ([[("a", "insert")]], [[("a", "insert")]])


def _listeners(session: sa_orm.Session) -> dict[str, int]:
    """The listeners of ``session`` itself: the class-wide commit check of
    async_sa.aborted_transactions runs whether tracking is on or not."""
    return {name: len(getattr(session.dispatch, name).listeners) for name in _EVENTS}


async def test_tracking_disabled_records_sends_and_listens_to_nothing(
    make_db: MakeDb, sent: Sent
) -> None:
    """Without tracking: no signal, and no listener on the session to slow it."""
    tracked, untracked = make_db(track_modifications=True), make_db()
    Todo = todo_model(untracked)
    await untracked.create_all()
    untracked.session.add(Todo(title="a"))
    await untracked.session.flush()
    await untracked.session.commit()
    assert sent.described() == ([], [])
    assert _listeners(untracked.session().sync_session) == dict.fromkeys(_EVENTS, 0)
    assert _listeners(tracked.sessionmaker().sync_session) == dict.fromkeys(_EVENTS, 1)
    assert _listeners(untracked.sessionmaker().sync_session) == dict.fromkeys(
        _EVENTS, 0
    )


async def test_sender_is_the_quart_app_and_each_app_has_its_own_switch(
    make_db: MakeDb, backend: Backend, sent: Sent
) -> None:
    """Under Quart the app sends; one db, two apps: only the tracking app sends."""
    quart = pytest.importorskip("quart")
    db = make_db()
    Todo = todo_model(db)
    apps = {}
    for name, tracking in [("tracking", True), ("quiet", False)]:
        app = quart.Quart(name)
        app.config["SQLALCHEMY_DATABASE_URI"] = backend.url
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = backend.engine_options
        app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = tracking
        db.init_app(app)
        apps[name] = app
    for name, app in apps.items():
        async with app.app_context():
            await db.create_all()
            db.session.add(Todo(title=name))
            await db.session.commit()
    await db.create_all()
    db.session.add(Todo(title="standalone"))
    await db.session.commit()
    assert sent.described() == ([[("tracking", "insert")]], [[("tracking", "insert")]])
    assert sent.senders() == [apps["tracking"]] * 2


async def test_concurrent_commits_each_report_their_own_changes(
    tracked: SQLAlchemy,
) -> None:
    """Many tasks committing at once: each send holds exactly that task's objects."""
    Todo = todo_model(tracked)
    await tracked.create_all()
    reported: dict[int, list[list[str]]] = {}
    # Tasks by object, not by name: on Python 3.13.0 a task factory's caller
    # renames the task after an eager first step (python/cpython#130033).
    numbers: dict[asyncio.Task[t.Any] | None, int] = {}

    async def record(sender: t.Any, changes: Changes) -> None:
        await asyncio.sleep(0)
        names = sorted(instance.title for instance, _ in changes)
        reported.setdefault(numbers[asyncio.current_task()], []).append(names)

    async def work(number: int) -> None:
        numbers[asyncio.current_task()] = number
        for part in range(3):
            tracked.session.add(Todo(title=f"{number}-{part}"))
            await asyncio.sleep(0)
        await tracked.session.commit()

    with signals.before_models_committed.connected_to(record):
        with signals.models_committed.connected_to(record):
            await asyncio.gather(*(work(number) for number in range(20)))
    assert reported == {
        number: [[f"{number}-{part}" for part in range(3)]] * 2 for number in range(20)
    }
