"""Exceptions raised by async_sa, each naming the cause and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa


class UnknownBindKeyError(sa.exc.UnboundExecutionError, LookupError):
    """A bind key was used that has no engine configured.

    Raised by ``db.get_engine``, ``create_all``/``drop_all``/``reflect`` and by
    sessions routing a model or table whose ``__bind_key__`` has no engine.
    """

    def __init__(self, key: str | None, configured: Iterable[str | None]) -> None:
        self.key = key
        shown = ", ".join(repr(k) for k in configured) or "none"
        if key is None:
            fix = (
                "set SQLALCHEMY_DATABASE_URI (or pass url= to SQLAlchemy()) to "
                "have a default engine"
            )
        else:
            fix = f"add {key!r} to SQLALCHEMY_BINDS (or to binds= of SQLAlchemy())"
        super().__init__(
            f"No engine is configured for bind key {key!r} (configured keys: "
            f"{shown}); {fix}."
        )


class NotFound(LookupError):
    """Raised by the ``*_or_404`` helpers and pagination outside Quart.

    Under Quart they call ``quart.abort(404)`` instead.
    """

    def __init__(self, description: str | None = None) -> None:
        self.description = description
        super().__init__(description or "Not Found")
