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
import functools
import logging
import sys
import typing as t
from collections.abc import Mapping

import quart
from quart.globals import _cv_app
from werkzeug.exceptions import InternalServerError

from async_sa.errors import NotFound
from async_sa.integration import commit_session
from async_sa.integration import dispose_engines
from async_sa.integration import Integration
from async_sa.integration import remove_session
from async_sa.integration import resolve_config
from async_sa.shell import models

if t.TYPE_CHECKING:
    from quart.typing import ResponseTypes

    from async_sa.extension import SQLAlchemy

logger = logging.getLogger("async_sa.quart")

_EXTENSION_KEY = "sqlalchemy"
_COMMIT_FAILED = "_async_sa_commit_failed"
"""Set on ``g`` when the commit-on-success commit failed in this app context."""


class QuartIntegration(Integration):
    """Quart's answers to the core: the owner is the app of the current app
    context, a 404 is ``abort(404)``, the query string is ``request.args``, and
    recorded queries belong to the app context (shared by the request's
    ``asyncio.gather`` children)."""

    def current_owner(self) -> object | None:
        app_context = _cv_app.get(None)
        return None if app_context is None else app_context.app

    def not_found(self, description: str | None) -> t.NoReturn:
        if _cv_app.get(None) is None:
            raise NotFound(description)
        quart.abort(404, description=description)

    def request_args(self) -> Mapping[str, str] | None:
        if quart.has_request_context():
            return quart.request.args
        return None

    def query_scope(self) -> object | None:
        return _cv_app.get(None)

    def unknown_owner(self, owner: object) -> Exception:
        name = getattr(owner, "name", owner)
        return RuntimeError(
            f"The Quart app {name!r} is not registered with this SQLAlchemy "
            "object: did you forget to call db.init_app(app)?"
        )

    def missing_owner(self) -> Exception:
        return RuntimeError(
            "This SQLAlchemy object is configured through init_app(app) and was "
            "used outside an app context: push one with "
            "'async with app.app_context():', or pass url= to SQLAlchemy() for "
            "use outside Quart."
        )

    def __repr__(self) -> str:
        return "<QuartIntegration>"


QUART = QuartIntegration()
"""The integration every ``db.init_app(app)`` hands over."""


def init_app(db: SQLAlchemy, app: quart.Quart) -> None:
    """Configure ``db`` for ``app``: create its engines and register the hooks.

    ``app.config`` beats the arguments given to ``SQLAlchemy()``: the URL, each
    bind key, each engine option and each switch set in the config replaces the
    constructor's (see :func:`async_sa.integration.resolve_config`). Relative
    SQLite paths are placed under ``app.instance_path``. The ``db`` is stored in
    ``app.extensions["sqlalchemy"]``, as Flask-SQLAlchemy does.

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
    config = resolve_config(
        db,
        app.config,
        base_dir=app.instance_path,
        owner_name=f"the Quart app {app.name!r}",
    )
    db.use_integration(QUART)
    state = db.add_owner(app, config)
    app.extensions[_EXTENSION_KEY] = db

    # A partial rather than a wrapper: one coroutine less on every request.
    app.teardown_appcontext(functools.partial(_teardown, db))

    @app.after_serving
    async def dispose_app_engines() -> None:
        await dispose_engines(db, app)

    @app.shell_context_processor
    def shell_context() -> dict[str, t.Any]:
        return {**models(db), "db": db}

    if "db" not in app.cli.commands:
        from async_sa.cli import quart_command

        app.cli.add_command(quart_command(app))

    if state.commit_on_success:

        @app.after_request
        async def commit_on_success(response: ResponseTypes) -> ResponseTypes:
            return await _commit_on_success(db, response)


async def _teardown(db: SQLAlchemy, exc: BaseException | None) -> None:
    """The teardown function: :func:`~async_sa.integration.remove_session`,
    raising nothing at all.

    ``exc``, what ended the app context, changes nothing: uncommitted work is
    rolled back whether or not the request failed. The session is closed for
    HTTP requests, websocket handlers, background tasks, the test client and
    CLI commands alike. ``remove_session`` raises only a cancellation of the
    task received while it closed the session (once the close is done). Raised
    from teardown, it would skip the teardown functions after this one (Quart
    up to 0.22) or become a ``BaseExceptionGroup`` of teardown errors (0.23);
    dropped, a cancelled task would carry on, e.g. a worker loop never
    stopping. So the cancellation is requested again, to be raised at the
    task's next await.
    """
    try:
        await remove_session(db, logger)
    except asyncio.CancelledError as cancelled:
        task = asyncio.current_task()
        assert task is not None
        if sys.version_info >= (3, 11):
            task.uncancel()  # The request is repeated, not added to.
        task.cancel(*cancelled.args[:1])


async def _commit_on_success(db: SQLAlchemy, response: ResponseTypes) -> ResponseTypes:
    """Commit the request's session when ``response`` is a success (< 400).

    A failed commit is raised, which Quart turns into a 500. Should the 500 path
    produce a success response again (a custom 500 handler), it is replaced by
    a plain 500: a failed commit never leaves with a 2xx or 3xx. A
    ``models_committed`` receiver failing after the commit is durable is logged
    and the response kept (see :func:`~async_sa.integration.commit_session`).
    """
    if response.status_code >= 400:
        return response
    if quart.g.get(_COMMIT_FAILED, False):
        return await quart.current_app.make_response(InternalServerError())
    try:
        await commit_session(db, logger)
    except Exception:
        setattr(quart.g, _COMMIT_FAILED, True)
        raise
    return response
