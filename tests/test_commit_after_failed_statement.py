"""A commit after a failed statement never reports success for lost work.

PostgreSQL aborts the whole transaction when a statement fails: a later
``COMMIT`` is answered with ``ROLLBACK``. ``commit()`` must raise then, and send
no ``models_committed``. SQLite and MariaDB keep the transaction, so they
commit as usual.
"""

from __future__ import annotations

import asyncio
import typing as t
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from async_sa import aborted_transactions
from async_sa import signals
from async_sa import SQLAlchemy
from async_sa import TransactionAbortedError
from tests.conftest import Backend
from tests.conftest import MakeDb
from tests.conftest import NewDb

Changes = list[tuple[t.Any, str]]


def item_model(db: SQLAlchemy) -> type[t.Any]:
    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    return Item


@pytest.fixture
def committed() -> Iterator[list[list[int]]]:
    """The ids each models_committed send reported, each checked to follow a
    before_models_committed with the same ids; a before_models_committed left
    without its models_committed fails the test."""
    sent: list[list[int]] = []
    before: list[list[int]] = []

    def record_before(sender: t.Any, changes: Changes) -> None:
        before.append(sorted(instance.id for instance, _ in changes))

    def record(sender: t.Any, changes: Changes) -> None:
        sent.append(before.pop())

    with (
        signals.before_models_committed.connected_to(record_before),
        signals.models_committed.connected_to(record),
    ):
        yield sent
    assert before == []


async def stored_ids(db: SQLAlchemy, model: type[t.Any]) -> list[int]:
    async with db.sessionmaker() as session:
        return sorted(await session.scalars(sa.select(model.id)))


Failure = Callable[[SQLAlchemy, type[t.Any]], Awaitable[None]]


async def divide_by_zero(db: SQLAlchemy, model: type[t.Any]) -> None:
    await db.session.execute(sa.text("SELECT 1/0"))


async def duplicate_key(db: SQLAlchemy, model: type[t.Any]) -> None:
    await db.session.execute(sa.insert(model).values(id=1))


FAILURES = pytest.mark.parametrize(
    "fail", [divide_by_zero, duplicate_key], ids=["division", "duplicate"]
)


async def setup(db: SQLAlchemy) -> type[t.Any]:
    """An ``Item`` table holding row 1."""
    Item = item_model(db)
    await db.create_all()
    async with db.sessionmaker.begin() as session:
        session.add(Item(id=1))
    return Item


@pytest.fixture
def pg_db(postgres: Backend, new_db: NewDb) -> SQLAlchemy:
    """A tracking ``SQLAlchemy`` object on PostgreSQL, through each driver."""
    return new_db(
        url=postgres.url,
        engine_options=postgres.engine_options,
        track_modifications=True,
    )


@FAILURES
async def test_commit_after_a_caught_error_raises_on_postgresql(
    pg_db: SQLAlchemy, committed: list[list[int]], fail: Failure
) -> None:
    """The error is caught, commit() raises, nothing is stored or reported."""
    db = pg_db
    Item = await setup(db)
    committed.clear()
    db.session.add(Item(id=2))
    await db.session.flush()
    with pytest.raises(sa.exc.DBAPIError):
        await fail(db, Item)
    with pytest.raises(TransactionAbortedError, match="aborted") as info:
        await db.session.commit()
    assert isinstance(info.value, sa.exc.PendingRollbackError)
    assert "Roll the session back" in str(info.value)
    assert committed == []
    await db.session.rollback()
    db.session.add(Item(id=3))
    await db.session.commit()
    assert await stored_ids(db, Item) == [1, 3]
    assert committed == [[3]]
    await db.session.remove()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_begin_block_after_a_caught_error_raises_on_postgresql(
    pg_db: SQLAlchemy, committed: list[list[int]]
) -> None:
    """``async with session.begin()`` (db.session and sessionmaker) raises too,
    and rolls back."""
    db = pg_db
    Item = await setup(db)
    committed.clear()
    with pytest.raises(TransactionAbortedError):
        async with db.session.begin():
            db.session.add(Item(id=2))
            await db.session.flush()
            with pytest.raises(sa.exc.DBAPIError):
                await divide_by_zero(db, Item)
    assert not db.session.in_transaction()
    with pytest.raises(TransactionAbortedError):
        async with db.sessionmaker.begin() as session:
            session.add(Item(id=4))
            with pytest.raises(sa.exc.IntegrityError):
                await session.execute(sa.insert(Item).values(id=1))
    assert await stored_ids(db, Item) == [1]
    assert committed == []


async def test_rolled_back_savepoint_leaves_the_transaction_committable(
    pg_db: SQLAlchemy, committed: list[list[int]]
) -> None:
    """An error inside a savepoint rolled back to it does not abort the outer
    transaction on PostgreSQL: the commit stores the outer work."""
    db = pg_db
    Item = await setup(db)
    committed.clear()
    db.session.add(Item(id=2))
    with pytest.raises(sa.exc.IntegrityError):
        async with db.session.begin_nested():
            await duplicate_key(db, Item)
    db.session.add(Item(id=3))
    await db.session.commit()
    assert await stored_ids(db, Item) == [1, 2, 3]
    assert committed == [[2, 3]]


@pytest.mark.parametrize(
    "backend", ["sqlite_memory", "sqlite_file", "mariadb"], indirect=True
)
async def test_sqlite_and_mariadb_commit_after_a_caught_error(
    make_db: MakeDb, committed: list[list[int]]
) -> None:
    """SQLite and MariaDB keep the transaction after a failed statement (only
    the statement is undone): the commit stores the rest of the work."""
    db = make_db(track_modifications=True)
    Item = await setup(db)
    committed.clear()
    db.session.add(Item(id=2))
    await db.session.flush()
    with pytest.raises(sa.exc.IntegrityError):
        await duplicate_key(db, Item)
    db.session.add(Item(id=3))
    await db.session.commit()
    assert await stored_ids(db, Item) == [1, 2, 3]
    assert committed == [[2, 3]]
    with pytest.raises(sa.exc.IntegrityError):
        await duplicate_key(db, Item)
    await db.session.commit()
    assert committed == [[2, 3]]


async def test_only_commits_after_a_failed_statement_are_checked(
    make_db: MakeDb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits cost nothing extra unless a statement failed on their connection:
    then one check, and none for the commits after it."""
    checks: list[sa.Connection] = []
    probe = aborted_transactions._probe

    def counted(connection: sa.Connection) -> Exception | None:
        checks.append(connection)
        return probe(connection)

    monkeypatch.setattr(aborted_transactions, "_probe", counted)
    db = make_db()
    Item = await setup(db)
    for number in range(2, 5):
        db.session.add(Item(id=number))
        await db.session.commit()
    assert checks == []
    with pytest.raises(sa.exc.IntegrityError):
        async with db.session.begin_nested():
            await duplicate_key(db, Item)
    db.session.add(Item(id=5))
    await db.session.commit()
    assert len(checks) == 1
    db.session.add(Item(id=6))
    await db.session.commit()
    assert len(checks) == 1
    assert await stored_ids(db, Item) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("backend", ["mariadb"], indirect=True)
async def test_commit_after_a_caught_deadlock_raises_on_mariadb(
    make_db: MakeDb, committed: list[list[int]]
) -> None:
    """MariaDB rolls the whole transaction back on a deadlock, and the next
    statement starts a new one: the commit after the caught error raises
    instead of storing only the work done after it."""
    db = make_db(track_modifications=True)
    Item = await setup(db)
    async with db.sessionmaker.begin() as session:
        session.add(Item(id=2))
    committed.clear()
    other = db.sessionmaker()
    try:
        # The victim has less to undo than the other transaction.
        await db.session.execute(sa.update(Item).where(Item.id == 1).values(id=11))
        other.add_all([Item(id=number) for number in (5, 6, 7)])
        await other.flush()
        await other.execute(sa.update(Item).where(Item.id == 2).values(id=12))
        blocked = asyncio.create_task(
            db.session.execute(sa.update(Item).where(Item.id == 2).values(id=22))
        )
        await asyncio.sleep(0.3)
        await other.execute(sa.update(Item).where(Item.id == 1).values(id=21))
        with pytest.raises(sa.exc.OperationalError, match="Deadlock"):
            await blocked
        await other.commit()
    finally:
        await other.close()
    db.session.add(Item(id=3))
    with pytest.raises(TransactionAbortedError) as info:
        await db.session.commit()
    assert "Deadlock" in str(info.value.__cause__)
    await db.session.rollback()
    assert await stored_ids(db, Item) == [5, 6, 7, 12, 21]
    assert committed == [[5, 6, 7]]  # the other session's only
