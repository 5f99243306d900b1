"""The seam between the core and a web framework.

A framework integration (:mod:`async_sa.quart`, :mod:`async_sa.asgi`) needs
only what is here, and the core knows no framework:

- an :class:`Integration`, handed to a ``db`` once with
  :meth:`SQLAlchemy.use_integration <async_sa.SQLAlchemy.use_integration>`: how
  to find the current owner (an app), how to answer a 404, where the current
  request's query string is, and which object owns the queries recorded now;
- :func:`resolve_config`, which turns the ``SQLALCHEMY_*`` keys of an app's
  config and the ``SQLAlchemy()`` arguments into an :class:`OwnerConfig`, and
  :meth:`SQLAlchemy.add_owner <async_sa.SQLAlchemy.add_owner>`, which creates
  that owner's engines from it;
- the lifecycle hooks an integration calls: :func:`remove_session` at the end
  of a request, :func:`commit_session` for commit-on-success, and
  :func:`dispose_engines` when the app stops serving.
"""

from __future__ import annotations

import dataclasses
import logging
import typing as t
from collections.abc import Mapping

from async_sa import engines as _engines
from async_sa import replicas
from async_sa.cleanup import check_close_timeout
from async_sa.cleanup import run_to_completion
from async_sa.engines import BindConfig
from async_sa.engines import BindKey
from async_sa.errors import ModelsCommittedError
from async_sa.errors import NotFound
from async_sa.scoping import current_task

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy


class Integration:
    """What a framework tells the core; the defaults are those of plain asyncio
    code, where there is no app and no request.

    Subclass it and override what the framework changes. Every method is called
    on the hot path (:meth:`current_owner` for each session made), so keep them
    cheap.
    """

    def current_owner(self) -> object | None:
        """The owner of the current context (a Quart app inside its app context),
        or ``None`` when there is none: the ``db``'s own configuration is used."""
        return None

    def not_found(self, description: str | None) -> t.NoReturn:
        """End a ``*_or_404`` helper or a bad page: raise :class:`NotFound`."""
        raise NotFound(description)

    def request_args(self) -> Mapping[str, str] | None:
        """The current request's query string; ``None`` outside a request, where
        :meth:`paginate <async_sa.SQLAlchemy.paginate>` uses its defaults."""
        return None

    def query_scope(self) -> object | None:
        """The object owning the queries recorded now (hashable and
        weak-referenceable), or ``None`` to leave them to the current task;
        see :mod:`async_sa.record_queries`."""
        return None

    def unknown_owner(self, owner: object) -> Exception:
        """The error for a current ``owner`` never given to :meth:`add_owner
        <async_sa.SQLAlchemy.add_owner>`, when the ``db`` has no database of its
        own either."""
        return RuntimeError(
            f"{owner!r} is not registered with this SQLAlchemy object: call "
            "db.add_owner() for it, or pass url= to SQLAlchemy()."
        )

    def missing_owner(self) -> Exception:
        """The error for a ``db`` used outside any owner while it has no
        database of its own."""
        return RuntimeError(
            "No database is configured: pass url= (or binds=) to SQLAlchemy(), "
            "or call db.init_app(app) with SQLALCHEMY_DATABASE_URI (or "
            "SQLALCHEMY_BINDS) set in app.config."
        )


STANDALONE = Integration()
"""The integration of a ``db`` no framework was handed to."""


@dataclasses.dataclass(frozen=True)
class OwnerConfig:
    """The resolved configuration of one owner, for :meth:`add_owner
    <async_sa.SQLAlchemy.add_owner>`; ``None`` keeps the ``SQLAlchemy()``
    argument.

    :param engine_options: bind key → ``create_async_engine`` options, URL
        included (see :func:`async_sa.engines.resolve_engine_options`).
    """

    engine_options: Mapping[BindKey, Mapping[str, t.Any]]
    track_modifications: bool | None = None
    record_queries: bool | None = None
    commit_on_success: bool = False
    close_timeout: float | None = None


def resolve_config(
    db: SQLAlchemy, config: Mapping[str, t.Any], *, base_dir: str, owner_name: str
) -> OwnerConfig:
    """The configuration of an owner whose settings are ``config``.

    ``config`` holds Flask-SQLAlchemy's keys (``SQLALCHEMY_DATABASE_URI``,
    ``SQLALCHEMY_BINDS``, ``SQLALCHEMY_ENGINE_OPTIONS``, ``SQLALCHEMY_ECHO``,
    ``SQLALCHEMY_TRACK_MODIFICATIONS``, ``SQLALCHEMY_RECORD_QUERIES``) and ours
    (``SQLALCHEMY_REPLICAS``: the default bind's read replicas,
    ``SQLALCHEMY_COMMIT_ON_SUCCESS``, ``SQLALCHEMY_CLOSE_TIMEOUT``). Each key
    set beats the ``SQLAlchemy()`` argument: the URL, each bind key, each engine
    option and each switch.

    :param base_dir: where relative SQLite paths are placed (an app's instance
        folder).
    :param owner_name: how error messages name the owner, e.g. ``"the Quart app
        'notes'"``.
    :raises RuntimeError: no URL nor bind is configured at all.
    """
    config_url = config.get("SQLALCHEMY_DATABASE_URI")
    config_binds: Mapping[str | None, BindConfig] = config.get("SQLALCHEMY_BINDS") or {}
    engine_options = {
        **db._engine_options,
        **(config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}),
    }
    if config_url is None and db._url is None and not config_binds and not db._binds:
        raise RuntimeError(
            f"No database is configured for {owner_name}: set "
            "SQLALCHEMY_DATABASE_URI (or SQLALCHEMY_BINDS) in app.config, or pass "
            "url= (or binds=) to SQLAlchemy()."
        )
    common: dict[str, t.Any] = {
        "engine_options": engine_options,
        "echo": _switch(config, "SQLALCHEMY_ECHO"),
        "sqlite_base_dir": base_dir,
    }
    constructor_binds = {k: v for k, v in db._binds.items() if k not in config_binds}
    replicas = config.get("SQLALCHEMY_REPLICAS")
    default_in_config = config_url is not None or None in config_binds
    close_timeout = config.get("SQLALCHEMY_CLOSE_TIMEOUT")
    return OwnerConfig(
        engine_options={
            **_engines.resolve_engine_options(
                url=None if config_url is not None else db._url,
                binds=constructor_binds,
                url_source="url=",
                binds_source="binds=",
                default_replicas=None if default_in_config else replicas,
                **common,
            ),
            **_engines.resolve_engine_options(
                url=config_url,
                binds=config_binds,
                url_source="SQLALCHEMY_DATABASE_URI",
                binds_source="SQLALCHEMY_BINDS",
                default_replicas=replicas if default_in_config else None,
                **common,
            ),
        },
        track_modifications=_switch(config, "SQLALCHEMY_TRACK_MODIFICATIONS"),
        record_queries=_switch(config, "SQLALCHEMY_RECORD_QUERIES"),
        commit_on_success=bool(_switch(config, "SQLALCHEMY_COMMIT_ON_SUCCESS")),
        close_timeout=(
            None
            if close_timeout is None
            else check_close_timeout(close_timeout, where="SQLALCHEMY_CLOSE_TIMEOUT")
        ),
    )


def _switch(config: Mapping[str, t.Any], key: str) -> bool | None:
    """A boolean config key, or ``None`` when it is not set."""
    value = config.get(key)
    return None if value is None else bool(value)


async def remove_session(db: SQLAlchemy, logger: logging.Logger) -> None:
    """Roll back and close the current task's session at the end of a request;
    log failures to ``logger``, never raise them. The task's writes are
    forgotten: its next request reads from the replicas again (see
    :mod:`async_sa.replicas`).

    A session whose close fails, or takes longer than the owner's close
    timeout, has its connection invalidated, so the pool gets it back (and
    discards it) either way. A cancellation of the task received meanwhile is
    raised once the close is done.
    """
    replicas.forget_writes()
    session = db.session.registry.pop(current_task())
    if session is None:
        return
    try:
        await session.close()
    except Exception:
        logger.exception(
            "closing the request's session failed; invalidating its connection"
        )
        try:
            await run_to_completion(session.invalidate())
        except Exception:
            logger.exception("invalidating the session's connection failed")


async def commit_session(db: SQLAlchemy, logger: logging.Logger) -> None:
    """Commit-on-success: commit the current task's session, if it has one.

    A failed commit is raised: the integration answers a 500 instead of the
    success response. A ``models_committed`` receiver failing once the commit
    is durable (:class:`ModelsCommittedError`) is logged to ``logger`` and not
    raised: the data is stored, and a 5xx would make the client send it again.
    """
    if not db.session.registry.has():
        return
    try:
        await db.session.commit()
    except ModelsCommittedError:
        logger.exception(
            "the request's commit is durable, but a models_committed receiver "
            "failed; the response is kept"
        )


async def dispose_engines(db: SQLAlchemy, owner: object | None = None) -> None:
    """Dispose the engines of ``owner`` (``None``: the ``db``'s own), read
    replicas included, when it stops serving, once the sessions of finished
    tasks are closed."""
    await db.session.registry.wait_closed()
    for engine in db.state_for(owner).all_engines():
        await engine.dispose()
