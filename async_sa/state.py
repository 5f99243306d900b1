"""The engines and switches of one owner: the standalone ``db`` or one Quart app."""

from __future__ import annotations

import dataclasses
import typing as t
from collections.abc import Callable
from collections.abc import Mapping

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async

from async_sa.cleanup import DEFAULT_CLOSE_TIMEOUT
from async_sa.engines import BindKey
from async_sa.errors import NotFound
from async_sa.errors import UnknownBindKeyError


def raise_not_found(description: str | None) -> t.NoReturn:
    """Standalone 404: raise :class:`NotFound` (Quart's ``abort(404)`` replaces it)."""
    raise NotFound(description)


def no_request_args() -> Mapping[str, str] | None:
    """Standalone code has no request, so pagination uses its defaults."""
    return None


@dataclasses.dataclass(eq=False)
class State:
    """Everything a session needs from its owner, resolved once when it is made.

    :param engines: bind key → engine; ``None`` is the default engine.
    :param sender: the sender of the commit signals (the Quart app, else ``db``).
    """

    engines: dict[BindKey, sa_async.AsyncEngine]
    sender: t.Any
    track_modifications: bool = False
    record_queries: bool = False
    commit_on_success: bool = False
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    """Seconds a session's close waits for the database before terminating its
    connections (see :func:`async_sa.cleanup.close_within`)."""
    sync_engines: dict[BindKey, sa.Engine] = dataclasses.field(init=False)
    routes: dict[t.Any, sa.Engine] = dataclasses.field(default_factory=dict)
    """Engine per mapper and per table, filled as sessions route statements;
    only tables of the db's own metadatas (and their mappers) are kept, so
    tables made on the fly do not pile up."""
    not_found: Callable[[str | None], t.NoReturn] = raise_not_found
    """Ends a ``*_or_404`` helper or a bad page: ``abort(404)`` under Quart."""
    request_args: Callable[[], Mapping[str, str] | None] = no_request_args
    """The current request's query string, where there is a request."""

    def __post_init__(self) -> None:
        self.sync_engines = {k: e.sync_engine for k, e in self.engines.items()}

    def engine(self, key: BindKey) -> sa_async.AsyncEngine:
        """The engine for ``key``, or :class:`UnknownBindKeyError` naming it."""
        try:
            return self.engines[key]
        except KeyError:
            raise UnknownBindKeyError(key, self.engines) from None

    def sync_engine(self, key: BindKey) -> sa.Engine:
        """The sync engine behind :meth:`engine`, for ``Session.get_bind``."""
        try:
            return self.sync_engines[key]
        except KeyError:
            raise UnknownBindKeyError(key, self.engines) from None
