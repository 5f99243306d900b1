"""What the command line works on: a ``db`` and one owner's engines.

``--db MODULE:NAME`` names a ``SQLAlchemy`` object, a Quart app or an app
factory; :func:`load_target` turns it into a :class:`Target`, or into a
:class:`TargetError` saying what is wrong. The ``db`` commands migrate a
target, the shell opens one. No Alembic here: the shell works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import typing as t
from collections.abc import AsyncIterator
from collections.abc import Mapping

import sqlalchemy.ext.asyncio as sa_async

from async_sa.engines import BindKey
from async_sa.extension import SQLAlchemy
from async_sa.integration import dispose_engines


class TargetError(Exception):
    """What ``--db`` (or the app) names cannot be used; the message says why
    and what to do. The command line prints it without a traceback."""


@dataclasses.dataclass(eq=False)
class Target:
    """What the commands migrate: a ``db``, the engines of one owner (the
    standalone ``db`` or one Quart app) and that app, if any."""

    db: SQLAlchemy
    engines: Mapping[BindKey, sa_async.AsyncEngine]
    app: t.Any = None

    def binds(self) -> dict[str, sa_async.AsyncEngine]:
        """Bind name → engine, the default bind (``""``) first.

        :raises TargetError: a bind key is not a Python identifier, so it
            cannot name the ``upgrade_<bind>()`` function of a revision.
        """
        keys = sorted(self.engines, key=lambda key: (key is not None, key or ""))
        binds = {}
        for key in keys:
            name = key or ""
            if name and not name.isidentifier():
                raise TargetError(
                    f"The bind key {name!r} cannot name a revision's "
                    f"upgrade_{name}() function: rename it to a Python identifier "
                    "to use it with migrations."
                )
            binds[name] = self.engines[key]
        return binds

    @contextlib.asynccontextmanager
    async def app_context(self) -> AsyncIterator[None]:
        """The app's context, if there is an app, so ``db.engines``, ``db.session``
        and ``current_app`` work as they do in the app."""
        if self.app is None:
            yield
        else:
            async with self.app.app_context():
                yield

    async def dispose(self) -> None:
        """Wait for the sessions of finished tasks to close, then dispose the
        engines (their connections in the running loop are closed)."""
        await dispose_engines(self.db, self.app)


def load_target(spec: str) -> Target:
    """The :class:`Target` that ``--db MODULE:NAME`` names: a ``SQLAlchemy``
    object, a Quart app, or a callable returning one (an app factory).

    :raises TargetError: ``spec`` is malformed, names nothing importable, or
        an object of another kind.
    """
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise TargetError(
            f"--db {spec!r} is not MODULE:NAME: give the module and the name of "
            "the SQLAlchemy object, Quart app or app factory, e.g. --db app:db."
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise TargetError(
                f"--db {spec!r}: no module named {missing!r}. Run the command from "
                "your project's directory, or add it to PYTHONPATH."
            ) from None
        raise TargetError(
            f"--db {spec!r}: importing {module_name!r} failed: {error}"
        ) from error
    found: t.Any = module
    for part in name.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise TargetError(
                f"--db {spec!r}: module {module_name!r} has no attribute {name!r}."
            ) from None
    return target_for(found, f"--db {spec!r}")


def target_for(found: t.Any, source: str) -> Target:
    """The :class:`Target` of a ``SQLAlchemy`` object, a Quart app, or an app
    factory (called without arguments)."""
    if isinstance(found, SQLAlchemy):
        return _db_target(found, source)
    if _is_app(found):
        return app_target(found)
    if callable(found) and not isinstance(found, type):
        try:
            inspect.signature(found).bind()
        except TypeError:
            raise TargetError(
                f"{source} is {found!r}, which needs arguments: an app factory "
                "is called without any. Name the app or the SQLAlchemy object, "
                "or give the factory's arguments defaults."
            ) from None
        except ValueError:  # no signature to check (a builtin): just call it
            pass
        made = found()
        if isinstance(made, SQLAlchemy) or _is_app(made):
            return target_for(made, source)
        raise TargetError(
            f"{source}: calling it returned {made!r}, not a Quart app or a "
            "SQLAlchemy object."
        )
    raise TargetError(
        f"{source} is {found!r}, not a SQLAlchemy object, a Quart app or an app "
        "factory."
    )


def app_target(app: t.Any) -> Target:
    """The :class:`Target` of a Quart ``app`` that ``db.init_app(app)`` set up."""
    found = app.extensions.get("sqlalchemy")
    if not isinstance(found, SQLAlchemy):
        raise TargetError(
            f"The Quart app {app.name!r} has no async_sa SQLAlchemy object: "
            "call db.init_app(app) (or SQLAlchemy(app)) where the app is made."
        )
    return Target(found, found.state_for(app).engines, app)


def _is_app(found: t.Any) -> bool:
    return isinstance(getattr(found, "extensions", None), dict) and hasattr(
        found, "app_context"
    )


def _db_target(db: SQLAlchemy, source: str) -> Target:
    """A ``db`` with a URL of its own migrates that; one serving a single app
    migrates that app's engines."""
    if db._url is not None or db._binds:
        return Target(db, db.state_for(None).engines)
    apps = list(db._owner_states)
    if len(apps) == 1:
        return app_target(apps[0])
    if not apps:
        raise TargetError(
            f"{source} has no database: pass url= (or binds=) to SQLAlchemy(), "
            "or name the Quart app (or its factory) that calls db.init_app(app)."
        )
    raise TargetError(
        f"{source} has no database of its own (no url= or binds=) and serves "
        f"{len(apps)} Quart apps: name the app (or its factory) instead."
    )


def bind_label(name: str) -> str:
    """How messages name a bind: ``the default bind`` or ``bind 'users'``."""
    return "the default bind" if name == "" else f"bind {name!r}"
