"""Pagination: one page of a ``select()``, with the numbers a page widget needs."""

from __future__ import annotations

import math
import re
import typing as t
from collections.abc import Iterator
from collections.abc import Mapping

import sqlalchemy as sa
from typing_extensions import TypeVar

from async_sa.integration import Integration

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy

# A select of any columns is spelled bare, ``sa.Select`` (``type-arg`` ignored):
# that is ``Select[Any]`` in SQLAlchemy 2.0 (one tuple type) and
# ``Select[*tuple[Any, ...]]`` in 2.1 (one type per column), where
# ``Select[Any]`` is a select of one column. An alias of it would be generic.

DEFAULT_PER_PAGE = 20
"""Items per page when neither the caller nor the query string says."""
DEFAULT_MAX_PER_PAGE = 100
"""The most items per page a query string may ask for, unless told otherwise."""
_MAX_OFFSET = 2**63 - 1
"""The largest OFFSET databases accept (a signed 64-bit integer); a page
starting beyond it is empty."""
_COUNT = sa.func.count()
"""``count(*)``, built once for every count."""
_INTEGER = re.compile(r"([+-]?)0*([0-9]+)")
_MAX_DIGITS = 19
"""Digits past which a query-string number only counts as "larger than any page"
(parsing thousands of digits costs time, and Python refuses over 4300)."""


_T = TypeVar("_T", default=t.Any)
"""The type of the items; a bare ``Pagination`` is ``Pagination[Any]``."""


class Pagination(t.Generic[_T]):
    """One page of results (of type ``_T``) and where it sits among the others.

    ``await db.paginate(select(...))`` makes these; iterating over one iterates
    over :attr:`items`.

    :param items: the items on this page.
    :param page: this page's number, from 1.
    :param per_page: the most items on a page.
    :param total: the number of items on all pages, ``None`` when not counted.
    :param max_per_page: the cap on ``per_page``, kept by :meth:`prev` and
        :meth:`next`.
    """

    def __init__(
        self,
        items: list[_T],
        *,
        page: int,
        per_page: int,
        total: int | None,
        max_per_page: int = DEFAULT_MAX_PER_PAGE,
    ) -> None:
        self.items = items
        """The items on this page."""
        self.page = page
        """This page's number, from 1."""
        self.per_page = per_page
        """The most items on a page."""
        self.total = total
        """The number of items on all pages; ``None`` when ``count=False``."""
        self.max_per_page = max_per_page
        """The cap on ``per_page``."""

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} page={self.page} per_page={self.per_page} "
            f"items={len(self.items)} total={self.total}>"
        )

    def __iter__(self) -> Iterator[_T]:
        return iter(self.items)

    @property
    def first(self) -> int:
        """The number (from 1) of the first item on this page; 0 when it is empty."""
        if not self.items:
            return 0
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The number (from 1) of the last item on this page; 0 when it is empty."""
        first = self.first
        return max(first, first + len(self.items) - 1)

    @property
    def pages(self) -> int:
        """The number of pages; 0 when there are no items or they were not counted."""
        if not self.total:
            return 0
        return math.ceil(self.total / self.per_page)

    @property
    def has_prev(self) -> bool:
        """Whether there is a page before this one."""
        return self.page > 1

    @property
    def prev_num(self) -> int | None:
        """The previous page's number, ``None`` on the first page."""
        return self.page - 1 if self.has_prev else None

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one (always false when not counted)."""
        return self.page < self.pages

    @property
    def next_num(self) -> int | None:
        """The next page's number, ``None`` on the last page."""
        return self.page + 1 if self.has_next else None

    async def prev(self, *, error_out: bool = False) -> Pagination[_T]:
        """Load the previous page, with the same ``per_page`` and ``max_per_page``.

        The total is copied from this page rather than counted again.

        :param error_out: fail with a 404 when that page is empty or invalid.
        """
        return await self._sibling(self.page - 1, error_out)

    async def next(self, *, error_out: bool = False) -> Pagination[_T]:
        """Load the next page, with the same ``per_page`` and ``max_per_page``.

        The total is copied from this page rather than counted again.

        :param error_out: fail with a 404 when that page is empty.
        """
        return await self._sibling(self.page + 1, error_out)

    async def _sibling(self, page: int, error_out: bool) -> Pagination[_T]:
        raise TypeError(
            f"This {type(self).__name__} was built by hand and cannot load other "
            "pages; use the one db.paginate() returns."
        )

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> Iterator[int | None]:
        """Page numbers for a page widget, with ``None`` for each run of skipped
        pages. With 20 pages and this being page 7::

            1, 2, None, 5, 6, 7, 8, 9, 10, 11, None, 19, 20

        :param left_edge: how many pages to show from the first one.
        :param left_current: how many pages to show before the current one.
        :param right_current: how many pages to show after the current one.
        :param right_edge: how many pages to show up to the last one.
        """
        end = self.pages + 1
        left_end = min(1 + left_edge, end)
        yield from range(1, left_end)
        if left_end == end:
            return
        middle_start = max(left_end, self.page - left_current)
        middle_end = min(self.page + right_current + 1, end)
        if middle_start > left_end:
            yield None
        yield from range(middle_start, middle_end)
        if middle_end == end:
            return
        right_start = max(middle_end, end - right_edge)
        if right_start > middle_end:
            yield None
        yield from range(right_start, end)


class SelectPagination(Pagination[_T]):
    """A page of a ``select()``, loaded with the current task's ``db.session``."""

    def __init__(
        self,
        items: list[_T],
        *,
        page: int,
        per_page: int,
        total: int | None,
        max_per_page: int,
        db: SQLAlchemy,
        select: sa.Select,  # type: ignore[type-arg]
    ) -> None:
        super().__init__(
            items, page=page, per_page=per_page, total=total, max_per_page=max_per_page
        )
        self._db = db
        self._select = select

    async def _sibling(self, page: int, error_out: bool) -> Pagination[_T]:
        sibling = await paginate(
            self._db,
            self._select,
            page=page,
            per_page=self.per_page,
            max_per_page=self.max_per_page,
            error_out=error_out,
            count=False,
        )
        sibling.total = self.total
        return sibling


async def paginate(
    db: SQLAlchemy,
    select: sa.Select,  # type: ignore[type-arg]
    *,
    page: int | None = None,
    per_page: int | None = None,
    max_per_page: int | None = None,
    error_out: bool = True,
    count: bool = True,
) -> Pagination[t.Any]:
    """Load one page of ``select`` with the current task's session.

    This is :meth:`SQLAlchemy.paginate <async_sa.SQLAlchemy.paginate>`; see there.
    """
    if max_per_page is None:
        max_per_page = DEFAULT_MAX_PER_PAGE
    elif max_per_page < 1:
        raise ValueError(
            f"max_per_page must be at least 1, not {max_per_page}; pass None for "
            f"the default of {DEFAULT_MAX_PER_PAGE}."
        )
    integration = db._integration
    page, per_page = _page_arguments(
        integration, page, per_page, max_per_page, error_out
    )
    session = db.session()
    offset = (page - 1) * per_page
    # Count first: the page's rows, kept across the count's round trip, would
    # make the garbage collector run far more often with many requests in
    # flight (2.5 times as often, paginating at 64 connections). A page the
    # count puts past the end needs no query.
    total = None
    if count:
        # Eager loaders of ``select`` are not rendered in a subquery: the count
        # joins nothing they would.
        counted = select.order_by(None).limit(None).offset(None).subquery()
        total = await session.scalar(sa.select(_COUNT).select_from(counted))
    if offset > _MAX_OFFSET or (total is not None and offset >= total):
        items: list[t.Any] = []
    else:
        result = await session.execute(select.limit(per_page).offset(offset))
        items = list(result.unique().scalars())
    if not items and page != 1 and error_out:
        integration.not_found(f"Page {page} is past the last page.")
    return SelectPagination(
        items,
        page=page,
        per_page=per_page,
        total=total,
        max_per_page=max_per_page,
        db=db,
        select=select,
    )


def _page_arguments(
    integration: Integration,
    page: int | None,
    per_page: int | None,
    max_per_page: int,
    error_out: bool,
) -> tuple[int, int]:
    """``page`` and ``per_page``: given, else from the query string, else defaults.

    Invalid values end in ``integration.not_found`` with ``error_out``, and fall back to
    the defaults without it.
    """
    args = integration.request_args()
    if page is None:
        page = _from_query_string(integration, args, "page", 1, error_out)
    if per_page is None:
        per_page = _from_query_string(
            integration, args, "per_page", DEFAULT_PER_PAGE, error_out
        )
    if page < 1:
        if error_out:
            integration.not_found(f"Page {page} does not exist; pages start at 1.")
        page = 1
    if per_page < 1:
        if error_out:
            integration.not_found(f"per_page must be at least 1, not {per_page}.")
        per_page = DEFAULT_PER_PAGE
    return page, min(per_page, max_per_page)


def _from_query_string(
    integration: Integration,
    args: Mapping[str, str] | None,
    name: str,
    default: int,
    error_out: bool,
) -> int:
    value = None if args is None else args.get(name)
    if value is None:
        return default
    match = _INTEGER.fullmatch(value)
    if match is None:
        if error_out:
            integration.not_found(f"The {name!r} query argument must be an integer.")
        return default
    sign, digits = match.groups()
    number = int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS
    return -number if sign == "-" else number
