"""The ``*_or_404`` helpers, standalone: :class:`async_sa.NotFound` on every backend."""

from __future__ import annotations

import typing as t
import uuid

import hypothesis
import pytest
import sqlalchemy as sa
from hypothesis import strategies as st
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship
from sqlalchemy.orm import selectinload

from async_sa import NotFound
from async_sa import SQLAlchemy

DOC_ID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class Models(t.NamedTuple):
    Item: type[t.Any]
    Tag: type[t.Any]
    Doc: type[t.Any]
    Pair: type[t.Any]


@pytest.fixture
async def models(db: SQLAlchemy) -> Models:
    """Items 1-3 (item 3 has no name), tags "a"/"b" on item 1, one doc, one pair."""

    class Item(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str | None] = mapped_column(sa.String(20))
        tags: Mapped[list[Tag]] = relationship()

    class Tag(db.Model):  # type: ignore[name-defined,misc]
        name: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
        item_id: Mapped[int] = mapped_column(sa.ForeignKey(Item.id))

    class Doc(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)

    class Pair(db.Model):  # type: ignore[name-defined,misc]
        left: Mapped[int] = mapped_column(primary_key=True)
        right: Mapped[str] = mapped_column(sa.String(20), primary_key=True)

    await db.create_all()
    async with db.session.begin():
        db.session.add_all([Item(id=1, name="one"), Item(id=2, name="two"), Item(id=3)])
        db.session.add_all([Tag(name="a", item_id=1), Tag(name="b", item_id=1)])
        db.session.add_all([Doc(id=DOC_ID), Pair(left=1, right="x")])
    await db.session.remove()
    return Models(Item, Tag, Doc, Pair)


async def test_not_found_is_a_lookup_error() -> None:
    """Standalone, a 404 is a LookupError carrying its description."""
    error = NotFound("no such note")
    assert isinstance(error, LookupError)
    assert (error.description, str(error)) == ("no such note", "no such note")
    assert str(NotFound()) == "Not Found"


async def test_get_or_404_found(db: SQLAlchemy, models: Models) -> None:
    """An existing row is returned, in the current task's session."""
    item = await db.get_or_404(models.Item, 2)
    assert item.name == "two"
    assert item in db.session()


async def test_get_or_404_missing(db: SQLAlchemy, models: Models) -> None:
    """A missing row raises NotFound with the description given."""
    with pytest.raises(NotFound, match="^Not Found$"):
        await db.get_or_404(models.Item, 99)
    with pytest.raises(NotFound, match="no item 99") as info:
        await db.get_or_404(models.Item, 99, description="no item 99")
    assert info.value.description == "no item 99"


async def test_get_or_404_passes_options(db: SQLAlchemy, models: Models) -> None:
    """Keyword arguments such as ``options`` go to ``session.get``."""
    item = await db.get_or_404(models.Item, 1, options=[selectinload(models.Item.tags)])
    assert "tags" not in sa.inspect(item).unloaded
    assert sorted(tag.name for tag in item.tags) == ["a", "b"]


async def test_get_or_404_composite_key(db: SQLAlchemy, models: Models) -> None:
    """Composite keys take a tuple, as with ``session.get``."""
    assert (await db.get_or_404(models.Pair, (1, "x"))).right == "x"
    with pytest.raises(NotFound):
        await db.get_or_404(models.Pair, (1, "y"))


async def test_get_or_404_text_identifier_is_parsed(
    db: SQLAlchemy, models: Models
) -> None:
    """A string for an integer or UUID key finds the row on every backend."""
    assert (await db.get_or_404(models.Item, "2")).id == 2
    assert (await db.get_or_404(models.Item, "+0002")).id == 2
    assert (await db.get_or_404(models.Doc, str(DOC_ID))).id == DOC_ID
    assert (await db.get_or_404(models.Doc, DOC_ID.hex)).id == DOC_ID


@pytest.mark.parametrize(
    "ident",
    [
        "abc",
        "",
        " 2",
        "2.0",
        "٢",
        "1e3",
        "9" * 30,
        "9" * 5000,
        "\x00",
        "2\x00",
        "\ud800",
        -1,
        2**31,
        2**63,
        2**70,
        -(2**70),
    ],
)
async def test_get_or_404_bad_integer_identifier(
    db: SQLAlchemy, models: Models, ident: t.Any
) -> None:
    """Identifiers an integer key cannot hold are a 404, never a server error,
    and the session stays usable."""
    with pytest.raises(NotFound):
        await db.get_or_404(models.Item, ident)
    assert (await db.get_or_404(models.Item, 1)).name == "one"


@pytest.mark.parametrize(
    "ident", ["nope", "", "\x00", "a\x00", "\ud800", "é" * 100, "12345678-1234"]
)
async def test_get_or_404_bad_text_identifier(
    db: SQLAlchemy, models: Models, ident: str
) -> None:
    """Text keys and UUID keys give a 404 for text that cannot match, including
    a NUL byte (which PostgreSQL rejects) and unencodable text."""
    with pytest.raises(NotFound):
        await db.get_or_404(models.Tag, ident)
    with pytest.raises(NotFound):
        await db.get_or_404(models.Doc, ident)
    assert (await db.get_or_404(models.Tag, "a")).item_id == 1


@pytest.mark.parametrize(
    "ident",
    [[1, 2], [], {}, {"x": 1}, {"id": 1, "x": 2}, [[1]], [{"id": 1}], {"id": [1]}]
    + [1.5, 1.0, True, False, None, [True], {"id": 1.0}, [None], float("nan")],
)
async def test_get_or_404_json_value_that_is_no_identity(
    db: SQLAlchemy, models: Models, ident: t.Any
) -> None:
    """A JSON-decoded value that cannot be an integer key is a 404, never a
    server error, and never finds row 1 (``1.0``, ``True``)."""
    with pytest.raises(NotFound):
        await db.get_or_404(models.Item, ident)
    assert (await db.get_or_404(models.Item, 1)).name == "one"


@pytest.mark.parametrize("ident", [[1], (1,), {"id": 1}, ["1"], {"id": "+1"}])
async def test_get_or_404_sequence_and_mapping_identities(
    db: SQLAlchemy, models: Models, ident: t.Any
) -> None:
    """A one-item list or tuple, or a dict by attribute name, names a row as
    with ``session.get``; text in them is parsed like a bare string."""
    assert (await db.get_or_404(models.Item, ident)).id == 1


@pytest.mark.parametrize(
    "ident",
    [[1, "x", 3], [1], 1, "1", {"left": 1}, {"left": 1, "x": "x"}, [True, "x"]]
    + [[1.0, "x"], [1, 2], [1, None], [1, ["x"]], {"left": 1, "right": None}],
)
async def test_get_or_404_composite_key_wrong_shape(
    db: SQLAlchemy, models: Models, ident: t.Any
) -> None:
    """A composite key needs one valid value per column: anything else is a 404."""
    with pytest.raises(NotFound):
        await db.get_or_404(models.Pair, ident)
    assert (await db.get_or_404(models.Pair, [1, "x"])).right == "x"
    assert (await db.get_or_404(models.Pair, {"left": "1", "right": "x"})).left == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "left", "right", "x"]), inner)
    ),
    max_leaves=5,
)


def denoted_integer(value: t.Any) -> int | None:
    """The integer a JSON value names as a whole-number key, if any."""
    if isinstance(value, str) and value.strip("+-").isascii():
        value = value.lstrip("+")
        if value.lstrip("-").isdigit() and len(value.lstrip("-")) <= 19:
            return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None


@hypothesis.settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(ident=json_values)
async def test_fuzz_get_or_404_json_values(
    db: SQLAlchemy, models: Models, ident: t.Any
) -> None:
    """Any JSON value: the row it names, or a 404; never another error, and a
    found row is the one the value denotes."""
    for model, key in ((models.Item, "id"), (models.Pair, "left")):
        try:
            instance = await db.get_or_404(model, ident)
        except NotFound:
            continue
        if isinstance(ident, list):
            assert len(ident) == (1 if model is models.Item else 2)
            value = ident[0]
        elif isinstance(ident, dict):
            value = ident[key]
        else:
            value = ident
        assert denoted_integer(value) == getattr(instance, key)


async def test_rejected_identifier_rolls_back(db: SQLAlchemy, models: Models) -> None:
    """When the database or driver rejects an identifier, the session is rolled
    back (PostgreSQL has aborted the transaction), so the next query works."""
    item = await db.get_or_404(models.Item, 1)
    item.name = "changed"
    await db.session.flush()
    with pytest.raises(NotFound):
        await db.get_or_404(models.Tag, "\ud800")
    assert not db.session.in_transaction()
    name = await db.session.scalar(sa.select(models.Item.name).filter_by(id=1))
    assert name == "one"


@pytest.mark.parametrize("change", ["new", "modified"])
async def test_failing_flush_is_not_a_404(
    db: SQLAlchemy, models: Models, change: str
) -> None:
    """Pending changes, new or modified, are flushed before the lookup: their
    failure is raised as itself, even one that looks like a rejected key."""
    if change == "new":
        db.session.add(models.Item(name="\ud800"))
    else:
        (await db.session.get_one(models.Item, 2)).name = "\ud800"
    with pytest.raises((sa.exc.StatementError, UnicodeError)):
        await db.get_or_404(models.Tag, "a")


async def test_get_or_404_unmapped_entity_is_an_error(db: SQLAlchemy) -> None:
    """A class that is not a model is a programming error, not a 404."""
    for ident in ("1", 1):
        with pytest.raises(sa.exc.NoInspectionAvailable):
            await db.get_or_404(str, ident)


async def test_first_or_404(db: SQLAlchemy, models: Models) -> None:
    """The first result, or NotFound for no row or a NULL first column."""
    select = sa.select(models.Item).order_by(models.Item.id.desc())
    assert (await db.first_or_404(select)).id == 3
    with pytest.raises(NotFound, match="no items"):
        await db.first_or_404(select.where(models.Item.id > 5), description="no items")
    with pytest.raises(NotFound):
        await db.first_or_404(sa.select(models.Item.name).filter_by(id=3))


async def test_one_or_404(db: SQLAlchemy, models: Models) -> None:
    """The only result, or NotFound for no row or several."""
    select = sa.select(models.Item)
    assert (await db.one_or_404(select.filter_by(id=2))).name == "two"
    with pytest.raises(NotFound, match="none"):
        await db.one_or_404(select.filter_by(id=9), description="none")
    with pytest.raises(NotFound, match="several"):
        await db.one_or_404(select, description="several")
    assert await db.one_or_404(sa.select(sa.func.count(models.Item.id))) == 3
