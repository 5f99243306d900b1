"""db.Model: bind keys, automatic table names, repr, custom declarative bases."""

from __future__ import annotations

import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

import async_sa
from async_sa import SQLAlchemy
from async_sa.model import camel_to_snake_case
from tests.conftest import MakeDb


def make_bases() -> list[type[t.Any]]:
    """Fresh bases (each has its own registry), one per style we support."""

    class Typed(async_sa.Model, sa_orm.DeclarativeBase):
        pass

    class TypedDataclass(
        async_sa.Model, sa_orm.MappedAsDataclass, sa_orm.DeclarativeBase
    ):
        pass

    class Plain(sa_orm.DeclarativeBase):
        pass

    class Dataclass(sa_orm.MappedAsDataclass, sa_orm.DeclarativeBase):
        pass

    class NoMeta(sa_orm.DeclarativeBaseNoMeta):
        pass

    return [Typed, TypedDataclass, Plain, Dataclass, NoMeta]


BASE_STYLES = ["default", "typed", "typed_dataclass", "plain", "dataclass", "nometa"]


@pytest.fixture(params=BASE_STYLES)
def model_db(request: pytest.FixtureRequest) -> SQLAlchemy:
    """A db whose Model is built in each of the supported ways."""
    if request.param == "default":
        return SQLAlchemy(url="sqlite://", binds={"a": "sqlite://"})
    base = make_bases()[BASE_STYLES.index(request.param) - 1]
    return SQLAlchemy(url="sqlite://", binds={"a": "sqlite://"}, model_class=base)


def is_dataclass_db(db: SQLAlchemy) -> bool:
    return issubclass(db.Model, sa_orm.MappedAsDataclass)


def dataclass_columns(db: SQLAlchemy) -> dict[str, t.Any]:
    """Column options keeping a dataclass base's __init__ free of these fields."""
    return {"init": False} if is_dataclass_db(db) else {}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("User", "user"),
        ("UserRole", "user_role"),
        ("HTMLLayout", "html_layout"),
        ("HTTP2Request", "http2_request"),
        ("ABTest", "ab_test"),
        ("UserV2", "user_v2"),
        ("URL", "url"),
        ("_Private", "private"),
    ],
)
def test_camel_case_becomes_snake_case(name: str, expected: str) -> None:
    """Class names map to table names keeping acronyms whole."""
    assert camel_to_snake_case(name) == expected


async def test_model_gets_table_name_and_default_metadata(model_db: SQLAlchemy) -> None:
    """A model without __tablename__ is named after its class, in db.metadata."""

    class UserRole(model_db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    assert UserRole.__tablename__ == "user_role"
    assert UserRole.__table__.metadata is model_db.metadata
    assert model_db.metadata.info["bind_key"] is None
    assert model_db.metadatas[None] is model_db.metadata


async def test_bind_key_puts_table_in_that_binds_metadata(model_db: SQLAlchemy) -> None:
    """__bind_key__ routes the table into db.metadatas[key], tagged with the key."""

    class Post(model_db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Post.__table__.metadata is model_db.metadatas["a"]
    assert model_db.metadatas["a"].info["bind_key"] == "a"
    assert "post" not in model_db.metadata.tables


async def test_same_table_name_may_live_on_two_binds(model_db: SQLAlchemy) -> None:
    """Tables of different binds do not clash by name."""

    class Item(model_db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    class OtherItem(model_db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Item.__table__ is not OtherItem.__table__


async def test_bind_key_is_inherited_by_joined_subclass(model_db: SQLAlchemy) -> None:
    """A joined-inheritance child of a bound model shares its metadata."""
    columns = dataclass_columns(model_db)

    class User(model_db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True, **columns)
        kind: Mapped[str] = mapped_column(sa.String(20), **columns)
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "user"}

    class Admin(User):
        id: Mapped[int] = mapped_column(
            sa.ForeignKey(User.id), primary_key=True, **columns
        )
        __mapper_args__ = {"polymorphic_identity": "admin"}

    assert Admin.__tablename__ == "admin"
    assert Admin.__table__.metadata is model_db.metadatas["a"]
    assert "metadata" not in Admin.__dict__


async def test_bind_key_from_abstract_parent(model_db: SQLAlchemy) -> None:
    """An abstract parent's __bind_key__ applies to its concrete children."""

    class Audited(model_db.Model):  # type: ignore[name-defined,misc]
        __abstract__ = True
        __bind_key__ = "a"

    class Event(Audited):
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Event.__table__.metadata is model_db.metadatas["a"]


async def test_single_table_subclass_uses_parent_table(model_db: SQLAlchemy) -> None:
    """A subclass adding no primary key uses single-table inheritance."""
    columns = dataclass_columns(model_db)

    class Employee(model_db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True, **columns)
        kind: Mapped[str] = mapped_column(sa.String(20), **columns)
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "e"}

    class Manager(Employee):
        __mapper_args__ = {"polymorphic_identity": "m"}

    assert Manager.__table__ is Employee.__table__
    assert Manager.__tablename__ == "employee"


async def test_explicit_and_mixin_table_names_are_kept(model_db: SQLAlchemy) -> None:
    """An explicit name, a mixin's name or a declared_attr name wins."""

    class Named(model_db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "custom_name"
        id: Mapped[int] = mapped_column(primary_key=True)

    class NameFromAttr:
        @sa_orm.declared_attr.directive
        def __tablename__(cls: type[t.Any]) -> str:
            return f"t_{cls.__name__.lower()}"

    class Thing(NameFromAttr, model_db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Named.__table__.name == "custom_name"
    assert Thing.__table__.name == "t_thing"


async def test_existing_table_is_reused_by_name(model_db: SQLAlchemy) -> None:
    """A model named like an existing db.Table maps onto that table."""
    table = model_db.Table("reflected", sa.Column("id", sa.Integer, primary_key=True))

    class Reflected(model_db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "reflected"

    assert Reflected.__table__ is table


async def test_model_without_primary_key_gets_sqlalchemys_error(
    model_db: SQLAlchemy,
) -> None:
    """A model with no primary key and no parent table fails as SQLAlchemy says."""
    with pytest.raises(
        sa.exc.ArgumentError, match="could not assemble any primary key"
    ):

        class Keyless(model_db.Model):  # type: ignore[name-defined,misc]
            name: Mapped[str] = mapped_column(sa.String(10))


def test_disable_autonaming_requires_explicit_names() -> None:
    """With disable_autonaming, a model without __tablename__ is SQLAlchemy's error."""
    db = SQLAlchemy(url="sqlite://", disable_autonaming=True)
    with pytest.raises(sa.exc.InvalidRequestError, match="__tablename__"):

        class Unnamed(db.Model):  # type: ignore[name-defined,misc]
            id: Mapped[int] = mapped_column(primary_key=True)


async def test_repr_shows_transient_pending_and_identity(make_db: MakeDb) -> None:
    """repr is <Model (transient id)>, <Model (pending id)>, then <Model pk>."""
    db = make_db()

    class Todo(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    await db.create_all()
    todo = Todo()
    assert repr(todo) == f"<Todo (transient {id(todo)})>"
    db.session.add(todo)
    assert repr(todo) == f"<Todo (pending {id(todo)})>"
    await db.session.commit()
    assert repr(todo) == "<Todo 1>"


def test_dataclass_base_keeps_dataclass_repr() -> None:
    """A MappedAsDataclass model keeps the dataclass repr and constructor."""
    db = SQLAlchemy(url="sqlite://", model_class=make_bases()[1])

    class Point(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        x: Mapped[int] = mapped_column(default=0)

    assert repr(Point(id=1, x=2)).endswith("Point(id=1, x=2)")


async def test_typed_base_is_db_model_and_keeps_mapped_types(make_db: MakeDb) -> None:
    """A base including async_sa.Model is db.Model itself: models subclass it typed."""

    class Base(async_sa.Model, sa_orm.MappedAsDataclass, sa_orm.DeclarativeBase):
        pass

    db = make_db(model_class=Base)

    class Book(Base):
        id: Mapped[int] = mapped_column(primary_key=True, init=False)
        title: Mapped[str] = mapped_column(sa.String(50))

    assert db.Model is Base
    await db.create_all()
    db.session.add(Book(title="Dune"))
    await db.session.commit()
    book = await db.session.scalar(sa.select(Book))
    assert book is not None
    title: str = book.title
    assert title == "Dune"


async def test_awaitable_attrs_load_relationships(make_db: MakeDb) -> None:
    """AsyncAttrs: await obj.awaitable_attrs.rel loads a lazy relationship."""
    db = make_db()

    class Parent(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        children: Mapped[list[Child]] = sa_orm.relationship()

    class Child(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        parent_id: Mapped[int] = mapped_column(sa.ForeignKey(Parent.id))

    await db.create_all()
    db.session.add(Parent(id=1, children=[Child(id=1), Child(id=2)]))
    await db.session.commit()
    await db.session.remove()
    parent = await db.session.get(Parent, 1)
    assert parent is not None
    assert len(await parent.awaitable_attrs.children) == 2


def test_model_class_must_be_a_declarative_base() -> None:
    """Anything else is refused with the base to use."""
    with pytest.raises(TypeError, match="subclass of sqlalchemy.orm.DeclarativeBase"):
        SQLAlchemy(model_class=object)


def test_model_class_and_metadata_together_are_refused() -> None:
    """A custom base brings its own metadata; passing both is ambiguous."""
    with pytest.raises(TypeError, match="either model_class or metadata"):
        SQLAlchemy(model_class=make_bases()[2], metadata=sa.MetaData())


def test_custom_metadata_becomes_default_and_binds_copy_its_naming() -> None:
    """metadata= is db.metadata; bind metadatas copy its naming convention."""
    convention = {"pk": "pk_%(table_name)s"}
    db = SQLAlchemy(url="sqlite://", metadata=sa.MetaData(naming_convention=convention))

    class Thing(db.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "a"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert db.metadata.naming_convention == convention
    assert db.metadatas["a"].naming_convention == convention


def test_table_goes_to_bind_metadata_unless_metadata_given() -> None:
    """db.Table(..., bind_key=) uses that bind's metadata; a MetaData argument wins."""
    db = SQLAlchemy()
    default = db.Table("t_default", sa.Column("id", sa.Integer))
    bound = db.Table("t_bound", sa.Column("id", sa.Integer), bind_key="a")
    own = sa.MetaData()
    explicit = db.Table("t_own", own, sa.Column("id", sa.Integer), bind_key="b")
    assert default.metadata is db.metadata
    assert bound.metadata is db.metadatas["a"]
    assert explicit.metadata is own
    assert "b" not in db.metadatas


def test_base_cannot_serve_two_databases() -> None:
    """A typed base belongs to one SQLAlchemy object; a second is refused."""

    class Base(async_sa.Model, sa_orm.DeclarativeBase):
        pass

    SQLAlchemy(model_class=Base)
    with pytest.raises(TypeError, match="already the model base of another"):
        SQLAlchemy(model_class=Base)


def test_model_on_a_base_no_db_owns_yet_says_what_to_do() -> None:
    """Defining a model before SQLAlchemy(model_class=Base) names the fix."""

    class Base(async_sa.Model, sa_orm.DeclarativeBase):
        pass

    with pytest.raises(TypeError, match=r"create SQLAlchemy\(model_class="):

        class Early(Base):
            id: Mapped[int] = mapped_column(primary_key=True)
