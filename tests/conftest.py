"""Fixtures: every database test runs on SQLite (memory and file) and PostgreSQL.

PostgreSQL is reached at ``ASYNC_SA_TEST_POSTGRES_URL`` (default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``). When no server answers,
its cases are skipped with a reason, unless ``ASYNC_SA_REQUIRE_POSTGRES=1``, which
makes them fail instead. Each PostgreSQL test gets a schema of its own, dropped
afterwards, so runs never collide.

``ASYNC_SA_TEST_LOOP`` picks the event loop every test runs on, including the
loops tests start with :func:`asyncio.run`: ``asyncio`` (the default), ``uvloop``,
or ``eager`` (asyncio with :func:`asyncio.eager_task_factory`, Python 3.12+).

asyncio reports an exception nobody retrieved, or a task destroyed while
pending, only as a log line; such a line anywhere in the run fails it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import gc
import importlib
import importlib.util
import logging
import os
import sys
import typing as t
import uuid
import warnings
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Iterator

import hypothesis
import pytest
import sqlalchemy as sa

from async_sa import SQLAlchemy

collect_ignore_glob = [] if importlib.util.find_spec("quart") else ["*quart*"]

# CI explores the same examples every run, so a fuzz failure is reproducible
# rather than a flake; locally each run tries new ones.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

POSTGRES_URL = os.environ.get(
    "ASYNC_SA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("ASYNC_SA_REQUIRE_POSTGRES") == "1"
LOOP = os.environ.get("ASYNC_SA_TEST_LOOP", "asyncio")

# asyncpg's default sslmode "prefer" opens each connection with an SSL probe whose
# future gets an exception nobody retrieves when the connect is cancelled before
# the server answers: asyncio logs "Future exception was never retrieved ...
# ConnectionError('unexpected connection_lost() call')" (asyncpg's TLSUpgradeProto;
# plain asyncpg does it too; related: MagicStack/asyncpg#1211 and #1310). The
# tests' server speaks no SSL, so they connect without the probe and their
# deliberate cancellations print nothing. Set PGSSLMODE (or the URL's ssl) to
# test against a server that requires SSL.
os.environ.setdefault("PGSSLMODE", "disable")


def _loop_policy(name: str) -> asyncio.AbstractEventLoopPolicy | None:
    """The policy whose loops every test runs on, ``None`` for asyncio's own."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        uvloop = importlib.import_module("uvloop")

        class UvloopLoop(uvloop.Loop):  # type: ignore[misc,name-defined]
            def close(self) -> None:
                """Close, then raise the warnings of closing.

                uvloop's ``close()`` never returns when its "unclosed resource"
                ResourceWarning is raised as an error (plain asyncpg shows it):
                the warnings are recorded while it closes and issued after.
                """
                with warnings.catch_warnings(record=True) as issued:
                    warnings.simplefilter("always")
                    super().close()
                for warning in issued:
                    warnings.warn_explicit(
                        warning.message,
                        warning.category,
                        warning.filename,
                        warning.lineno,
                        source=warning.source,
                    )

        class UvloopPolicy(asyncio.DefaultEventLoopPolicy):
            def new_event_loop(self) -> asyncio.AbstractEventLoop:
                return t.cast(asyncio.AbstractEventLoop, UvloopLoop())

        return UvloopPolicy()
    if name == "eager" and sys.version_info >= (3, 12):
        _let_hypercorn_run_eager_apps()

        class EagerPolicy(asyncio.DefaultEventLoopPolicy):
            def new_event_loop(self) -> asyncio.AbstractEventLoop:
                loop = super().new_event_loop()
                loop.set_task_factory(asyncio.eager_task_factory)
                return loop

        return EagerPolicy()
    raise pytest.UsageError(
        f"ASYNC_SA_TEST_LOOP={name!r}: expected asyncio, uvloop or eager "
        "(eager needs Python 3.12+)"
    )


def _let_hypercorn_run_eager_apps() -> None:
    """Give Hypercorn's HTTP streams the ``app_put = None`` they check for.

    Hypercorn 0.18 sets it once the app's task is made; an eager task runs a
    short request to its end before that, and the stream's close then fails
    ("'HTTPStream' object has no attribute 'app_put'").
    """
    try:
        http_stream = importlib.import_module("hypercorn.protocol.http_stream")
    except ImportError:
        return
    http_stream.HTTPStream.app_put = None


class AsyncioNoise(logging.Handler):
    """Collects asyncio's reports of lost exceptions and destroyed tasks."""

    REPORTS = (
        "Future exception was never retrieved",
        "Task exception was never retrieved",
        "Task was destroyed but it is pending",
    )

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.test = "(collection)"
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.REPORTS):
            self.seen.append(f"during or after {self.test}:\n{self.format(record)}")


_noise = AsyncioNoise()


def pytest_configure(config: pytest.Config) -> None:
    policy = _loop_policy(LOOP)
    if policy is not None:
        asyncio.set_event_loop_policy(policy)
    logging.getLogger("asyncio").addHandler(_noise)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _noise.test = item.nodeid
    return (yield)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Fail the run on asyncio noise or on a warning left for the collector."""
    _noise.test = "the last test"
    with warnings.catch_warnings(record=True) as left:
        warnings.simplefilter("always")
        gc.collect()
    _noise.seen.extend(f"at the end of the run: {warning}" for warning in left)
    if _noise.seen and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    if _noise.seen:
        terminalreporter.section("asyncio noise (fails the run)", red=True)
        for report in _noise.seen:
            terminalreporter.line(report)


def asyncpg_dsn(url: str | sa.URL) -> str:
    """The plain ``postgresql://`` DSN asyncpg takes for a SQLAlchemy URL."""
    plain = sa.make_url(url).set(drivername="postgresql")
    return plain.render_as_string(hide_password=False)


@functools.cache
def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or ``None`` when it answers."""
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed (pip install 'async_sa[postgresql]')"

    async def probe() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL), timeout=3)
        await connection.close()

    try:
        # Called from async fixtures: probe in a thread with its own event loop.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(probe())).result()
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as error:
        shown = sa.make_url(POSTGRES_URL).render_as_string(hide_password=True)
        return (
            f"no PostgreSQL server answers at {shown} ({type(error).__name__}); "
            "set ASYNC_SA_TEST_POSTGRES_URL to run these cases "
            "(ASYNC_SA_REQUIRE_POSTGRES=1 makes this a failure)"
        )
    return None


def require_postgres() -> None:
    """Skip (or, when required, fail) the current test without PostgreSQL."""
    reason = postgres_unavailable()
    if reason is not None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required: {reason}")
        pytest.skip(reason)


async def count_postgres_backends(application_name: str, state: str = "%") -> int:
    """Our backends in ``pg_stat_activity``, by application name and state
    (a LIKE pattern, e.g. ``"idle in transaction%"``)."""
    return await _on_postgres(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = $1 AND state LIKE $2",
        application_name,
        state,
    )


async def terminate_postgres_backends(application_name: str) -> int:
    """Kill our backends, as a database restart would; returns how many."""
    return await _on_postgres(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1",
        application_name,
    )


async def _on_postgres(query: str, *arguments: object) -> int:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        return t.cast(int, await connection.fetchval(query, *arguments))
    finally:
        await connection.close()


@dataclasses.dataclass
class Backend:
    """One database to run a test on: its URL and the engine options it needs."""

    name: str
    url: str
    engine_options: dict[str, t.Any] = dataclasses.field(default_factory=dict)

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgresql"

    def bind(self, **options: t.Any) -> dict[str, t.Any]:
        """This database as a ``binds`` entry, with extra engine ``options``."""
        return {"url": self.url, **self.engine_options, **options}


BACKENDS = ["sqlite_memory", "sqlite_file", "postgresql"]


async def _postgres_backend() -> AsyncIterator[Backend]:
    require_postgres()
    import asyncpg

    schema = f"async_sa_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(asyncpg_dsn(POSTGRES_URL))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        options = {"connect_args": {"server_settings": {"search_path": schema}}}
        yield Backend("postgresql", POSTGRES_URL, options)
    finally:
        await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await connection.close()


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: t.Any
) -> AsyncIterator[Backend]:
    """Each database a test runs on: in-memory SQLite, file SQLite, PostgreSQL."""
    if request.param == "sqlite_memory":
        yield Backend("sqlite_memory", "sqlite://")
    elif request.param == "sqlite_file":
        yield Backend("sqlite_file", f"sqlite:///{tmp_path / 'test.db'}")
    else:
        async for backend in _postgres_backend():
            yield backend


@pytest.fixture
async def postgres() -> AsyncIterator[Backend]:
    """PostgreSQL alone, for tests that only make sense there."""
    async for backend in _postgres_backend():
        yield backend


MakeDb = Callable[..., SQLAlchemy]
NewDb = Callable[..., SQLAlchemy]


@pytest.fixture
async def new_db() -> AsyncIterator[NewDb]:
    """Build ``SQLAlchemy`` objects (arguments as for ``SQLAlchemy``); all are
    disposed afterwards."""
    made: list[SQLAlchemy] = []

    def make(**kwargs: t.Any) -> SQLAlchemy:
        db = SQLAlchemy(**kwargs)
        made.append(db)
        return db

    yield make
    for db in made:
        await db.dispose()


@pytest.fixture
def make_db(backend: Backend, new_db: NewDb) -> MakeDb:
    """Build ``SQLAlchemy`` objects on ``backend``; all are disposed afterwards.

    Keyword arguments go to ``SQLAlchemy``; ``url`` defaults to the backend's,
    and on the backend's URL its engine options are added to ``engine_options``.
    """

    def make(**kwargs: t.Any) -> SQLAlchemy:
        kwargs.setdefault("url", backend.url)
        if kwargs["url"] == backend.url:
            kwargs["engine_options"] = {
                **backend.engine_options,
                **kwargs.get("engine_options", {}),
            }
        return new_db(**kwargs)

    return make


@pytest.fixture
def db(make_db: MakeDb) -> SQLAlchemy:
    """A default ``SQLAlchemy`` object on the test's backend."""
    return make_db()
