"""async_sa: an async-first SQLAlchemy session manager.

One ``db`` object owns the engines, routes models to databases by
``__bind_key__``, gives every asyncio task its own session (``db.session``), and
sends ``models_committed`` signals; with a Quart extension that runs the session
lifecycle for every request.
"""

from __future__ import annotations

from async_sa.errors import ConcurrentSessionUseError
from async_sa.errors import ModelsCommittedError
from async_sa.errors import NotFound
from async_sa.errors import TransactionAbortedError
from async_sa.errors import UnknownBindKeyError
from async_sa.extension import SQLAlchemy
from async_sa.model import Model
from async_sa.pagination import Pagination
from async_sa.record_queries import get_recorded_queries
from async_sa.record_queries import QueryInfo
from async_sa.scoping import ScopedSession
from async_sa.session import AsyncSession
from async_sa.session import Session
from async_sa.session import SessionMaker
from async_sa.signals import before_models_committed
from async_sa.signals import models_committed

__all__ = [
    "AsyncSession",
    "ConcurrentSessionUseError",
    "Model",
    "ModelsCommittedError",
    "NotFound",
    "Pagination",
    "QueryInfo",
    "SQLAlchemy",
    "ScopedSession",
    "Session",
    "SessionMaker",
    "TransactionAbortedError",
    "UnknownBindKeyError",
    "before_models_committed",
    "get_recorded_queries",
    "models_committed",
]
