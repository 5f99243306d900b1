"""Record the model changes of a session and send the commit signals.

Only sessions whose owner has ``track_modifications`` on get listeners (per
session instance, see :func:`track`), so sessions without tracking run no extra
code at all. The listeners live on the sync session, where SQLAlchemy's events
run, inside the greenlet of the ``await``-ed call; coroutine receivers are awaited
from there through SQLAlchemy's greenlet bridge.

Changes are recorded on ``before_flush``. ``before_commit`` flushes first, so the
final flush is recorded too and new objects have primary keys when
``before_models_committed`` is sent; ``models_committed`` is sent on
``after_commit``, while SQL on the committed session fails clearly; every
receiver is called even when one raises, and their exceptions are raised as
:class:`~async_sa.ModelsCommittedError` once SQLAlchemy has finished the commit.

Changes are kept in layers: one for the transaction and one per open savepoint.
Releasing a savepoint merges its layer into the one below; rolling it back drops
it; the end of the transaction (commit, rollback or close) drops everything.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable
from collections.abc import Coroutine
from inspect import iscoroutinefunction

import blinker
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

from async_sa.errors import ModelsCommittedError
from async_sa.signals import before_models_committed
from async_sa.signals import models_committed

try:
    from sqlalchemy.util import await_ as _await  # type: ignore[attr-defined,unused-ignore]  # SQLAlchemy 2.1
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await

Operation = t.Literal["insert", "update", "delete"]
Change = tuple[t.Any, Operation]
_Layer = dict[int, Change]
"""Changes by ``id(instance)``; the entry holds the instance, so the id is stable."""


def track(session: sa_orm.Session, sender: t.Any) -> None:
    """Record ``session``'s changes and send the commit signals from ``sender``."""
    tracker = _Tracker(sender)
    sa.event.listen(session, "before_flush", tracker.before_flush)
    sa.event.listen(session, "before_commit", tracker.before_commit)
    sa.event.listen(session, "after_commit", tracker.after_commit)
    sa.event.listen(session, "after_transaction_create", tracker.transaction_created)
    sa.event.listen(session, "after_transaction_end", tracker.transaction_ended)


class _Tracker:
    """The recorded changes of one session, and its listeners."""

    def __init__(self, sender: t.Any) -> None:
        self.sender = sender
        self.layer: _Layer = {}
        """The changes of the innermost open savepoint, else of the transaction."""
        self.outer: list[tuple[sa_orm.SessionTransaction, _Layer]] = []
        """For each open savepoint: it, and the layer that was current before it."""
        self.failed: tuple[sa_orm.SessionTransaction, BaseException] | None = None
        """A ``models_committed`` receiver's exception, raised once SQLAlchemy has
        finished the commit, so that the session is left usable."""

    def before_flush(self, session: sa_orm.Session, *_: t.Any) -> None:
        layer = self.layer
        for instance in session.new:
            _put(layer, instance, "insert")
        for instance in session.dirty:
            if session.is_modified(instance):
                _put(layer, instance, "update")
        for instance in session.deleted:
            _put(layer, instance, "delete")

    def before_commit(self, session: sa_orm.Session) -> None:
        if session.in_nested_transaction():
            return
        session.flush()
        if self.layer:
            _send(before_models_committed, self.sender, list(self.layer.values()))

    def after_commit(self, session: sa_orm.Session) -> None:
        if session.in_nested_transaction():
            released = self.layer
            self.layer = self.outer.pop()[1]
            for instance, operation in released.values():
                _put(self.layer, instance, operation)
            return
        changes, self.layer = self.layer, {}
        if changes:
            try:
                _send_to_each(models_committed, self.sender, list(changes.values()))
            except BaseException as error:
                transaction = session.get_transaction()
                assert transaction is not None
                self.failed = (transaction, error)

    def transaction_created(
        self, session: sa_orm.Session, transaction: sa_orm.SessionTransaction
    ) -> None:
        if transaction.nested:
            self.outer.append((transaction, self.layer))
            self.layer = {}

    def transaction_ended(
        self, session: sa_orm.Session, transaction: sa_orm.SessionTransaction
    ) -> None:
        if transaction.nested:
            if self.outer and self.outer[-1][0] is transaction:
                self.layer = self.outer.pop()[1]
        elif transaction.parent is None:
            self.layer = {}
            self.outer.clear()
            failed, self.failed = self.failed, None
            if failed is not None and failed[0] is transaction:
                raise failed[1]


def _put(layer: _Layer, instance: t.Any, operation: Operation) -> None:
    """Record ``operation`` on ``instance``, merged with what ``layer`` holds.

    An insert stays an insert when it is then updated, and vanishes when it is
    then deleted; otherwise the latest operation wins.
    """
    key = id(instance)
    previous = layer.get(key)
    if previous is None or previous[1] != "insert":
        layer[key] = (instance, operation)
    elif operation == "delete":
        del layer[key]


def _send(signal: blinker.Signal, sender: t.Any, changes: list[Change]) -> None:
    signal.send(sender, _async_wrapper=_await_in_greenlet, changes=changes)


def _send_to_each(signal: blinker.Signal, sender: t.Any, changes: list[Change]) -> None:
    """Send ``signal`` to every receiver, even after one has raised.

    The commit is durable by then, so one failing receiver (an audit write)
    must not cost the others their call. Their exceptions are raised together
    as :class:`ModelsCommittedError`; a ``BaseException`` (a cancellation) is
    raised as itself at once.
    """
    if signal.is_muted:
        return
    errors: list[Exception] = []
    for receiver in signal.receivers_for(sender):
        call = (
            _await_in_greenlet(receiver) if iscoroutinefunction(receiver) else receiver
        )
        try:
            call(sender, changes=changes)
        except Exception as error:
            errors.append(error)
    if errors:
        raise ModelsCommittedError(errors) from errors[0]


def _await_in_greenlet(
    receiver: Callable[..., Coroutine[t.Any, t.Any, t.Any]],
) -> Callable[..., t.Any]:
    """Make a coroutine receiver callable from a SQLAlchemy event: the event runs
    in the greenlet of an awaited session call, which can await on the loop."""

    def call(*args: t.Any, **kwargs: t.Any) -> t.Any:
        return _await(receiver(*args, **kwargs))

    return call
