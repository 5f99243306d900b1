"""The declarative base behind ``db.Model``: bind keys, table names, repr.

:class:`Model` is a mixin for a SQLAlchemy 2.x ``DeclarativeBase``. ``db.Model`` is
built from it, or a user's own base that already includes it is used as is, which
keeps ``Mapped[...]`` typing intact for type checkers::

    class Base(async_sa.Model, sa_orm.DeclarativeBase):
        pass

    db = SQLAlchemy(url=..., model_class=Base)

    class User(Base):  # fully typed; db.Model is Base
        id: Mapped[int] = mapped_column(primary_key=True)
"""

from __future__ import annotations

import re
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy

_DECLARATIVE_BASES = (sa_orm.DeclarativeBase, sa_orm.DeclarativeBaseNoMeta)


class Model(sa_async.AsyncAttrs):
    """Mixin giving models their bind key, automatic table name and repr.

    - ``__bind_key__ = "x"`` puts the model's table in ``db.metadatas["x"]``;
      subclasses and abstract parents pass it on.
    - Without ``__tablename__``, the class name in snake case is used
      (``UserRole`` → ``user_role``), unless ``disable_autonaming`` is set. A
      subclass that adds no primary key uses single-table inheritance.
    - ``repr`` shows the identity: ``<User 1>``, ``<User (pending 1403...)>``.
    - :class:`~sqlalchemy.ext.asyncio.AsyncAttrs`: ``await user.awaitable_attrs.posts``.
    """

    __async_sa__: t.ClassVar[SQLAlchemy]
    """The ``SQLAlchemy`` object this base belongs to."""

    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        model: t.Any = cls
        is_base = any(base in cls.__bases__ for base in _DECLARATIVE_BASES)
        if not is_base:
            if not hasattr(cls, "__async_sa__"):
                raise TypeError(
                    f"{cls.__name__} is defined on a base that no SQLAlchemy object "
                    "owns yet: create SQLAlchemy(model_class=<your base>) before "
                    "defining models on it."
                )
            _assign_bind_metadata(cls)
            if not cls.__async_sa__._disable_autonaming and _needs_tablename(cls):
                model.__tablename__ = camel_to_snake_case(cls.__name__)
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("__table__", False) is None:
            # __table_cls__ chose single-table inheritance: use the parent's table.
            del model.__table__

    @classmethod
    def __table_cls__(cls, *args: t.Any, **kwargs: t.Any) -> sa.Table | None:
        """Build the model's table, or return ``None`` for single-table inheritance.

        SQLAlchemy calls this while mapping. A name already in the metadata (a
        reflected table) or a primary key means a table of its own; a subclass of
        a mapped model without a primary key shares its parent's table.
        """
        name, schema = args[0], kwargs.get("schema")
        key = name if schema is None else f"{schema}.{name}"
        model: t.Any = cls
        has_primary_key = any(
            (isinstance(arg, sa.Column) and arg.primary_key)
            or isinstance(arg, sa.PrimaryKeyConstraint)
            for arg in args
        )
        parent_has_table = any("__table__" in base.__dict__ for base in cls.__mro__[1:])
        if key in model.metadata.tables or has_primary_key or not parent_has_table:
            return sa.Table(*args, **kwargs)
        if "__tablename__" in cls.__dict__:
            del model.__tablename__
        return None

    def __repr__(self) -> str:
        state: sa_orm.InstanceState[t.Any] = sa.inspect(self, raiseerr=True)
        if state.transient:
            identity = f"(transient {id(self)})"
        elif state.pending:
            identity = f"(pending {id(self)})"
        else:
            identity = ", ".join(map(str, state.identity or ()))
        return f"<{type(self).__name__} {identity}>"


def _assign_bind_metadata(cls: type[Model]) -> None:
    """Point a model with ``__bind_key__`` at the metadata of that bind."""
    model: t.Any = cls
    own = cls.__dict__
    if "metadata" in own or "__table__" in own or not hasattr(cls, "__bind_key__"):
        return
    metadata = cls.__async_sa__._make_metadata(model.__bind_key__)
    if metadata is not getattr(cls, "metadata", None):
        model.metadata = metadata


def _needs_tablename(cls: type) -> bool:
    """Whether ``cls`` should get an automatic ``__tablename__``.

    Not for abstract classes, not when the class names its table itself or a
    mixin or abstract parent does, and not for a ``declared_attr`` name.
    """
    if cls.__dict__.get("__abstract__", False):
        return False
    for base in cls.__mro__:
        if "__tablename__" not in base.__dict__:
            continue
        if isinstance(base.__dict__["__tablename__"], sa_orm.declared_attr):
            return False
        is_mapped_parent = (
            base is not cls
            and not base.__dict__.get("__abstract__", False)
            and issubclass(base, _DECLARATIVE_BASES)
        )
        return is_mapped_parent
    return True


def camel_to_snake_case(name: str) -> str:
    """``CamelCase`` to ``snake_case``, keeping acronyms whole.

    ``UserRole`` → ``user_role``, ``HTMLLayout`` → ``html_layout``,
    ``HTTP2Request`` → ``http2_request``.
    """
    underscored = re.sub(r"((?<=[a-z0-9])[A-Z]|(?!^)[A-Z](?=[a-z]))", r"_\1", name)
    return underscored.lower().lstrip("_")


def make_model_base(
    db: SQLAlchemy,
    model_class: type[t.Any] | None,
    metadata: sa.MetaData | None,
) -> type[t.Any]:
    """Build ``db.Model`` and tie it to ``db``.

    :param model_class: ``None`` for the default base; a ``DeclarativeBase`` (or
        ``DeclarativeBaseNoMeta``) subclass, with or without ``MappedAsDataclass``;
        used as is when it already includes :class:`Model`.
    :param metadata: the default metadata, for the default base only; a custom
        base brings its own.
    :raises TypeError: ``model_class`` is not a 2.x declarative base, or both it
        and ``metadata`` are given.
    """
    if model_class is None:
        namespace: dict[str, t.Any] = {"__async_sa__": db, "__module__": __name__}
        if metadata is not None:
            namespace["metadata"] = metadata
        return type("Model", (Model, sa_orm.DeclarativeBase), namespace)
    if not (
        isinstance(model_class, type) and issubclass(model_class, _DECLARATIVE_BASES)
    ):
        raise TypeError(
            f"model_class must be a subclass of sqlalchemy.orm.DeclarativeBase (or "
            f"DeclarativeBaseNoMeta), not {model_class!r}."
        )
    if metadata is not None:
        raise TypeError(
            "Pass either model_class or metadata, not both: a declarative base "
            "brings its own metadata (set 'metadata = MetaData(...)' on it)."
        )
    if issubclass(model_class, Model):
        if "__async_sa__" in model_class.__dict__:
            raise TypeError(
                f"{model_class.__name__} is already the model base of another "
                "SQLAlchemy object: give each one a base class of its own."
            )
        model_class.__async_sa__ = db
        return model_class
    namespace = {"__async_sa__": db, "__abstract__": True, "__module__": __name__}
    return type(model_class.__name__, (Model, model_class), namespace)
