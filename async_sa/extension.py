"""The ``SQLAlchemy`` object: engines, metadata, models and the task-scoped session."""

from __future__ import annotations

import os
import types
import typing as t
import weakref
from collections.abc import Callable
from collections.abc import Coroutine
from collections.abc import Iterable
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from typing_extensions import TypeVar

from async_sa import aborted_transactions
from async_sa import engines as _engines
from async_sa import pagination as _pagination
from async_sa import record_queries as _record_queries
from async_sa import views as _views
from async_sa.cleanup import check_close_timeout
from async_sa.cleanup import DEFAULT_CLOSE_TIMEOUT
from async_sa.engines import BindConfig
from async_sa.engines import BindKey
from async_sa.engines import UrlLike
from async_sa.integration import Integration
from async_sa.integration import OwnerConfig
from async_sa.integration import STANDALONE
from async_sa.model import make_model_base
from async_sa.scoping import ScopedSession
from async_sa.session import AsyncSession
from async_sa.session import Session
from async_sa.session import SessionMaker
from async_sa.session import SessionOptions
from async_sa.state import State
from async_sa.test_isolation import TestIsolation

if t.TYPE_CHECKING:
    from sqlalchemy.sql.selectable import TypedReturnsRows
    from typing_extensions import TypeVarTuple
    from typing_extensions import Unpack

    class _AnyBased(t.Protocol):
        """What no type has but a class with an ``Any`` base (a ``db.Model``
        subclass, to a type checker), which has everything."""

        def _async_sa_only_an_any_based_class_has_this(self) -> None: ...

    _M = t.TypeVar("_M", bound=_AnyBased)
    _U = t.TypeVar("_U")
    _Ts = TypeVarTuple("_Ts")

_ALL = "__all__"
_T = t.TypeVar("_T")
_C = t.TypeVar("_C")
_AS = TypeVar("_AS", bound=AsyncSession, default=AsyncSession, covariant=True)
BindKeys = BindKey | Iterable[BindKey]
"""One bind key, several, or ``"__all__"``."""


class SQLAlchemy(t.Generic[_AS]):
    """One object that owns the engines, the models and the session.

    Standalone, give it the database URL::

        db = SQLAlchemy(url="sqlite:///app.db")
        async with db.session() as session: ...

    Under Quart, give it the app (or call :meth:`init_app` later); the
    ``SQLALCHEMY_*`` config keys then beat the arguments given here.

    :param url: the default engine's URL (bind key ``None``).
    :param binds: bind key → URL, or → ``{"url": ..., **engine options}``.
    :param engine_options: ``create_async_engine`` options for every engine; a
        bind's own options win.
    :param session_options: ``async_sessionmaker`` options; the default is
        ``expire_on_commit=False``. Type checkers see ``db.session`` and
        ``db.sessionmaker`` make the ``class_`` given (for a dict of the keys
        of :class:`~async_sa.session.SessionOptions`). ``class_`` may subclass
        SQLAlchemy's
        ``AsyncSession`` and ``sync_session_class`` its ``Session`` (the default
        is ``class_.sync_session_class``): a class that does not subclass ours
        (:class:`async_sa.AsyncSession`, :class:`async_sa.Session`) is combined
        with ours, ours first, so routing, signals and the cancellation-safe
        close stay.
    :param track_modifications: send :mod:`async_sa.signals` on commit.
    :param record_queries: record queries for :func:`get_recorded_queries`.
    :param close_timeout: seconds closing a session (``close()``, ``remove()``,
        the end of ``async with``, Quart's teardown, the cleanup of a finished
        task's session) waits for the database, default 5. Past it (a hung
        server, a silent network partition) the session's connections are
        terminated and invalidated, and the close returns.
    :param metadata: the default ``MetaData`` (for the default model base).
    :param model_class: a ``DeclarativeBase`` subclass to build ``db.Model`` on.
    :param disable_autonaming: do not derive ``__tablename__`` from class names.
    """

    @t.overload
    def __init__(
        self: SQLAlchemy[_AS],
        app: t.Any = None,
        *,
        url: UrlLike | None = None,
        binds: Mapping[str | None, BindConfig] | None = None,
        engine_options: Mapping[str, t.Any] | None = None,
        session_options: SessionOptions[_AS],
        track_modifications: bool = False,
        record_queries: bool = False,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        metadata: sa.MetaData | None = None,
        model_class: type[t.Any] | None = None,
        disable_autonaming: bool = False,
    ) -> None: ...
    @t.overload
    def __init__(
        self: SQLAlchemy[AsyncSession],
        app: t.Any = None,
        *,
        url: UrlLike | None = None,
        binds: Mapping[str | None, BindConfig] | None = None,
        engine_options: Mapping[str, t.Any] | None = None,
        session_options: Mapping[str, t.Any] | None = None,
        track_modifications: bool = False,
        record_queries: bool = False,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        metadata: sa.MetaData | None = None,
        model_class: type[t.Any] | None = None,
        disable_autonaming: bool = False,
    ) -> None: ...
    def __init__(
        self,
        app: t.Any = None,
        *,
        url: UrlLike | None = None,
        binds: Mapping[str | None, BindConfig] | None = None,
        engine_options: Mapping[str, t.Any] | None = None,
        session_options: Mapping[str, t.Any] | None = None,
        track_modifications: bool = False,
        record_queries: bool = False,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        metadata: sa.MetaData | None = None,
        model_class: type[t.Any] | None = None,
        disable_autonaming: bool = False,
    ) -> None:
        self._url = url
        self._binds = dict(binds or {})
        self._engine_options = dict(engine_options or {})
        self._track_modifications = track_modifications
        self._record_queries = record_queries
        self._close_timeout = check_close_timeout(close_timeout, where="close_timeout")
        self._disable_autonaming = disable_autonaming
        self._standalone: State | None = None
        self._owner_states: weakref.WeakKeyDictionary[t.Any, State] = (
            weakref.WeakKeyDictionary()
        )
        self._integration: Integration = STANDALONE

        self.metadatas: dict[BindKey, sa.MetaData] = {}
        """Bind key → the ``MetaData`` holding the tables of that bind: one for
        each configured bind (``binds=``, and ``SQLALCHEMY_BINDS`` once
        ``init_app`` ran), and one for any other key a model or table uses."""
        self.Model: type[t.Any] = make_model_base(self, model_class, metadata)
        """The declarative base for models; see :class:`async_sa.Model`."""
        self.Model.metadata.info["bind_key"] = None
        self.metadatas[None] = self.Model.metadata
        for key in self._binds:
            self._make_metadata(key)

        self.sessionmaker: SessionMaker[_AS] = _make_sessionmaker(
            self._current_state, session_options or {}
        )
        """Makes explicit, unscoped sessions configured like ``db.session``."""
        self.session: ScopedSession[_AS] = ScopedSession(self.sessionmaker)
        """The current task's session; see :class:`async_sa.scoping.ScopedSession`."""
        if app is not None:
            self.init_app(app)

    def init_app(self, app: t.Any) -> None:
        """Configure this object for a Quart ``app`` (needs the ``quart`` extra)."""
        from async_sa.quart import init_app

        init_app(self, app)

    # -- the framework seam (see async_sa.integration) -----------------------------

    def use_integration(self, integration: Integration) -> None:
        """Hand the framework's :class:`~async_sa.integration.Integration` over,
        once: from now on it names the current owner, answers 404s and gives
        the query string. Handing the same one again does nothing.

        :raises RuntimeError: another integration was handed over already.
        """
        if integration is self._integration:
            return
        if self._integration is not STANDALONE:
            raise RuntimeError(
                f"This SQLAlchemy object already serves {self._integration!r}; "
                f"it cannot serve {integration!r} too: use one SQLAlchemy object "
                "per framework."
            )
        self._integration = integration
        _record_queries.register_scope(integration.query_scope)

    def add_owner(self, owner: t.Any, config: OwnerConfig) -> State:
        """Create the engines of ``owner`` (an app) from ``config`` (see
        :func:`~async_sa.integration.resolve_config`); sessions made while the
        integration names ``owner`` current use them, and its commit signals
        are sent by ``owner``. The engines are forgotten with ``owner``.

        :raises RuntimeError: ``owner`` was added already.
        """
        if owner in self._owner_states:
            raise RuntimeError(
                f"{owner!r} already has its engines from this SQLAlchemy object: "
                "add each owner once."
            )
        state = self._owner_states[owner] = self._make_state(
            config.engine_options,
            sender=owner,
            track_modifications=config.track_modifications,
            record_queries=config.record_queries,
            commit_on_success=config.commit_on_success,
            close_timeout=config.close_timeout,
        )
        return state

    def state_for(self, owner: t.Any = None) -> State:
        """The engines and switches of ``owner``; ``None``: this object's own
        (``url=``, ``binds=``).

        :raises KeyError: ``owner`` was never added.
        """
        if owner is None:
            return self._standalone_state()
        return self._owner_states[owner]

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._standalone is not None:
            engines = self._standalone.engines
            if None not in engines:
                return f"<{name} (no default engine) +{len(engines)} binds>"
            url, binds = _engines.redact(engines[None].url), len(engines) - 1
        elif self._url is not None:
            try:
                url = _engines.redact(sa.make_url(self._url))
            except sa.exc.ArgumentError:
                url = "(invalid URL)"
            binds = len(self._binds)
        else:
            return f"<{name}>"
        return f"<{name} {url} +{binds} binds>"

    def __getattr__(self, name: str) -> t.Any:
        """``db.Column``, ``db.select``, ...: names from ``sqlalchemy`` and
        ``sqlalchemy.orm``, as Flask-SQLAlchemy offers them."""
        if not name.startswith("_"):
            for module in (sa, sa_orm):
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )

    # -- engines -----------------------------------------------------------------

    @property
    def engines(self) -> Mapping[BindKey, sa_async.AsyncEngine]:
        """Bind key → engine of the current owner; ``None`` is the default engine."""
        return self._current_state().engines

    @property
    def replicas(self) -> Mapping[BindKey, tuple[sa_async.AsyncEngine, ...]]:
        """Bind key → the engines of its read replicas (current owner), for the
        binds that have some; see :mod:`async_sa.replicas`."""
        return self._current_state().replica_engines

    @property
    def engine(self) -> sa_async.AsyncEngine:
        """The default engine (bind key ``None``)."""
        return self._current_state().engine(None)

    def get_engine(self, bind_key: BindKey = None) -> sa_async.AsyncEngine:
        """The engine for ``bind_key``.

        :raises UnknownBindKeyError: no engine is configured for that key.
        """
        return self._current_state().engine(bind_key)

    def _current_state(self) -> State:
        """The state sessions made now belong to: the current owner's, else ours.

        Inside an owner this object does not know, its own configuration
        (``url=`` / ``binds=``) is used if it has one; otherwise that is the
        integration's "did you register it?" error.
        """
        integration = self._integration
        if integration is not STANDALONE:
            owner = integration.current_owner()
            if owner is not None:
                state = self._owner_states.get(owner)
                if state is not None:
                    return state
                if self._url is None and not self._binds:
                    raise integration.unknown_owner(owner)
        standalone = self._standalone
        if standalone is None:
            standalone = self._standalone = self._make_standalone_state()
        return standalone

    def _standalone_state(self) -> State:
        standalone = self._standalone
        if standalone is None:
            standalone = self._standalone = self._make_standalone_state()
        return standalone

    def _make_standalone_state(self) -> State:
        if self._url is None and not self._binds:
            raise self._integration.missing_owner()
        options = _engines.resolve_engine_options(
            url=self._url,
            binds=self._binds,
            engine_options=self._engine_options,
            echo=None,
            sqlite_base_dir=os.getcwd(),
            url_source="url=",
            binds_source="binds=",
        )
        return self._make_state(options, sender=self)

    def _make_state(
        self,
        engine_options: Mapping[BindKey, Mapping[str, t.Any]],
        *,
        sender: t.Any,
        track_modifications: bool | None = None,
        record_queries: bool | None = None,
        commit_on_success: bool = False,
        close_timeout: float | None = None,
    ) -> State:
        """Create the engines of one owner (the standalone ``db`` or one app),
        and a metadata for each of its bind keys."""
        engines: dict[BindKey, sa_async.AsyncEngine] = {}
        replica_engines: dict[BindKey, tuple[sa_async.AsyncEngine, ...]] = {}
        replica_max_lag: dict[BindKey, float] = {}
        for key, options in engine_options.items():
            self._make_metadata(key)
            primary = {
                k: v
                for k, v in options.items()
                if k not in (_engines.REPLICAS, _engines.MAX_LAG)
            }
            engines[key] = _engines.create_engine(primary)
            if _engines.REPLICAS in options:
                replica_engines[key] = tuple(
                    _engines.create_engine(replica)
                    for replica in options[_engines.REPLICAS]
                )
            if _engines.MAX_LAG in options:
                replica_max_lag[key] = options[_engines.MAX_LAG]
        state = State(
            engines=engines,
            replica_engines=replica_engines,
            replica_max_lag=replica_max_lag,
            sender=sender,
            metadatas=self.metadatas,
            track_modifications=(
                self._track_modifications
                if track_modifications is None
                else track_modifications
            ),
            record_queries=(
                self._record_queries if record_queries is None else record_queries
            ),
            commit_on_success=commit_on_success,
            close_timeout=(
                self._close_timeout if close_timeout is None else close_timeout
            ),
        )
        aborted_transactions.watch(state.all_engines())
        if state.record_queries:
            _record_queries.listen(state.all_engines())
        return state

    async def dispose(self) -> None:
        """Dispose every engine this object created, standalone and per app,
        read replicas included.

        The calling task's session is closed first, and sessions of finished
        tasks still closing in the background are waited for. Pooled
        connections are closed (another event loop's in that loop); those other
        tasks still hold are closed when they come back. The engines stay
        usable: the next checkout opens a new connection.
        """
        await self.session.remove()
        await self.session.registry.wait_closed()
        states = [*self._owner_states.values()]
        if self._standalone is not None:
            states.append(self._standalone)
        for state in states:
            for engine in state.all_engines():
                await engine.dispose()

    async def __aenter__(self) -> SQLAlchemy[_AS]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.dispose()

    def test_isolation(self) -> TestIsolation:
        """Roll back everything written inside the block, by any task::

            async with db.test_isolation():
                ...  # fixtures, the test, test-client requests

        One connection and outer transaction per engine of the current owner
        (the app whose context is active, else this object); every session
        made meanwhile joins it with savepoints, so ``commit()``,
        ``rollback()`` and ``begin_nested()`` behave as in production, and
        ``db.session`` is one session for every task (see
        :meth:`db.session.shared() <async_sa.scoping.ScopedSession.shared>`).
        Details in :mod:`async_sa.test_isolation`.

        :raises RuntimeError: no running event loop, nested, or an app this
            object is not registered with.
        """
        return TestIsolation(self)

    # -- view helpers -------------------------------------------------------------
    # Each returns the helper's coroutine rather than awaiting it in one more:
    # every suspension of a request would pass through that frame too.

    def get_or_404(
        self,
        entity: type[_T],
        ident: t.Any,
        *,
        description: str | None = None,
        **kwargs: t.Any,
    ) -> Coroutine[t.Any, t.Any, _T]:
        """``await db.session.get(entity, ident, **kwargs)``, or a 404 when there
        is no such row: ``abort(404)`` under Quart, :class:`async_sa.NotFound`
        standalone. A malformed identifier (``"abc"`` for an integer key, a
        number out of range) is a 404 too; see :func:`async_sa.views.get_or_404`.

        :param description: the 404's description.
        :param kwargs: passed to ``session.get``, such as ``options=[...]``.
        """
        return _views.get_or_404(self, entity, ident, description=description, **kwargs)

    # The helpers below return the first column's value: typed as that column
    # for a statement of one column or entity, ``Any`` for several (as
    # ``session.scalar`` types them), on SQLAlchemy 2.0 and 2.1 alike
    # (typing_tests/views.py). Their overloads, in order:
    # 1. a statement of one ``db.Model`` subclass on 2.1 (``Select[Item]``):
    #    its ``Any`` base would match 2. with nothing to infer (``Never``);
    # 2. one column on 2.0, whose statements have one tuple of column types
    #    (``Select[tuple[User]]``);
    # 3. several columns on 2.0, which 4. would take for one tuple column;
    # 4. one column on 2.1, which has one type per column (``Select[User]``);
    # 5. anything else (several columns on 2.1, ``text()``): ``Any``.
    # The forms of the other version are ill-typed there (hence the ignores)
    # and match no statement but one of a single tuple-typed column. A
    # statement SQLAlchemy types with ``Never`` (``select(literal_column(...))``)
    # gives ``Never``, as ``Result.scalar_one()`` does; on 2.0 ``paginate`` of
    # a ``Select[tuple[Any]]`` is ``Any`` (its overloads differ only in what
    # that ``Any`` would be), of a ``Select[Any]`` a ``Pagination[Any]``.

    @t.overload
    def first_or_404(
        self,
        statement: TypedReturnsRows[_M],  # type: ignore[type-var,unused-ignore]
        *,
        description: str | None = None,
    ) -> Coroutine[t.Any, t.Any, _M]: ...
    @t.overload
    def first_or_404(
        self, statement: TypedReturnsRows[tuple[_T]], *, description: str | None = None
    ) -> Coroutine[t.Any, t.Any, _T]: ...
    @t.overload
    def first_or_404(
        self,
        statement: TypedReturnsRows[tuple[_T, _U, Unpack[_Ts]]],
        *,
        description: str | None = None,
    ) -> Coroutine[t.Any, t.Any, t.Any]: ...
    @t.overload
    def first_or_404(
        self,
        statement: TypedReturnsRows[_T],  # type: ignore[type-var,unused-ignore]
        *,
        description: str | None = None,
    ) -> Coroutine[t.Any, t.Any, _T]: ...
    @t.overload
    def first_or_404(
        self, statement: sa.Executable, *, description: str | None = None
    ) -> Coroutine[t.Any, t.Any, t.Any]: ...
    def first_or_404(
        self, statement: sa.Executable, *, description: str | None = None
    ) -> Coroutine[t.Any, t.Any, t.Any]:
        """The first column of the first row of ``statement``
        (``session.scalar``), or a 404 when there is no row or that value is
        ``NULL``.

        ``await db.first_or_404(select(User))`` is typed as ``User``.
        """
        return _views.first_or_404(self, statement, description=description)

    @t.overload
    def one_or_404(
        self,
        statement: TypedReturnsRows[_M],  # type: ignore[type-var,unused-ignore]
        *,
        description: str | None = None,
    ) -> Coroutine[t.Any, t.Any, _M]: ...
    @t.overload
    def one_or_404(
        self, statement: TypedReturnsRows[tuple[_T]], *, description: str | None = None
    ) -> Coroutine[t.Any, t.Any, _T]: ...
    @t.overload
    def one_or_404(
        self,
        statement: TypedReturnsRows[tuple[_T, _U, Unpack[_Ts]]],
        *,
        description: str | None = None,
    ) -> Coroutine[t.Any, t.Any, t.Any]: ...
    @t.overload
    def one_or_404(
        self,
        statement: TypedReturnsRows[_T],  # type: ignore[type-var,unused-ignore]
        *,
        description: str | None = None,
    ) -> Coroutine[t.Any, t.Any, _T]: ...
    @t.overload
    def one_or_404(
        self, statement: sa.Executable, *, description: str | None = None
    ) -> Coroutine[t.Any, t.Any, t.Any]: ...
    def one_or_404(
        self, statement: sa.Executable, *, description: str | None = None
    ) -> Coroutine[t.Any, t.Any, t.Any]:
        """The first column of the only row of ``statement`` (``scalar_one()``),
        or a 404 when there is no row or more than one.

        ``await db.one_or_404(select(User))`` is typed as ``User``.
        """
        return _views.one_or_404(self, statement, description=description)

    @t.overload
    def paginate(
        self,
        select: sa.Select[_M],  # type: ignore[type-var,unused-ignore]
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Coroutine[t.Any, t.Any, _pagination.Pagination[_M]]: ...
    @t.overload
    def paginate(
        self,
        select: sa.Select[tuple[_T]],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Coroutine[t.Any, t.Any, _pagination.Pagination[_T]]: ...
    @t.overload
    def paginate(
        self,
        select: sa.Select[tuple[_T, _U, Unpack[_Ts]]],
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Coroutine[t.Any, t.Any, _pagination.Pagination[t.Any]]: ...
    @t.overload
    def paginate(
        self,
        select: sa.Select[_T],  # type: ignore[type-var,unused-ignore]
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Coroutine[t.Any, t.Any, _pagination.Pagination[_T]]: ...
    @t.overload
    def paginate(
        self,
        select: sa.Select,  # type: ignore[type-arg]
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Coroutine[t.Any, t.Any, _pagination.Pagination[t.Any]]: ...
    def paginate(
        self,
        select: sa.Select,  # type: ignore[type-arg]
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Coroutine[t.Any, t.Any, _pagination.Pagination[t.Any]]:
        """Load one page of ``select`` with the current task's session.

        ``page`` and ``per_page`` default to the request's ``page`` and
        ``per_page`` query arguments under Quart, else to 1 and 20; arguments
        given here win.

        :param max_per_page: the most items per page (default 100), whatever the
            query string asks; kept by ``next()`` and ``prev()``.
        :param error_out: a 404 (``abort(404)`` under Quart,
            :class:`async_sa.NotFound` standalone) for a page or ``per_page``
            that is not an integer or below 1, or an empty page after the first.
            Without it, bad values fall back to the defaults.
        :param count: count the items of all pages; ``total`` is ``None`` without.
        """
        return _pagination.paginate(
            self,
            select,
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )

    # -- metadata and tables ----------------------------------------------------------

    @property
    def metadata(self) -> sa.MetaData:
        """The default ``MetaData`` (bind key ``None``)."""
        return self.metadatas[None]

    def _make_metadata(self, bind_key: BindKey) -> sa.MetaData:
        """The metadata of ``bind_key``, created on first use with the default
        metadata's naming convention."""
        metadata = self.metadatas.get(bind_key)
        if metadata is None:
            metadata = sa.MetaData(
                naming_convention=self.metadata.naming_convention,
                info={"bind_key": bind_key},
            )
            self.metadatas[bind_key] = metadata
        return metadata

    def Table(  # noqa: N802 - named like the class it makes, as in Flask-SQLAlchemy
        self, name: str, *args: t.Any, bind_key: BindKey = None, **kwargs: t.Any
    ) -> sa.Table:
        """A ``sqlalchemy.Table`` in the metadata of ``bind_key``.

        A ``MetaData`` given as the second argument is used instead.
        """
        if args and isinstance(args[0], sa.MetaData):
            return sa.Table(name, *args, **kwargs)
        return sa.Table(name, self._make_metadata(bind_key), *args, **kwargs)

    async def create_all(self, bind_key: BindKeys = _ALL) -> None:
        """Create the tables of ``bind_key``: one key, a list, or ``"__all__"``.

        :raises UnknownBindKeyError: a key (or a model's ``__bind_key__``) has no
            engine configured.
        """
        await self._run_on_metadata("create_all", bind_key)

    async def drop_all(self, bind_key: BindKeys = _ALL) -> None:
        """Drop the tables of ``bind_key``: one key, a list, or ``"__all__"``."""
        await self._run_on_metadata("drop_all", bind_key)

    async def reflect(self, bind_key: BindKeys = _ALL) -> None:
        """Load the tables of ``bind_key``'s databases into their metadata."""
        await self._run_on_metadata("reflect", bind_key)

    async def _run_on_metadata(self, operation: str, bind_key: BindKeys) -> None:
        state = self._current_state()
        if bind_key == _ALL:
            keys: list[BindKey] = [
                key
                for key, metadata in self.metadatas.items()
                if metadata.tables or key in state.engines
            ]
            if operation == "reflect":
                keys = list(state.engines)
        elif bind_key is None or isinstance(bind_key, str):
            keys = [bind_key]
        else:
            keys = list(bind_key)
        for key in keys:
            engine = state.engine(key)
            metadata = self._make_metadata(key)
            async with engine.begin() as connection:
                await connection.run_sync(getattr(metadata, operation))


def _make_sessionmaker(
    find_state: Callable[[], State], options: Mapping[str, t.Any]
) -> SessionMaker[t.Any]:
    options = {"class_": AsyncSession, "expire_on_commit": False, **options}
    if "scopefunc" in options:
        raise TypeError(
            "session_options['scopefunc'] is not supported: db.session is "
            "always scoped to the current asyncio task."
        )
    given = options["class_"]
    class_ = _with_ours(given, AsyncSession, "class_")
    sync_class = options.get("sync_session_class", given.sync_session_class)
    options["class_"] = class_
    options["sync_session_class"] = _with_ours(
        sync_class, Session, "sync_session_class"
    )
    return SessionMaker(find_state, **options)


def _with_ours(given: t.Any, ours: type[_C], option: str) -> type[_C]:
    """The session class to use for ``session_options[option]``.

    A subclass of ours is used as it is; the plain SQLAlchemy class stands for
    ours; any other subclass of the plain class is combined with ours, ours
    first in the MRO, so that bind-key routing, the commit signals and the
    cancellation-safe close stay.
    """
    plain, plain_name = _PLAIN[ours]
    if not (isinstance(given, type) and issubclass(given, plain)):
        raise TypeError(
            f"session_options[{option!r}] must be a subclass of {plain_name} "
            f"(async_sa combines it with async_sa.{ours.__qualname__}), "
            f"not {given!r}."
        )
    if issubclass(given, ours):
        return given
    if given is plain:
        return ours
    return _combined(given, ours)


_PLAIN: dict[type, tuple[type, str]] = {
    AsyncSession: (sa_async.AsyncSession, "sqlalchemy.ext.asyncio.AsyncSession"),
    Session: (sa_orm.Session, "sqlalchemy.orm.Session"),
}
"""Our session class → the SQLAlchemy class it extends, and its public name."""


_combined_classes: dict[tuple[type, type], type] = {}
"""(given class, ours) → the class combining them, made once."""


def _combined(given: type, ours: type[_C]) -> type[_C]:
    """``given`` with ``ours`` first in its MRO (named like ``given``)."""
    combined = _combined_classes.get((given, ours))
    if combined is None:
        combined = _combined_classes[given, ours] = types.new_class(
            given.__name__,
            (ours, given),
            exec_body=lambda namespace: namespace.update(
                __module__=given.__module__,
                __qualname__=given.__qualname__,
                __doc__=given.__doc__,
            ),
        )
    return t.cast("type[_C]", combined)
