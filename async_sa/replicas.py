"""Read replicas: a task reads from a replica until it writes, then from the primary.

A bind may list replicas (``{"url": PRIMARY, "replicas": [URL, ...]}``, or
``SQLALCHEMY_REPLICAS`` for the default bind): each gets an engine of its own,
made with its primary's options. A session of an owner that has replicas gets
:class:`ReplicaRouting` mixed into its class (see :func:`routed_class`);
sessions of other owners run none of this code.

Routing happens in ``get_bind``, after the bind key has picked the primary
engine (see :class:`async_sa.session.Session`):

- a *read* (a ``SELECT`` without ``FOR UPDATE``, ORM or Core, lazy loads,
  ``session.get``, pagination) of a bind that has replicas goes to a replica;
- anything else counts as a write and goes to the primary: a flush, insert,
  update, delete, ``SELECT ... FOR UPDATE``, ``text()`` (whose SQL may write),
  DDL, ``session.connection()``. From then on every read of that bind by the
  session, and by the rest of the task's work — later transactions and new
  sessions of the same task (a request), and the tasks it starts afterwards
  (``asyncio.gather`` children copy its context) — goes to the primary too, so
  a request always reads its own writes, even from a lagging replica. A write
  in a child task does not reach its parent: read a child's writes in the
  parent inside :meth:`db.session.primary()
  <async_sa.scoping.ScopedSession.primary>`. The end of a request (the
  integration's teardown) forgets its writes, for a task that serves several
  requests in turn, as a test client may;
- ``async with db.session.primary():`` sends every read of the block (and of
  the tasks started in it) to the primary; ``bind_arguments={"replica":
  False}`` one statement, and ``{"replica": True}`` reads from a replica even
  after a write (or for a ``text()`` query known to only read).

Choice: round robin. A session picks a replica of a bind at its first read
there — the next one that is up, from a counter starting at a random place in
each process — and keeps it: a transaction reads one snapshot on one
connection, and a request never reads back in time when a second replica lags
more than the first.

Failures: a replica that refuses connections, or whose connection breaks while
reading (the driver reports a disconnect), is marked down for
:data:`DOWN_FOR` seconds, logged once (a warning on the ``async_sa.replicas``
logger; an info line when it answers again), and the read is run again on
another replica, or on the primary when none is up: the caller sees no error.
The broken connection is closed and dropped from the session's transaction;
the pool discards it. A statement the replica itself rejects (a function that
writes, run on a read-only standby) is raised as usual. A replica that hangs
instead of refusing holds the read until its driver's connect or command
timeout: set one in the replica's options. A stream (``session.stream``)
broken once its rows flow is not run again.

Lag (PostgreSQL): with ``"max_replica_lag": SECONDS`` in the bind's dict
form, a session picking a replica skips one that lags more (measured with
:data:`LAG_QUERY` at most every :data:`LAG_CHECK_EVERY` seconds per replica
and process; crossing the bound is logged). Requests that wrote read their
writes whatever the lag; the bound is for the others, which should not see
data older than that.

Under ``db.test_isolation()`` every statement goes to the isolation's primary
connections: the replicas would not see what the test wrote.
"""

from __future__ import annotations

import contextvars
import logging
import random
import time
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

logger = logging.getLogger("async_sa.replicas")

DOWN_FOR = 10.0
"""Seconds a replica that failed gets no reads before it is tried again."""
LAG_CHECK_EVERY = 1.0
"""Seconds a replica's measured lag is trusted before it is measured again."""
LAG_QUERY = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() "
    "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) "
    "END"
)
"""A PostgreSQL standby's lag in seconds: none when it has applied all the WAL
it received, else the age of the last transaction it applied (also while it is
not streaming, just restarted, say: it cannot know what it misses)."""

_written: contextvars.ContextVar[frozenset[sa.Engine]] = contextvars.ContextVar(
    "async_sa_written", default=frozenset()
)
"""The primary engines the current context wrote to: their reads stay there."""
_forced: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "async_sa_primary_forced", default=False
)
"""Inside ``db.session.primary()``: every read goes to the primary."""


class Replica:
    """One replica engine and whether it is up.

    :param label: how log lines name it: which replica of which bind, and its
        URL without the password.
    """

    __slots__ = (
        "async_engine",
        "down_until",
        "engine",
        "failing",
        "label",
        "lag_checked",
        "lagging",
        "max_lag",
    )

    def __init__(
        self, async_engine: t.Any, label: str, max_lag: float | None = None
    ) -> None:
        self.async_engine = async_engine
        self.engine: sa.Engine = async_engine.sync_engine
        self.label = label
        self.max_lag = max_lag
        """The most seconds it may lag and get reads; ``None``: not measured."""
        self.down_until = 0.0
        """``time.monotonic()`` until which it gets no reads; 0 when up."""
        self.failing = False
        """Whether it failed and has not answered since (logged once)."""
        self.lag_checked = -LAG_CHECK_EVERY
        """``time.monotonic()`` of the last lag measurement."""
        self.lagging = False
        """Whether it lagged more than ``max_lag`` when last measured."""

    def within_lag(self) -> bool:
        """Whether its lag is within ``max_lag``, measured (:data:`LAG_QUERY`,
        on a connection of its pool) when the last measurement is older than
        :data:`LAG_CHECK_EVERY`; crossing the bound either way is logged. A
        failed measurement marks it down."""
        now = time.monotonic()
        if now - self.lag_checked < LAG_CHECK_EVERY:
            return not self.lagging
        self.lag_checked = now
        assert self.max_lag is not None
        try:
            with self.engine.connect() as connection:
                lag = float(connection.exec_driver_sql(LAG_QUERY).scalar() or 0.0)
        except sa.exc.MissingGreenlet:
            return not self.lagging  # get_bind called outside SQLAlchemy's greenlet
        except Exception as error:
            self.mark_down(error)
            return False
        lagging = lag > self.max_lag
        if lagging != self.lagging:
            self.lagging = lagging
            if lagging:
                logger.warning(
                    "%s lags %.1f s behind its primary, more than max_replica_lag "
                    "(%s s): its reads go to another replica or the primary",
                    self.label,
                    lag,
                    self.max_lag,
                )
            else:
                logger.info("%s is within max_replica_lag again", self.label)
        return not lagging

    def mark_down(self, error: BaseException) -> None:
        """Give it no reads for :data:`DOWN_FOR` seconds; log the first failure."""
        self.down_until = time.monotonic() + DOWN_FOR
        if not self.failing:
            self.failing = True
            logger.warning(
                "%s failed (%s): its reads go to another replica or the primary; "
                "it is tried again in %s s",
                self.label,
                _describe(error),
                DOWN_FOR,
            )

    def mark_up(self) -> None:
        """It answered a read after failing."""
        self.failing = False
        self.down_until = 0.0
        logger.info("%s answers again: it gets reads again", self.label)


class ReplicaSet:
    """The replicas of one bind, handed out round robin."""

    __slots__ = ("_next", "replicas")

    def __init__(self, replicas: t.Sequence[Replica]) -> None:
        self.replicas = tuple(replicas)
        self._next = random.randrange(len(self.replicas))

    def pick(self) -> Replica | None:
        """The next replica that is up (and within its lag bound, if it has
        one), or ``None`` when none is."""
        replicas = self.replicas
        count = len(replicas)
        start = self._next
        self._next = (start + 1) % count
        now = 0.0
        for offset in range(count):
            replica = replicas[(start + offset) % count]
            if replica.down_until:
                now = now or time.monotonic()
                if now < replica.down_until:
                    continue
            if replica.max_lag is not None and not replica.within_lag():
                continue
            return replica
        return None


class ReplicaRouting(sa_orm.Session):
    """Mixed into the class of the sessions of an owner that has replicas
    (see :func:`routed_class`): reads of a bind with replicas go to one of
    them."""

    # Class-level defaults, replaced per session when first changed: a
    # session pays for its own only when it reads a replica or writes.
    _async_sa_replicas: dict[sa.Engine, ReplicaSet] = {}
    """Primary engine → its replicas (see :func:`start_routing`); none under
    test isolation, where this class routes nothing."""
    _async_sa_chosen: dict[sa.Engine, Replica] = {}
    """Primary engine → the replica this session reads from."""
    _async_sa_wrote: frozenset[sa.Engine] = frozenset()
    """The primary engines this session wrote to."""
    _async_sa_picked: Replica | None = None
    """The replica the statement being executed was sent to."""
    # The methods this class overrides, of the class it is mixed into (set by
    # routed_class): calling them is cheaper than super().
    _async_sa_base_get_bind: t.Callable[..., t.Any] = sa_orm.Session.get_bind
    _async_sa_base_execute: t.Callable[..., t.Any] = sa_orm.Session._execute_internal

    def get_bind(
        self,
        mapper: t.Any = None,
        *,
        clause: sa.ClauseElement | None = None,
        bind: sa.Engine | sa.Connection | None = None,
        replica: bool | None = None,
        **kwargs: t.Any,
    ) -> sa.Engine | sa.Connection:
        """The primary engine as bind keys route, or for a read one of its
        replicas; see :mod:`async_sa.replicas`."""
        if bind is not None:
            return bind
        # An Engine (a Connection only under test isolation, which routes
        # nothing to replicas).
        engine: sa.Engine = self._async_sa_base_get_bind(
            mapper, clause=clause, **kwargs
        )
        replicas = self._async_sa_replicas.get(engine)
        if replicas is None:
            return engine
        if replica is not True:
            statement: t.Any = clause
            if (
                statement is None
                or not getattr(statement, "is_select", False)
                or statement.is_text
                or getattr(statement, "_for_update_arg", None) is not None
                or self._flushing
            ):
                self._async_sa_wrote_to(engine)
                return engine
            if (
                replica is False
                or engine in self._async_sa_wrote
                or engine in _written.get()
                or _forced.get()
            ):
                return engine
        chosen = self._async_sa_chosen.get(engine)
        if chosen is None or chosen.down_until:
            chosen = replicas.pick()
            if chosen is None:
                return engine
            self._async_sa_chosen = {**self._async_sa_chosen, engine: chosen}
        self._async_sa_picked = chosen
        return chosen.engine

    def _async_sa_wrote_to(self, engine: sa.Engine) -> None:
        if engine not in self._async_sa_wrote:
            self._async_sa_wrote = self._async_sa_wrote | {engine}
        written = _written.get()
        if engine not in written:
            _written.set(written | {engine})

    def _execute_internal(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        # Every statement run through the session comes here: a read that a
        # failing replica breaks is run again (get_bind then skips it).
        outer = self._async_sa_picked
        self._async_sa_picked = None
        try:
            result = self._async_sa_base_execute(*args, **kwargs)
        except Exception as error:
            failed = self._async_sa_picked
            if failed is None or not _replica_failed(self, failed, error):
                raise
            failed.mark_down(error)
            return self._execute_internal(*args, **kwargs)
        else:
            picked = self._async_sa_picked
            if picked is not None and picked.failing:
                picked.mark_up()
            return result
        finally:
            self._async_sa_picked = outer


def _replica_failed(
    session: sa_orm.Session, replica: Replica, error: Exception
) -> bool:
    """Whether ``error`` is ``replica`` failing (refusing the connection, or
    breaking it) rather than the statement: the read can run elsewhere. A
    broken connection is closed and dropped from the session's transaction."""
    if isinstance(error, (sa.exc.InvalidRequestError, sa.exc.TimeoutError)):
        return False  # a misuse of the session, or the pool exhausted
    transaction = session._transaction
    root = transaction
    while root is not None and root._parent is not None:
        root = root._parent
    entry = None if root is None else root._connections.get(replica.engine)
    if entry is None:
        return True  # connecting to it failed
    connection = entry[0]
    if not connection.invalidated:
        return False  # the replica rejected the statement
    current = transaction
    while current is not None:
        connections = current._connections
        for key in (connection, replica.engine):
            found = connections.get(key)
            if found is not None and found[0] is connection:
                del connections[key]
        current = current._parent
    try:
        connection.close()
    except Exception:
        logger.debug("closing a broken replica connection failed", exc_info=True)
    return True


def _describe(error: BaseException) -> str:
    """The error's class and first line, without the SQL and parameters
    SQLAlchemy adds (they may hold user data)."""
    cause = getattr(error, "orig", None) or error
    first_line = str(cause).strip().partition("\n")[0][:200]
    name = type(cause).__name__
    return f"{name}: {first_line}" if first_line else name


_routed_classes: dict[type, type[ReplicaRouting]] = {}
"""Session class → the same with :class:`ReplicaRouting` first, made once."""


def routed_class(cls: type[sa_orm.Session]) -> type[ReplicaRouting]:
    """The session class ``cls`` with :class:`ReplicaRouting` first, made once:
    sessions of owners with replicas are made of it (made so from the start,
    rather than given a new ``__class__``, they keep CPython's compact
    attribute storage)."""
    routed = _routed_classes.get(cls)
    if routed is None:
        routed = _routed_classes[cls] = types.new_class(
            cls.__name__,
            (ReplicaRouting, cls),
            exec_body=lambda namespace: namespace.update(
                __module__=cls.__module__,
                __qualname__=cls.__qualname__,
                __doc__=cls.__doc__,
                _async_sa_base_get_bind=cls.get_bind,
                _async_sa_base_execute=cls._execute_internal,
            ),
        )
    return routed


def start_routing(session: sa_orm.Session) -> None:
    """Give a new session of a :func:`routed_class` its routing state: the
    replicas of its owner (none under test isolation)."""
    replicas = session._async_sa_state.replicas  # type: ignore[attr-defined]
    if replicas:
        session._async_sa_replicas = replicas  # type: ignore[attr-defined]


def forget_writes() -> None:
    """End of a request (see :func:`async_sa.integration.remove_session`): the
    task's later reads go to the replicas again. A server runs each request in
    a task of its own, which ends with it; a test client may run requests one
    after another in the test's task."""
    if _written.get():
        _written.set(frozenset())


class Primary:
    """``db.session.primary()``: inside the block, every read goes to the
    primary (also in the tasks started in it). Writes made inside keep the
    task's reads of that bind on the primary afterwards, as anywhere."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _forced.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _forced.reset(self._token)

    async def __aenter__(self) -> None:
        self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        self.__exit__(*exc_info)
