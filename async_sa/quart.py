"""The Quart extension: engines per app, and the session lifecycle of every request.

``db.init_app(app)`` (or ``SQLAlchemy(app)``) reads the ``SQLALCHEMY_*`` keys of
``app.config``, creates that app's engines and registers the hooks below. Only
this module imports Quart; the rest of :mod:`async_sa` works without it.

- **Teardown** (``teardown_appcontext``): the session of the current task is
  rolled back and closed, for HTTP requests, websocket handlers,
  ``app.add_background_task`` tasks, ``app.test_client()`` and CLI commands
  running under ``async with app.app_context()``. It never commits. A failure
  is logged (and the connection invalidated), never raised, and a handler
  cancelled by a client disconnect still has its session closed. A database
  that does not answer within ``SQLALCHEMY_CLOSE_TIMEOUT`` seconds (default 5;
  ``close_timeout=``) has the connection terminated, so a hung server never
  holds the request's worker for longer.
- **Commit on success** (``SQLALCHEMY_COMMIT_ON_SUCCESS = True``): the request's
  session is committed in ``after_request`` when the response status is below
  400. A failed commit turns the response into a 500, so the client never sees
  a 2xx for data that was not stored; a ``models_committed`` receiver failing
  once the data is stored is logged and the response kept.
- **Serving**: the app's engines are disposed ``after_serving``.
- **Shell**: ``quart shell`` has ``db`` and every model.
- **Migrations**: ``quart db ...`` (see :mod:`async_sa.cli`), unless the app
  already has a ``db`` command.
- **Signals**: the sender of :mod:`async_sa.signals` is the app.

Streamed responses: Quart tears the app context down *before* the body is
iterated, so the view's session is already closed by then. Query inside the
generator and decorate it with :func:`quart.stream_with_context`; it pushes the
context again, and its teardown closes the generator's session when the stream
ends::

    @app.get("/notes.txt")
    async def notes_text():
        @stream_with_context
        async def lines():
            async for note in await db.session.stream_scalars(select(Note)):
                yield f"{note.text}\\n"

        return lines()
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import sys
import typing as t
from collections.abc import Mapping

import quart
from quart.globals import _cv_app
from werkzeug.exceptions import InternalServerError

from async_sa import engines as _engines
from async_sa import record_queries
from async_sa.cleanup import check_close_timeout
from async_sa.cleanup import run_to_completion
from async_sa.engines import BindConfig
from async_sa.engines import BindKey
from async_sa.errors import ModelsCommittedError
from async_sa.scoping import current_task
from async_sa.state import State

if t.TYPE_CHECKING:
    from quart.typing import ResponseTypes

    from async_sa.extension import SQLAlchemy

logger = logging.getLogger("async_sa.quart")

_EXTENSION_KEY = "sqlalchemy"


def _current_app_context() -> object | None:
    """Recorded queries belong to the app context (shared by gather children)."""
    return _cv_app.get(None)


record_queries.register_scope(_current_app_context)
_COMMIT_FAILED = "_async_sa_commit_failed"
"""Set on ``g`` when the commit-on-success commit failed in this app context."""


@dataclasses.dataclass(eq=False)
class _QuartState:
    """What ``init_app`` keeps in ``app.extensions["sqlalchemy"]``."""

    db: SQLAlchemy
    state: State


def _get_state(app: quart.Quart, db: SQLAlchemy) -> _QuartState:
    """The state ``db.init_app(app)`` stored, or a :class:`RuntimeError` saying so."""
    found = app.extensions.get(_EXTENSION_KEY)
    if not isinstance(found, _QuartState) or found.db is not db:
        raise RuntimeError(
            f"The Quart app {app.name!r} is not registered with this SQLAlchemy "
            "object: did you forget to call db.init_app(app)?"
        )
    return found


def init_app(db: SQLAlchemy, app: quart.Quart) -> None:
    """Configure ``db`` for ``app``: create its engines and register the hooks.

    ``app.config`` beats the arguments given to ``SQLAlchemy()``: the URL, each
    bind key, each engine option and each switch set in the config replaces the
    constructor's. Relative SQLite paths are placed under ``app.instance_path``.

    :param db: the ``SQLAlchemy`` object; it may serve several apps, each with
        its own engines.
    :param app: the Quart app.
    :raises RuntimeError: ``app`` already has a ``SQLAlchemy`` object, or neither
        ``SQLALCHEMY_DATABASE_URI`` nor ``SQLALCHEMY_BINDS`` (nor ``url=`` /
        ``binds=``) is set.
    """
    if _EXTENSION_KEY in app.extensions:
        raise RuntimeError(
            f"A SQLAlchemy object is already registered on the Quart app "
            f"{app.name!r}: call init_app only once per app (one SQLAlchemy "
            "object may serve several apps)."
        )
    state = db._make_state(
        _engine_options(db, app),
        sender=app,
        track_modifications=_switch(app, "SQLALCHEMY_TRACK_MODIFICATIONS"),
        record_queries=_switch(app, "SQLALCHEMY_RECORD_QUERIES"),
        commit_on_success=bool(_switch(app, "SQLALCHEMY_COMMIT_ON_SUCCESS")),
        close_timeout=_close_timeout(app),
    )
    state.not_found = _abort_404
    state.request_args = _request_args
    app.extensions[_EXTENSION_KEY] = _QuartState(db, state)
    db._app_states[app] = state
    if db._find_app_state is None:
        db._find_app_state = _app_state_finder(db)

    # A partial rather than a wrapper: one coroutine less on every request.
    app.teardown_appcontext(functools.partial(_teardown, db))

    @app.after_serving
    async def dispose_engines() -> None:
        await db.session.registry.wait_closed()
        for engine in state.engines.values():
            await engine.dispose()

    @app.shell_context_processor
    def shell_context() -> dict[str, t.Any]:
        models = {
            mapper.class_.__name__: mapper.class_
            for mapper in db.Model.registry.mappers
        }
        return {**models, "db": db}

    if "db" not in app.cli.commands:
        from async_sa.cli import quart_command

        app.cli.add_command(quart_command(app))

    if state.commit_on_success:

        @app.after_request
        async def commit_on_success(response: ResponseTypes) -> ResponseTypes:
            return await _commit_on_success(db, response)


def _switch(app: quart.Quart, key: str) -> bool | None:
    """A boolean config key, or ``None`` when it is not set."""
    value = app.config.get(key)
    return None if value is None else bool(value)


def _close_timeout(app: quart.Quart) -> float | None:
    """``SQLALCHEMY_CLOSE_TIMEOUT``, or ``None`` when it is not set."""
    value = app.config.get("SQLALCHEMY_CLOSE_TIMEOUT")
    if value is None:
        return None
    return check_close_timeout(value, where="SQLALCHEMY_CLOSE_TIMEOUT")


def _engine_options(
    db: SQLAlchemy, app: quart.Quart
) -> dict[BindKey, dict[str, t.Any]]:
    """Every engine's options: ``app.config`` over the constructor's arguments."""
    config = app.config
    config_url = config.get("SQLALCHEMY_DATABASE_URI")
    config_binds: Mapping[str | None, BindConfig] = config.get("SQLALCHEMY_BINDS") or {}
    engine_options = {
        **db._engine_options,
        **(config.get("SQLALCHEMY_ENGINE_OPTIONS") or {}),
    }
    if config_url is None and db._url is None and not config_binds and not db._binds:
        raise RuntimeError(
            f"No database is configured for the Quart app {app.name!r}: set "
            "SQLALCHEMY_DATABASE_URI (or SQLALCHEMY_BINDS) in app.config, or pass "
            "url= (or binds=) to SQLAlchemy()."
        )
    common: dict[str, t.Any] = {
        "engine_options": engine_options,
        "echo": _switch(app, "SQLALCHEMY_ECHO"),
        "sqlite_base_dir": app.instance_path,
    }
    constructor_binds = {k: v for k, v in db._binds.items() if k not in config_binds}
    return {
        **_engines.resolve_engine_options(
            url=None if config_url is not None else db._url,
            binds=constructor_binds,
            url_source="url=",
            binds_source="binds=",
            **common,
        ),
        **_engines.resolve_engine_options(
            url=config_url,
            binds=config_binds,
            url_source="SQLALCHEMY_DATABASE_URI",
            binds_source="SQLALCHEMY_BINDS",
            **common,
        ),
    }


def _app_state_finder(db: SQLAlchemy) -> t.Callable[[], State | None]:
    """``db._find_app_state``: the current app's state, ``None`` outside apps.

    Inside the app context of an app ``db`` does not know, a ``db`` that also
    has a standalone configuration (``url=`` / ``binds=``) uses it; otherwise
    that is the missing ``init_app`` error.
    """

    def find_app_state() -> State | None:
        app_context = _cv_app.get(None)
        if app_context is None:
            return None
        found = app_context.app.extensions.get(_EXTENSION_KEY)
        if isinstance(found, _QuartState) and found.db is db:
            return found.state
        if db._url is not None or db._binds:
            return None
        return _get_state(app_context.app, db).state

    return find_app_state


async def _teardown(db: SQLAlchemy, exc: BaseException | None) -> None:
    """The teardown function: :func:`_remove_session`, raising nothing at all.

    :func:`_remove_session` raises only a cancellation of the task received
    while it closed the session (once the close is done). Raised from teardown,
    it would skip the teardown functions after this one (Quart up to 0.22) or
    become a ``BaseExceptionGroup`` of teardown errors (0.23); dropped, a
    cancelled task would carry on, e.g. a worker loop never stopping. So the
    cancellation is requested again, to be raised at the task's next await.
    """
    try:
        await _remove_session(db, exc)
    except asyncio.CancelledError as cancelled:
        task = asyncio.current_task()
        assert task is not None
        if sys.version_info >= (3, 11):
            task.uncancel()  # The request is repeated, not added to.
        task.cancel(*cancelled.args[:1])


async def _remove_session(db: SQLAlchemy, exc: BaseException | None) -> None:
    """Roll back and close the current task's session; log failures, never raise.

    A session whose close fails, or takes longer than the app's close timeout,
    has its connection invalidated, so the pool gets it back (and discards it)
    either way. ``exc``, what ended the app context (Quart's teardown
    argument), changes nothing: uncommitted work is rolled back whether or not
    the request failed.
    """
    session = db.session.registry.pop(current_task())
    if session is None:
        return
    try:
        await session.close()
    except Exception:
        logger.exception(
            "closing the session at app context teardown failed; "
            "invalidating its connection"
        )
        try:
            await run_to_completion(session.invalidate())
        except Exception:
            logger.exception("invalidating the session's connection failed")


async def _commit_on_success(db: SQLAlchemy, response: ResponseTypes) -> ResponseTypes:
    """Commit the request's session when ``response`` is a success (< 400).

    A failed commit is raised, which Quart turns into a 500. Should the 500 path
    produce a success response again (a custom 500 handler), it is replaced by
    a plain 500: a failed commit never leaves with a 2xx or 3xx. A
    ``models_committed`` receiver failing after the commit is durable
    (:class:`ModelsCommittedError`) is logged and the response kept: the data
    is stored, and a 5xx would make the client send it again.
    """
    if response.status_code >= 400:
        return response
    if quart.g.get(_COMMIT_FAILED, False):
        return await quart.current_app.make_response(InternalServerError())
    if not db.session.registry.has():
        return response
    try:
        await db.session.commit()
    except ModelsCommittedError:
        logger.exception(
            "the request's commit is durable, but a models_committed receiver "
            "failed; the response is kept"
        )
    except Exception:
        setattr(quart.g, _COMMIT_FAILED, True)
        raise
    return response


def _abort_404(description: str | None) -> t.NoReturn:
    """``State.not_found`` under Quart: ``abort(404)`` with the description."""
    quart.abort(404, description=description)


def _request_args() -> Mapping[str, str] | None:
    """``State.request_args`` under Quart: the query string inside a request."""
    if quart.has_request_context():
        return quart.request.args
    return None
