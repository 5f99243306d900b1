"""Pagination, the ``*_or_404`` helpers and recorded queries under Quart, including
a fuzz of hostile query strings and identifiers: only 200 or 404, never 500."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import sys
import typing as t
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
import quart
import sqlalchemy as sa
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.exceptions import NotFound as HTTPNotFound

from async_sa import get_recorded_queries
from async_sa import SQLAlchemy
from tests.conftest import Backend

ITEMS = 45
fuzz_settings = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclasses.dataclass
class Site:
    """A Quart app whose views use the helpers, and its ``db``."""

    app: quart.Quart
    db: SQLAlchemy
    Item: type[t.Any]
    lines: dict[str, int]
    """View name → the line of its query, for recorded locations."""

    async def get(self, path: str, **query: t.Any) -> tuple[int, t.Any]:
        """Status and body (JSON when it is JSON, else unescaped text), after
        redirects (an identifier "/0" makes the path "/item//0", which routing
        redirects to "/item/0")."""
        client = self.app.test_client()
        response = await client.get(path, query_string=query, follow_redirects=True)
        if response.mimetype == "application/json":
            return response.status_code, await response.get_json()
        return response.status_code, html.unescape(await response.get_data(True))


def make_app(backend: Backend, tmp_path: Path, **config: t.Any) -> quart.Quart:
    app = quart.Quart(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=backend.url,
        SQLALCHEMY_ENGINE_OPTIONS=backend.engine_options,
        **config,
    )
    return app


def page_json(p: t.Any) -> dict[str, t.Any]:
    return {
        "ids": [item.id for item in p],
        "page": p.page,
        "per_page": p.per_page,
        "total": p.total,
        "pages": p.pages,
        "next_num": p.next_num,
        "iter_pages": list(p.iter_pages()),
    }


@pytest.fixture
async def site(backend: Backend, tmp_path: Path) -> AsyncIterator[Site]:
    """Items 1-45 (item 45 has no name) and tags, behind views for each helper."""
    app = make_app(backend, tmp_path, SQLALCHEMY_RECORD_QUERIES=True)
    db = SQLAlchemy(app)
    lines: dict[str, int] = {}

    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str | None] = mapped_column(sa.String(20))

    class Tag(db.Model):  # type: ignore[name-defined,misc]
        name: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    ordered = sa.select(Item).order_by(Item.id)

    @app.get("/items")
    async def items() -> t.Any:
        return page_json(await db.paginate(ordered))

    @app.get("/items/lenient")
    async def items_lenient() -> t.Any:
        return page_json(await db.paginate(ordered, error_out=False))

    @app.get("/items/fixed")
    async def items_fixed() -> t.Any:
        return page_json(await db.paginate(ordered, page=2, per_page=5))

    @app.get("/items/walk")
    async def items_walk() -> t.Any:
        first = await db.paginate(ordered, max_per_page=10)
        second = await first.next()
        again = await second.prev()
        return {
            "per_page": [first.per_page, second.per_page, again.per_page],
            "pages": [first.page, second.page, again.page],
        }

    @app.get("/item/<ident>")
    async def item(ident: str) -> t.Any:
        found = await db.get_or_404(Item, ident, description="No such item.")
        return {"id": found.id}

    @app.post("/item-by-json")
    async def item_by_json() -> t.Any:
        ident = (await quart.request.get_json())["ident"]
        return {"id": (await db.get_or_404(Item, ident)).id}

    @app.get("/item-number/<int:ident>")
    async def item_number(ident: int) -> t.Any:
        return {"id": (await db.get_or_404(Item, ident)).id}

    @app.get("/tag/<name>")
    async def tag(name: str) -> t.Any:
        return {"name": (await db.get_or_404(Tag, name)).name}

    @app.get("/first/<name>")
    async def first(name: str) -> t.Any:
        select = sa.select(Item).filter_by(name=name)
        return {"id": (await db.first_or_404(select, description="No first.")).id}

    @app.get("/one")
    async def one() -> t.Any:
        select = sa.select(Item).where(Item.id <= int(quart.request.args["upto"]))
        return {"id": (await db.one_or_404(select, description="Not one.")).id}

    @app.get("/queries")
    async def queries() -> t.Any:
        lines["queries"] = sys._getframe().f_lineno + 1
        await db.session.execute(sa.select(Item).limit(1))
        return [query.location for query in get_recorded_queries()]

    @app.get("/queries/gathered")
    async def gathered_queries() -> t.Any:
        async def child(number: int) -> None:
            await db.session.execute(sa.select(sa.literal(number)))

        await asyncio.gather(child(1), child(2))
        return [query.parameters for query in get_recorded_queries()]

    async with app.app_context():
        await db.create_all()
        async with db.session.begin():
            db.session.add_all(Item(id=i, name=f"item {i}") for i in range(1, ITEMS))
            db.session.add_all([Item(id=ITEMS), Tag(name="red")])
    yield Site(app, db, Item, lines)
    await db.dispose()


# -- pagination ---------------------------------------------------------------------


async def test_paginate_defaults_in_a_request(site: Site) -> None:
    """Without a query string: page 1, 20 per page."""
    status, body = await site.get("/items")
    assert status == 200
    assert body["ids"] == list(range(1, 21))
    assert (body["page"], body["per_page"], body["total"], body["pages"]) == (
        1,
        20,
        ITEMS,
        3,
    )


async def test_paginate_reads_the_query_string(site: Site) -> None:
    """``page`` and ``per_page`` come from the request's query string."""
    status, body = await site.get("/items", page="3", per_page="7")
    assert status == 200
    assert body["ids"] == list(range(15, 22))
    assert body["iter_pages"] == [1, 2, 3, 4, 5, 6, 7]


async def test_paginate_arguments_beat_the_query_string(site: Site) -> None:
    """Arguments given to paginate win over the query string."""
    status, body = await site.get("/items/fixed", page="9", per_page="1")
    assert (status, body["page"], body["per_page"]) == (200, 2, 5)


async def test_paginate_caps_per_page_at_100(site: Site) -> None:
    """A client asking for a million rows per page gets 100."""
    status, body = await site.get("/items", per_page="1000000")
    assert (status, body["per_page"], len(body["ids"])) == (200, 100, ITEMS)


async def test_next_and_prev_keep_the_cap(site: Site) -> None:
    """``next()`` and ``prev()`` keep a per_page capped by max_per_page."""
    status, body = await site.get("/items/walk", per_page="50")
    assert status == 200
    assert body == {"per_page": [10, 10, 10], "pages": [1, 2, 1]}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ({"page": "abc"}, "'page' query argument must be an integer"),
        ({"per_page": "1.5"}, "'per_page' query argument must be an integer"),
        ({"page": "0"}, "pages start at 1"),
        ({"per_page": "-4"}, "per_page must be at least 1"),
        ({"page": "4"}, "past the last page"),
        ({"page": "9" * 400}, "past the last page"),
    ],
)
async def test_bad_page_is_a_404(
    site: Site, query: dict[str, str], reason: str
) -> None:
    """Bad values are a 404 saying why; without error_out, the defaults."""
    status, body = await site.get("/items", **query)
    assert status == 404
    assert reason in body
    status, body = await site.get("/items/lenient", **query)
    assert status == 200


async def test_paginate_in_an_app_context_without_request(site: Site) -> None:
    """Outside a request (a CLI command) there is no query string: defaults, and
    errors are Quart's 404."""
    async with site.app.app_context():
        p = await site.db.paginate(sa.select(site.Item))
        assert (p.page, p.per_page) == (1, 20)
        with pytest.raises(HTTPNotFound):
            await site.db.paginate(sa.select(site.Item), page=0)


# -- 404 helpers ----------------------------------------------------------------------


async def test_get_or_404(site: Site) -> None:
    """Found rows are returned; missing ones are a 404 with the description."""
    assert await site.get("/item/7") == (200, {"id": 7})
    assert await site.get("/item-number/7") == (200, {"id": 7})
    assert await site.get("/tag/red") == (200, {"name": "red"})
    status, body = await site.get("/item/99")
    assert status == 404
    assert "No such item." in body
    assert (await site.get("/tag/blue"))[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/item/abc",
        "/item/%00",
        "/item/%E2%80%AE",
        "/item/1.0",
        "/item/-0",
        f"/item/{2**31}",
        f"/item/{2**63}",
        f"/item/{'9' * 5000}",
        f"/item-number/{2**31}",
        f"/item-number/{2**64}",
        "/tag/%00",
        "/tag/" + quote("é" * 300),
    ],
)
async def test_get_or_404_hostile_identifier(site: Site, path: str) -> None:
    """Identifiers of the wrong type, out of range or with odd text are a 404."""
    assert (await site.get(path))[0] == 404
    assert await site.get("/item/3") == (200, {"id": 3})


async def test_first_or_404(site: Site) -> None:
    """The first match, or a 404 with the description."""
    assert await site.get("/first/item 2") == (200, {"id": 2})
    status, body = await site.get("/first/nobody")
    assert (status, "No first." in body) == (404, True)


async def test_one_or_404(site: Site) -> None:
    """The only match; none or several are a 404."""
    assert await site.get("/one", upto="1") == (200, {"id": 1})
    assert (await site.get("/one", upto="0"))[0] == 404
    status, body = await site.get("/one", upto="2")
    assert (status, "Not one." in body) == (404, True)


# -- recorded queries -----------------------------------------------------------------


async def test_recorded_queries_of_a_request(site: Site) -> None:
    """A request sees its own queries only, located in its view function."""
    for _ in range(2):
        status, locations = await site.get("/queries")
        assert status == 200
        assert locations == [f"{__file__}:{site.lines['queries']} (queries)"]


async def test_recorded_queries_include_gather_children(site: Site) -> None:
    """Queries of a handler's gather children belong to the request's list."""
    status, parameters = await site.get("/queries/gathered")
    assert status == 200
    assert len(parameters) == 2


async def test_recording_is_off_without_the_config_key(
    backend: Backend, tmp_path: Path
) -> None:
    """Without SQLALCHEMY_RECORD_QUERIES, an app records nothing."""
    app = make_app(backend, tmp_path)
    db = SQLAlchemy(app)
    try:
        async with app.app_context():
            await db.session.execute(sa.select(1))
            assert get_recorded_queries() == []
    finally:
        await db.dispose()


# -- hostile input --------------------------------------------------------------------

query_text = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.integers().map(str),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(["", "0", "-1", "1e9", "0x10", "١", " 1", "9" * 5000]),
)
identifiers = st.one_of(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    st.integers().map(str),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
)


@pytest.mark.reliability
@fuzz_settings
@given(
    query=st.dictionaries(
        st.sampled_from(["page", "per_page", "other"]), query_text, max_size=3
    )
)
async def test_fuzz_pagination_query_string(site: Site, query: dict[str, str]) -> None:
    """Any query string gives 200 or 404 (200 without error_out), never a 500."""
    status, _ = await site.get("/items", **query)
    assert status in (200, 404)
    status, body = await site.get("/items/lenient", **query)
    assert status == 200
    assert body["per_page"] <= 100


@pytest.mark.reliability
@fuzz_settings
@given(ident=identifiers)
async def test_fuzz_get_or_404_identifier(site: Site, ident: str) -> None:
    """Any identifier in the URL gives 200 or 404, never a 500."""
    for view in ("item", "tag"):
        status, _ = await site.get(f"/{view}/{quote(ident, safe='')}")
        assert status in (200, 404), (view, ident)


@pytest.mark.reliability
@fuzz_settings
@given(ident=st.one_of(st.integers(min_value=0), st.integers(0, 2**200)))
async def test_fuzz_get_or_404_integer(site: Site, ident: int) -> None:
    """Any number for an ``<int:...>`` route gives 200 or 404, never a 500."""
    status, _ = await site.get(f"/item-number/{ident}")
    assert status in (200, 404)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "x"]), inner)
    ),
    max_leaves=5,
)


@pytest.mark.reliability
@fuzz_settings
@given(
    ident=st.one_of(st.sampled_from([[1, 2], [], {}, {"x": 1}, 1.5, True]), json_values)
)
async def test_fuzz_get_or_404_json_body(site: Site, ident: t.Any) -> None:
    """Any JSON value as the identifier gives 200 or 404, never a 500; a float or
    a boolean never finds row 1."""
    client = site.app.test_client()
    response = await client.post("/item-by-json", json={"ident": ident})
    assert response.status_code in (200, 404), ident
    if isinstance(ident, (bool, float)):
        assert response.status_code == 404
