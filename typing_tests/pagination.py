"""The types of a page: ``Pagination[T]`` iterates over ``T``; a bare
``Pagination`` is ``Pagination[Any]`` (``db.paginate``'s own types are pinned
in views.py)."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from typing_extensions import assert_type

from async_sa import Pagination
from async_sa import SQLAlchemy


def built_by_hand() -> None:
    page = Pagination([1, 2, 3], page=1, per_page=3, total=3)
    assert_type(page, Pagination[int])
    assert_type(list(page), list[int])
    assert_type(page.items, list[int])
    assert_type(page.next_num, int | None)


async def loaded(db: SQLAlchemy) -> None:
    page = await db.paginate(sa.select(sa.literal(1)))
    assert_type(page, Pagination[int])
    assert_type(await page.next(), Pagination[int])
    statement: sa.Select[t.Any] = sa.select(sa.text("1"))
    untyped = await db.paginate(statement)
    assert_type(untyped, Pagination[t.Any])
    typed: Pagination[int] = untyped
    assert_type(await typed.next(), Pagination[int])


def bare(page: Pagination) -> Pagination[t.Any]:
    """A bare annotation stays valid under ``mypy --strict``."""
    return page
