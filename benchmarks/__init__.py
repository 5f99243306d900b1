"""Benchmarks: what async_sa costs over hand-written SQLAlchemy asyncio.

Run with ``python -m benchmarks`` (``nox -s bench``); ``--quick`` for a short
smoke run, ``--only NAME`` for one scenario, ``--help`` for the rest. Each
scenario runs against its baseline interleaved in one process (A B B A ...),
and reports the median of the paired ratios (async_sa time / baseline time)
with their min and max, on SQLite (aiosqlite, a file) and PostgreSQL
(asyncpg); the in-process scenarios also on PostgreSQL through psycopg and on
MariaDB (asyncmy). The run writes ``benchmarks/RESULTS.md`` and
``benchmarks/throughput.png``.

Never run by the test suite: no module here is named ``test_*``.
"""
