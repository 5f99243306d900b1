"""Fixtures: every database test runs on five backends: SQLite in memory and in
a file, PostgreSQL through asyncpg and through psycopg, and MariaDB through asyncmy.

PostgreSQL is reached at ``ASYNC_SA_TEST_POSTGRES_URL`` (default
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``), through psycopg at
``ASYNC_SA_TEST_PSYCOPG_URL`` (default: the same server), MariaDB at
``ASYNC_SA_TEST_MARIADB_URL`` (default ``mysql+asyncmy://root@127.0.0.1:3306/test``).
When a server does not answer (or its driver is not installed), its cases are
skipped with the reason, unless ``ASYNC_SA_REQUIRE_POSTGRES=1`` (both PostgreSQL
drivers) or ``ASYNC_SA_REQUIRE_MARIADB=1``, which make them fail instead. Each
PostgreSQL test gets a schema of its own and each MariaDB test a database of its
own, dropped afterwards, so runs never collide.

``ASYNC_SA_TEST_LOOP`` picks the event loop every test runs on, including the
loops tests start with :func:`asyncio.run`: ``asyncio`` (the default), ``uvloop``,
or ``eager`` (asyncio with :func:`asyncio.eager_task_factory`, Python 3.12+).

asyncio reports an exception nobody retrieved, or a task destroyed while
pending, only as a log line; such a line anywhere in the run fails it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
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
import sqlalchemy.ext.asyncio as sa_async
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.pool import NullPool

from async_sa import SQLAlchemy
from async_sa.engines import DRIVER_EXTRAS

collect_ignore_glob = [] if importlib.util.find_spec("quart") else ["*quart*"]

# CI explores the same examples every run, so a fuzz failure is reproducible
# rather than a flake; locally each run tries new ones.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

POSTGRES_URL = os.environ.get(
    "ASYNC_SA_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
PSYCOPG_URL = os.environ.get(
    "ASYNC_SA_TEST_PSYCOPG_URL",
    sa.make_url(POSTGRES_URL)
    .set(drivername="postgresql+psycopg")
    .render_as_string(hide_password=False),
)
MARIADB_URL = os.environ.get(
    "ASYNC_SA_TEST_MARIADB_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
)
REQUIRED_BY = {
    "PostgreSQL": "ASYNC_SA_REQUIRE_POSTGRES",
    "MariaDB": "ASYNC_SA_REQUIRE_MARIADB",
}
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


def _probe(connect: Callable[[], t.Awaitable[None]]) -> BaseException | None:
    """Run ``connect`` in a thread with its own event loop (the callers are
    async fixtures); its error, or ``None`` when it succeeds."""

    async def probe() -> None:
        await asyncio.wait_for(connect(), 5)

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(lambda: asyncio.run(probe())).result()
    except Exception as error:
        return error
    return None


@functools.cache
def server_unavailable(what: str, url: str, variable: str) -> str | None:
    """Why the ``what`` server at ``url`` (read from the environment variable
    ``variable``) cannot be used through the URL's driver, or ``None``."""
    driver = sa.make_url(url).get_driver_name()
    if importlib.util.find_spec(driver) is None:
        extra = DRIVER_EXTRAS.get(driver, driver)
        return f"{driver} is not installed (pip install 'async_sa[{extra}]')"

    async def connect() -> None:
        engine = sa_async.create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect():
                pass
        finally:
            await engine.dispose()

    error = _probe(connect)
    if error is None:
        return None
    shown = sa.make_url(url).render_as_string(hide_password=True)
    return (
        f"no {what} server answers at {shown} ({type(error).__name__}); "
        f"set {variable} to run these cases "
        f"({REQUIRED_BY[what]}=1 makes this a failure)"
    )


def postgres_unavailable() -> str | None:
    """Why PostgreSQL (through asyncpg) cannot be used here, or ``None``."""
    return server_unavailable("PostgreSQL", POSTGRES_URL, "ASYNC_SA_TEST_POSTGRES_URL")


def require_postgres() -> None:
    """Skip (or, when required, fail) the current test without PostgreSQL."""
    _require("PostgreSQL", postgres_unavailable())


def require_mariadb() -> None:
    """Skip (or, when required, fail) the current test without MariaDB."""
    _require(
        "MariaDB",
        server_unavailable("MariaDB", MARIADB_URL, "ASYNC_SA_TEST_MARIADB_URL"),
    )


def _require(what: str, reason: str | None) -> None:
    if reason is not None:
        if os.environ.get(REQUIRED_BY[what]) == "1":
            pytest.fail(f"{what} is required: {reason}")
        pytest.skip(reason)


async def count_postgres_backends(
    application_name: str, state: str = "%", url: str = POSTGRES_URL
) -> int:
    """Our backends in ``pg_stat_activity``, by application name and state
    (a LIKE pattern, e.g. ``"idle in transaction%"``)."""
    return await _on_postgres(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = $1 AND state LIKE $2",
        application_name,
        state,
        url=url,
    )


async def terminate_postgres_backends(
    application_name: str, url: str = POSTGRES_URL
) -> int:
    """Kill our backends, as a database restart would; returns how many."""
    return await _on_postgres(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1",
        application_name,
        url=url,
    )


async def _on_postgres(query: str, *arguments: object, url: str = POSTGRES_URL) -> int:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return t.cast(int, await connection.fetchval(query, *arguments))
    finally:
        await connection.close()


async def _mariadb_connect(url: str | sa.URL) -> t.Any:
    """A plain asyncmy connection (autocommit) to the MariaDB server of ``url``."""
    import asyncmy

    parsed = sa.make_url(url)
    return await asyncmy.connect(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 3306,
        user=parsed.username or "root",
        password=parsed.password or "",
        database=parsed.database,
        autocommit=True,
        connect_timeout=3,
    )


async def _on_mariadb(query: str, *arguments: object) -> list[tuple[t.Any, ...]]:
    connection = await _mariadb_connect(MARIADB_URL)
    try:
        async with connection.cursor() as cursor:
            await cursor.execute(query, arguments or None)
            return list(await cursor.fetchall())
    finally:
        connection.close()


@dataclasses.dataclass
class Backend:
    """One database to run a test on: its URL and the engine options it needs.

    ``namespace`` is the test's own PostgreSQL schema or MariaDB database.
    """

    name: str
    url: str
    engine_options: dict[str, t.Any] = dataclasses.field(default_factory=dict)
    namespace: str = ""

    @property
    def is_postgres(self) -> bool:
        """PostgreSQL, through asyncpg or psycopg."""
        return self.name in ("postgresql", "psycopg")

    @property
    def is_mariadb(self) -> bool:
        return self.name == "mariadb"

    @property
    def is_sqlite(self) -> bool:
        return self.name.startswith("sqlite")

    @property
    def has_server(self) -> bool:
        """A database server whose connections can be counted and killed."""
        return not self.is_sqlite

    def bind(self, **options: t.Any) -> dict[str, t.Any]:
        """This database as a ``binds`` entry, with extra engine ``options``."""
        return {"url": self.url, **self.engine_options, **options}

    def tagged(self, tag: str, **options: t.Any) -> dict[str, t.Any]:
        """The engine options, plus ``options``, with connections that
        :meth:`count_connections` and :meth:`kill_connections` find by ``tag``:
        on PostgreSQL their application name; on MariaDB, which has none, every
        connection to the test's own database counts as tagged."""
        merged = copy.deepcopy(self.engine_options)
        if self.name == "postgresql":
            merged["connect_args"]["server_settings"]["application_name"] = tag
        elif self.name == "psycopg":
            merged["connect_args"]["application_name"] = tag
        return {**merged, **options}

    async def count_connections(self, tag: str, state: str = "any") -> int:
        """Our open server connections (0 on SQLite) in ``state``: ``"any"``,
        ``"active"`` (running a statement) or ``"idle in transaction"`` (in a
        transaction, running nothing)."""
        if self.is_postgres:
            pattern = {"any": "%", "idle in transaction": "idle in transaction%"}
            return await count_postgres_backends(
                tag, pattern.get(state, state), self.url
            )
        if self.is_mariadb:
            query = {
                "any": "SELECT count(*) FROM information_schema.PROCESSLIST p "
                "WHERE p.DB = %s",
                "active": "SELECT count(*) FROM information_schema.PROCESSLIST p "
                "WHERE p.DB = %s AND p.COMMAND = 'Query'",
                "idle in transaction": "SELECT count(*) "
                "FROM information_schema.INNODB_TRX t "
                "JOIN information_schema.PROCESSLIST p "
                "ON t.trx_mysql_thread_id = p.ID "
                "WHERE p.DB = %s AND p.COMMAND = 'Sleep'",
            }[state]
            ((count,),) = await _on_mariadb(query, self.namespace)
            return int(count)
        return 0

    async def kill_connections(self, tag: str) -> int:
        """Kill our server connections, as a database restart would; how many."""
        if self.is_postgres:
            return await terminate_postgres_backends(tag, self.url)
        if self.is_mariadb:
            rows = await _on_mariadb(
                "SELECT ID FROM information_schema.PROCESSLIST "
                "WHERE DB = %s AND ID <> CONNECTION_ID()",
                self.namespace,
            )
            for (thread_id,) in rows:
                with contextlib.suppress(Exception):
                    await _on_mariadb(f"KILL {int(thread_id)}")
            return len(rows)
        return 0


BACKENDS = ["sqlite_memory", "sqlite_file", "postgresql", "psycopg", "mariadb"]
SERVER_BACKENDS = ["postgresql", "psycopg", "mariadb"]
HEAVY_BACKENDS = ["sqlite_file", *SERVER_BACKENDS]
"""The backends of the slowest reliability cases: SQLite in memory uses the
driver of the file (aiosqlite), so it is left out of those to bound the suite."""
on_heavy_backends = pytest.mark.parametrize("backend", HEAVY_BACKENDS, indirect=True)
"""Runs a slow reliability case on :data:`HEAVY_BACKENDS` only."""
POSTGRES_BACKENDS = ["postgresql", "psycopg"]


async def _postgres_backend(name: str) -> AsyncIterator[Backend]:
    if name == "psycopg":
        _require(
            "PostgreSQL",
            server_unavailable("PostgreSQL", PSYCOPG_URL, "ASYNC_SA_TEST_PSYCOPG_URL"),
        )
    else:
        require_postgres()
    import asyncpg

    schema = f"async_sa_test_{uuid.uuid4().hex[:12]}"
    url = PSYCOPG_URL if name == "psycopg" else POSTGRES_URL
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await connection.execute(f'CREATE SCHEMA "{schema}"')
        options: dict[str, t.Any]
        if name == "psycopg":
            options = {"connect_args": {"options": f"-csearch_path={schema}"}}
        else:
            options = {"connect_args": {"server_settings": {"search_path": schema}}}
        yield Backend(name, url, options, schema)
    finally:
        await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await connection.close()


async def _mariadb_backend() -> AsyncIterator[Backend]:
    require_mariadb()
    database = f"async_sa_test_{uuid.uuid4().hex[:12]}"
    await _on_mariadb(f"CREATE DATABASE `{database}`")
    try:
        url = sa.make_url(MARIADB_URL).set(database=database)
        yield Backend(
            "mariadb", url.render_as_string(hide_password=False), {}, database
        )
    finally:
        await _on_mariadb(f"DROP DATABASE `{database}`")


async def open_backend(name: str, tmp_path: t.Any) -> AsyncIterator[Backend]:
    """The backend called ``name`` (one of :data:`BACKENDS`), for one test."""
    if name == "sqlite_memory":
        yield Backend(name, "sqlite://")
    elif name == "sqlite_file":
        yield Backend(name, f"sqlite:///{tmp_path / 'test.db'}")
    elif name == "mariadb":
        async for backend in _mariadb_backend():
            yield backend
    else:
        async for backend in _postgres_backend(name):
            yield backend


def _backends_fixture(name: str, names: list[str], doc: str) -> t.Any:
    """A fixture called ``name``, run once per backend of ``names``."""

    async def fixture(
        request: pytest.FixtureRequest, tmp_path: t.Any
    ) -> AsyncIterator[Backend]:
        async for backend in open_backend(request.param, tmp_path):
            yield backend

    fixture.__doc__ = doc
    return pytest.fixture(params=names, name=name)(fixture)


backend = _backends_fixture(
    "backend",
    BACKENDS,
    """Each database a test runs on: SQLite in memory and in a file, PostgreSQL
    through asyncpg and through psycopg, MariaDB.""",
)
postgres = _backends_fixture(
    "postgres",
    POSTGRES_BACKENDS,
    "PostgreSQL alone, through each driver, for tests that only make sense there.",
)
server = _backends_fixture(
    "server",
    SERVER_BACKENDS,
    """Each database server (PostgreSQL through each driver, MariaDB), for tests
    that count or kill server connections.""",
)


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


# -- helpers the test modules share ----------------------------------------------


def todo_model(db: SQLAlchemy) -> type[t.Any]:
    """A ``Todo`` model (``id``, ``title``) on ``db.Model``."""

    class Todo(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(sa.String(50), default="")

    return Todo


def note_model(db: SQLAlchemy) -> type[t.Any]:
    """A ``Note`` model (``id``, ``text``) on ``db.Model``."""

    class Note(db.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(50), default="")

    return Note


async def count(db: SQLAlchemy, model: type[t.Any], app: t.Any = None) -> int:
    """Rows of ``model`` as a fresh session sees them; in ``app``'s database (in
    its app context) when given."""
    if app is not None:
        async with app.app_context():
            return await count(db, model)
    async with db.sessionmaker() as session:
        return await session.scalar(sa.select(sa.func.count()).select_from(model)) or 0


def checked_out(db: SQLAlchemy, owner: object | None = None) -> int:
    """Connections of ``db``'s engines for ``owner`` (an app; ``None``: the
    ``db``'s own) not back in their pools."""
    return sum(
        engine.pool.checkedout()  # type: ignore[attr-defined]
        for engine in db.state_for(owner).engines.values()
    )
