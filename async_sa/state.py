"""The engines and switches of one owner: the standalone ``db`` or one app."""

from __future__ import annotations

import dataclasses
import typing as t

import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async

from async_sa.cleanup import DEFAULT_CLOSE_TIMEOUT
from async_sa.engines import BindKey
from async_sa.engines import redact
from async_sa.errors import UnknownBindKeyError
from async_sa.replicas import Replica
from async_sa.replicas import ReplicaSet

if t.TYPE_CHECKING:
    from async_sa.test_isolation import TestIsolation


@dataclasses.dataclass(eq=False)
class State:
    """Everything a session needs from its owner, resolved once when it is made.

    :param engines: bind key → engine; ``None`` is the default engine.
    :param replica_engines: bind key → the engines of its read replicas, for
        the binds that have some.
    :param replica_max_lag: bind key → the most seconds its replicas may lag
        to get reads, for the binds that bound it.
    :param sender: the sender of the commit signals (the app, else ``db``).
    """

    engines: dict[BindKey, sa_async.AsyncEngine]
    sender: t.Any
    metadatas: dict[BindKey, sa.MetaData]
    """``db.metadatas``: only their tables are kept in :attr:`routes`."""
    track_modifications: bool = False
    record_queries: bool = False
    commit_on_success: bool = False
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT
    """Seconds a session's close waits for the database before terminating its
    connections (see :func:`async_sa.cleanup.close_within`)."""
    replica_engines: dict[BindKey, tuple[sa_async.AsyncEngine, ...]] = (
        dataclasses.field(default_factory=dict)
    )
    replica_max_lag: dict[BindKey, float] = dataclasses.field(default_factory=dict)
    sync_engines: dict[BindKey, sa.Engine] = dataclasses.field(init=False)
    replicas: dict[sa.Engine, ReplicaSet] = dataclasses.field(init=False)
    """Primary (sync) engine → its replicas; empty when there are none, and
    then sessions are not routed to replicas at all."""
    routes: dict[t.Any, sa.Engine] = dataclasses.field(default_factory=dict)
    """Engine per mapper and per table, filled as sessions route statements;
    only tables of the db's own metadatas (and their mappers) are kept, so
    tables made on the fly do not pile up."""
    isolation: TestIsolation | None = None
    """The ``db.test_isolation()`` entered for this owner, which every session
    made for it joins (see :mod:`async_sa.test_isolation`)."""

    def __post_init__(self) -> None:
        self.sync_engines = {k: e.sync_engine for k, e in self.engines.items()}
        self.replicas = {
            self.engines[key].sync_engine: ReplicaSet(
                [
                    Replica(
                        engine,
                        f"replica {index} of "
                        f"{'the default bind' if key is None else f'bind {key!r}'} "
                        f"({redact(engine.url)})",
                        max_lag=self.replica_max_lag.get(key),
                    )
                    for index, engine in enumerate(engines)
                ]
            )
            for key, engines in self.replica_engines.items()
        }

    def all_engines(self) -> list[sa_async.AsyncEngine]:
        """Every engine of the owner: the binds', then their replicas'."""
        return [
            *self.engines.values(),
            *(e for engines in self.replica_engines.values() for e in engines),
        ]

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
