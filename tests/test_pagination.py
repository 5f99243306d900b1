"""Pagination: the page arithmetic, and ``db.paginate`` on every backend."""

from __future__ import annotations

import typing as t
from collections.abc import Mapping

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import joinedload
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.orm import selectinload

from async_sa import NotFound
from async_sa import Pagination
from async_sa import SQLAlchemy
from async_sa.integration import Integration


def page_of(total: int | None, page: int = 1, per_page: int = 10) -> Pagination:
    """A hand-built page of ``range(total)``, as ``db.paginate`` would load it."""
    start = (page - 1) * per_page
    items = list(range(total or 150))[start : start + per_page]
    return Pagination(items, page=page, per_page=per_page, total=total)


def test_first_page_numbers() -> None:
    """The first of 15 pages has a next page and no previous one."""
    p = page_of(150)
    assert (p.page, p.per_page, p.total, p.pages) == (1, 10, 150, 15)
    assert not p.has_prev
    assert p.prev_num is None
    assert p.has_next
    assert p.next_num == 2
    assert (p.first, p.last) == (1, 10)


def test_last_page_numbers() -> None:
    """The last page has a previous page and no next one; last counts its items."""
    p = page_of(145, page=15)
    assert p.has_prev
    assert p.prev_num == 14
    assert not p.has_next
    assert p.next_num is None
    assert (p.first, p.last) == (141, 145)


@pytest.mark.parametrize("total", [0, None])
def test_no_pages_without_a_total(total: int | None) -> None:
    """No items, or an uncounted total, means zero pages and no next page."""
    p = Pagination([], page=1, per_page=10, total=total)
    assert p.pages == 0
    assert not p.has_prev
    assert not p.has_next
    assert (p.first, p.last) == (0, 0)
    assert list(p.iter_pages()) == []


def test_iterating_a_page_iterates_its_items() -> None:
    """``for item in page`` walks the items."""
    assert list(page_of(150, page=2)) == list(range(10, 20))


def test_max_per_page_defaults_to_100() -> None:
    """A hand-built page has the same cap as ``db.paginate``."""
    assert page_of(150).max_per_page == 100


@pytest.mark.parametrize(
    ("page", "expect"),
    [
        (1, [1, 2, 3, 4, 5, None, 14, 15]),
        (2, [1, 2, 3, 4, 5, 6, None, 14, 15]),
        (3, [1, 2, 3, 4, 5, 6, 7, None, 14, 15]),
        (4, [1, 2, 3, 4, 5, 6, 7, 8, None, 14, 15]),
        (5, [1, 2, 3, 4, 5, 6, 7, 8, 9, None, 14, 15]),
        (6, [1, 2, None, 4, 5, 6, 7, 8, 9, 10, None, 14, 15]),
        (7, [1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 14, 15]),
        (8, [1, 2, None, 6, 7, 8, 9, 10, 11, 12, None, 14, 15]),
        (9, [1, 2, None, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        (10, [1, 2, None, 8, 9, 10, 11, 12, 13, 14, 15]),
        (11, [1, 2, None, 9, 10, 11, 12, 13, 14, 15]),
        (12, [1, 2, None, 10, 11, 12, 13, 14, 15]),
        (13, [1, 2, None, 11, 12, 13, 14, 15]),
        (14, [1, 2, None, 12, 13, 14, 15]),
        (15, [1, 2, None, 13, 14, 15]),
    ],
)
def test_iter_pages(page: int, expect: list[int | None]) -> None:
    """Edges of two, two pages before the current one and four after, ``None``
    for each gap."""
    assert list(page_of(150, page=page).iter_pages()) == expect


@pytest.mark.parametrize("page", [1, 2, 3, 4])
def test_iter_pages_without_gaps(page: int) -> None:
    """Few pages are all listed, with no gap."""
    assert list(page_of(40, page=page).iter_pages()) == [1, 2, 3, 4]


def test_iter_pages_custom_widths() -> None:
    """The edge and neighbour widths are arguments."""
    p = page_of(200, page=10)
    pages = p.iter_pages(left_edge=1, left_current=1, right_current=1, right_edge=1)
    assert list(pages) == [1, None, 9, 10, 11, None, 20]


async def test_hand_built_page_cannot_load_others() -> None:
    """A Pagination not made by db.paginate says so when asked for another page."""
    with pytest.raises(TypeError, match="built by hand.*db.paginate"):
        await page_of(150).next()


# -- db.paginate ---------------------------------------------------------------------


class Models(t.NamedTuple):
    Todo: type[t.Any]
    Parent: type[t.Any]
    Child: type[t.Any]


@pytest.fixture
async def models(db: SQLAlchemy) -> Models:
    """250 todos; 30 parents with 3 children each."""

    class Todo(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50))

    class Parent(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        children: Mapped[list[Child]] = relationship(order_by="Child.id")

    class Child(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int] = mapped_column(sa.ForeignKey(Parent.id))

    await db.create_all()
    async with db.session.begin():
        db.session.add_all(Todo(id=i, title=f"task {i}") for i in range(1, 251))
        db.session.add_all(
            Parent(id=i, children=[Child() for _ in range(3)]) for i in range(1, 31)
        )
    await db.session.remove()
    return Models(Todo, Parent, Child)


class QueryString(Integration):
    """An integration whose every request has the same query string."""

    def __init__(self, args: Mapping[str, str]) -> None:
        self.args = args

    def request_args(self) -> Mapping[str, str] | None:
        return self.args


def query_string(db: SQLAlchemy, args: Mapping[str, str]) -> None:
    """Make ``db`` see ``args`` as the current request's query string."""
    db.use_integration(QueryString(args))


def todos(models: Models) -> sa.Select[t.Any]:
    return sa.select(models.Todo).order_by(models.Todo.id)


async def test_paginate_defaults(db: SQLAlchemy, models: Models) -> None:
    """Page 1, 20 per page, counted, with the models of the current session."""
    p = await db.paginate(todos(models))
    assert (p.page, p.per_page, p.total, p.pages) == (1, 20, 250, 13)
    assert [todo.id for todo in p] == list(range(1, 21))
    assert all(todo in db.session() for todo in p.items)
    assert p.max_per_page == 100


async def test_paginate_explicit_page(db: SQLAlchemy, models: Models) -> None:
    """``page`` and ``per_page`` pick the slice; the last page is partial."""
    p = await db.paginate(todos(models), page=13, per_page=20)
    assert [todo.id for todo in p] == list(range(241, 251))
    assert (p.first, p.last, p.has_next, p.next_num) == (241, 250, False, None)


async def test_per_page_capped_at_100_by_default(
    db: SQLAlchemy, models: Models
) -> None:
    """A caller cannot get more than 100 rows without raising ``max_per_page``."""
    p = await db.paginate(todos(models), per_page=500)
    assert (p.per_page, len(p.items), p.pages) == (100, 100, 3)


async def test_max_per_page_caps_per_page(db: SQLAlchemy, models: Models) -> None:
    """``max_per_page`` lowers (and raises) the cap."""
    assert (
        await db.paginate(todos(models), per_page=100, max_per_page=50)
    ).per_page == 50
    p = await db.paginate(todos(models), per_page=110, max_per_page=250)
    assert (p.per_page, len(p.items)) == (110, 110)


async def test_max_per_page_below_one_is_an_error(
    db: SQLAlchemy, models: Models
) -> None:
    """A cap below one is a programming error, not a 404."""
    with pytest.raises(ValueError, match="max_per_page must be at least 1"):
        await db.paginate(todos(models), max_per_page=0)


async def test_next_and_prev_keep_per_page_and_max_per_page(
    db: SQLAlchemy, models: Models
) -> None:
    """``next()`` and ``prev()`` keep 110 per page under a 250 cap (FSA's ``prev()``
    drops the cap back to 100) and copy the total."""
    p = await db.paginate(todos(models), per_page=110, max_per_page=250)
    following = await p.next()
    assert (following.page, following.per_page, following.max_per_page) == (2, 110, 250)
    assert following.items[0].id == 111
    assert following.total == 250
    back = await following.prev()
    assert (back.page, back.per_page, back.max_per_page) == (1, 110, 250)
    assert [todo.id for todo in back] == [todo.id for todo in p]


async def test_prev_of_first_page_is_first_page(db: SQLAlchemy, models: Models) -> None:
    """Without ``error_out``, going back from page 1 stays on page 1."""
    p = await (await db.paginate(todos(models))).prev()
    assert p.page == 1


async def test_next_past_the_end(db: SQLAlchemy, models: Models) -> None:
    """Past the last page, ``next()`` is empty, or a 404 with ``error_out``."""
    last = await db.paginate(todos(models), page=13)
    assert (await last.next()).items == []
    with pytest.raises(NotFound):
        await last.next(error_out=True)


async def test_count_false(db: SQLAlchemy, models: Models) -> None:
    """Without counting, ``total`` is None and there is no known next page."""
    p = await db.paginate(todos(models), count=False)
    assert (p.total, p.pages, p.has_next, len(p.items)) == (None, 0, False, 20)


@pytest.mark.parametrize(
    ("page", "per_page"), [(0, None), (-3, None), (None, 0), (None, -1)]
)
async def test_values_below_one(
    db: SQLAlchemy, models: Models, page: int | None, per_page: int | None
) -> None:
    """Pages and sizes below one are a 404, or the defaults without ``error_out``."""
    with pytest.raises(NotFound):
        await db.paginate(todos(models), page=page, per_page=per_page)
    p = await db.paginate(todos(models), page=page, per_page=per_page, error_out=False)
    assert (p.page, p.per_page) == (1, 20)


async def test_empty_page_past_the_first(db: SQLAlchemy, models: Models) -> None:
    """An empty page after the first is a 404; an empty first page is not."""
    with pytest.raises(NotFound, match="past the last page"):
        await db.paginate(todos(models), page=14)
    assert (await db.paginate(todos(models), page=14, error_out=False)).items == []
    empty = await db.paginate(todos(models).where(models.Todo.id < 0))
    assert (empty.items, empty.total, empty.pages) == ([], 0, 0)


async def test_count_comes_first_and_spares_a_page_past_the_end(
    db: SQLAlchemy, models: Models
) -> None:
    """The count runs before the page's query (so loaded rows are not held
    across its round trip), and a page it shows to be past the end is not
    queried at all."""
    statements: list[str] = []

    @sa.event.listens_for(db.engine.sync_engine, "before_cursor_execute")
    def record(*args: t.Any) -> None:
        statements.append(args[2])

    last = await db.paginate(todos(models), page=13)
    assert len(last.items) == 10
    assert [sql.lstrip().upper().startswith("SELECT COUNT") for sql in statements] == [
        True,
        False,
    ]
    statements.clear()
    past = await db.paginate(todos(models), page=14, error_out=False)
    assert (past.items, past.total) == ([], 250)
    assert len(statements) == 1


@pytest.mark.parametrize("page", [2**31, 2**62, 2**63 // 20, 10**30])
async def test_huge_page_is_not_found(
    db: SQLAlchemy, models: Models, page: int
) -> None:
    """A page far beyond any table, even past the database's OFFSET range, is a
    404, or an empty page without ``error_out``; never a database error."""
    with pytest.raises(NotFound):
        await db.paginate(todos(models), page=page)
    p = await db.paginate(todos(models), page=page, error_out=False)
    assert (p.page, p.items, p.total) == (page, [], 250)


async def test_joined_collections_give_one_item_per_row(
    db: SQLAlchemy, models: Models
) -> None:
    """Eager-joined collections neither repeat items nor inflate the total."""
    select = (
        sa.select(models.Parent)
        .options(selectinload(models.Parent.children))
        .order_by(models.Parent.id)
    )
    p = await db.paginate(select, per_page=4)
    assert [parent.id for parent in p] == [1, 2, 3, 4]
    assert [len(parent.children) for parent in p] == [3, 3, 3, 3]
    assert p.total == 30
    joined = sa.select(models.Parent).options(joinedload(models.Parent.children))
    p = await db.paginate(joined.order_by(models.Parent.id), per_page=4)
    assert p.total == 30
    assert len({parent.id for parent in p}) == len(p.items)


async def test_core_select_pages_the_first_column(
    db: SQLAlchemy, models: Models
) -> None:
    """A Core ``select`` of columns gives the first column's values."""
    table = models.Todo.__table__
    p = await db.paginate(
        sa.select(table.c.title, table.c.id).order_by(table.c.id), per_page=2
    )
    assert (p.items, p.total) == (["task 1", "task 2"], 250)


async def test_select_limit_is_replaced(db: SQLAlchemy, models: Models) -> None:
    """The page's limit and offset replace the select's, in the count too."""
    p = await db.paginate(todos(models).limit(5).offset(3), per_page=10)
    assert (len(p.items), p.total) == (10, 250)


# -- query string ---------------------------------------------------------------------


async def test_query_string_gives_page_and_per_page(
    db: SQLAlchemy, models: Models
) -> None:
    """Inside a request, ``page`` and ``per_page`` come from the query string."""
    query_string(db, {"page": "3", "per_page": "7"})
    p = await db.paginate(todos(models))
    assert (p.page, p.per_page, p.items[0].id) == (3, 7, 15)


async def test_arguments_beat_the_query_string(db: SQLAlchemy, models: Models) -> None:
    """Explicit arguments win over the query string."""
    query_string(db, {"page": "3", "per_page": "7"})
    p = await db.paginate(todos(models), page=2, per_page=5)
    assert (p.page, p.per_page) == (2, 5)


async def test_query_string_per_page_is_capped(db: SQLAlchemy, models: Models) -> None:
    """A client asking for the whole table gets ``max_per_page`` rows."""
    query_string(db, {"per_page": "1000000"})
    assert (await db.paginate(todos(models))).per_page == 100
    assert (await db.paginate(todos(models), max_per_page=30)).per_page == 30


async def test_query_string_leading_zeros_and_sign(
    db: SQLAlchemy, models: Models
) -> None:
    """Decimal integers with a sign or leading zeros are numbers."""
    query_string(db, {"page": "+0002", "per_page": "0" * 5000 + "5"})
    p = await db.paginate(todos(models))
    assert (p.page, p.per_page) == (2, 5)


@pytest.mark.parametrize(
    ("args", "fallback_page"),
    [
        ({"page": "abc"}, 1),
        ({"page": ""}, 1),
        ({"page": "1.5"}, 1),
        ({"page": " 2"}, 1),
        ({"page": "٣"}, 1),
        ({"page": "0"}, 1),
        ({"page": "-1"}, 1),
        ({"page": "9" * 5000}, 10**19),
        ({"page": "99999999999999999999"}, 10**19),
        ({"per_page": "x"}, 1),
        ({"per_page": "0"}, 1),
        ({"per_page": "-99999999999999999999999"}, 1),
    ],
)
async def test_bad_query_string(
    db: SQLAlchemy, models: Models, args: Mapping[str, str], fallback_page: int
) -> None:
    """Non-integers, values below one and pages past the end are a 404; without
    ``error_out`` bad values fall back to the defaults (a huge page stays huge,
    and empty)."""
    query_string(db, args)
    with pytest.raises(NotFound):
        await db.paginate(todos(models))
    p = await db.paginate(todos(models), error_out=False)
    assert (p.page, p.per_page) == (fallback_page, 20)
