"""Development sessions: tests (SQLite, PostgreSQL through asyncpg and psycopg,
MariaDB), lint, typing, bench, demos, and the compatibility matrix CI runs
(``.ci/run``).

PostgreSQL cases read ``ASYNC_SA_TEST_POSTGRES_URL`` (and
``ASYNC_SA_TEST_PSYCOPG_URL``), MariaDB cases ``ASYNC_SA_TEST_MARIADB_URL``; they
skip when no server answers, unless ``ASYNC_SA_REQUIRE_POSTGRES=1`` /
``ASYNC_SA_REQUIRE_MARIADB=1``.

The matrix sessions find their interpreters on ``PATH`` and in pyenv's versions
(the newest installed patch of each). A missing interpreter is an error, never
a skipped session: a matrix that silently shrinks would pass on nothing.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def group(name: str) -> list[str]:
    """The requirements of a dependency group of pyproject.toml."""
    return list(nox.project.dependency_groups(PYPROJECT, name))


def _add_pyenv_interpreters() -> None:
    """Put each pyenv-installed Python's newest patch release on ``PATH``, so
    ``python3.X`` resolves whether or not pyenv selects that version."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not root.is_dir():
        return
    newest: dict[str, tuple[tuple[int, ...], Path]] = {}
    for version in root.iterdir():
        match = re.fullmatch(r"3\.(\d+)\.(\d+)", version.name)
        if match is None or not (version / "bin" / "python").exists():
            continue
        minor, patch = int(match[1]), int(match[2])
        known = newest.get(match[1])
        if known is None or known[0] < (minor, patch):
            newest[match[1]] = ((minor, patch), version / "bin")
    extra = [str(bin_dir) for _, bin_dir in newest.values()]
    os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), *extra])


_add_pyenv_interpreters()

MAIN_PYTHON = "3.11"
OLDEST_SQLALCHEMY = "2.0.55"
OLDEST_QUART = "0.19"
# The tests every configuration besides the main one runs: the event-loop
# lifecycle, cancellation and cleanup, the Quart extension, the fault tests and
# the async shell (threads, signals, the REPL), where a runtime difference
# shows first.
RUNTIME_TESTS = [
    "tests/test_runtime.py",
    "tests/test_lifecycle.py",
    "tests/test_cleanup.py",
    "tests/test_reliability.py",
    "tests/test_quart_extension.py",
    "tests/test_quart_reliability.py",
    "tests/test_quart_server.py",
    "tests/test_quart_views.py",
    "tests/test_quart_example.py",
    "tests/test_shell.py",
    "tests/test_quart_shell.py",
]


def _install(session: nox.Session, *pins: str) -> None:
    """The package with its test dependencies, then ``pins`` over them."""
    session.install("-e", ".[postgresql,quart,migrations]", *group("tests"))
    if pins:
        session.install(*pins)


def _pytest(session: nox.Session, loop: str = "asyncio") -> None:
    """pytest on ``session.posargs``, else on :data:`RUNTIME_TESTS`."""
    session.run(
        "pytest",
        *(session.posargs or RUNTIME_TESTS),
        env={"ASYNC_SA_TEST_LOOP": loop},
    )


@nox.session(python=MAIN_PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite on every backend, with the newest dependencies."""
    _install(session)
    session.run("pytest", *session.posargs)


@nox.session(python=["3.10", "3.12", "3.13"])
def tests_python(session: nox.Session) -> None:
    """The other Pythons, with the newest dependencies each allows (on 3.12+
    that includes the newest Quart)."""
    _install(session)
    _pytest(session)


@nox.session(python="3.10")
def tests_oldest(session: nox.Session) -> None:
    """Every dependency at the oldest version pyproject.toml allows, on the
    oldest Python.

    SQLAlchemy 2.0.55 is the first that returns a connection to its pool when
    the rollback resetting it is cancelled (SQLAlchemy #13699: on 2.0.53 and
    2.0.54 a commit cut by ``wait_for`` leaves one checked out in about one run
    in ten; the disconnect-storm test fails on 2.0.30 to 2.0.52). aiosqlite
    0.22.1 is the first with ``stop()``, which SQLAlchemy's forced close and
    :mod:`async_sa.event_loops` use. asyncpg 0.29 to 0.31 leave exceptions
    unretrieved after cancelled transactions ("Future exception was never
    retrieved ... connection was closed in the middle of operation": 12 to 39
    in the lifecycle tests; none on 0.32.0). asyncmy 0.2.13 is the first that
    closes a connection whose read was cancelled instead of pooling it out of
    step with the server.
    """
    _install(
        session,
        f"sqlalchemy[asyncio]=={OLDEST_SQLALCHEMY}",
        f"quart=={OLDEST_QUART}.*",
        "aiosqlite==0.22.1",
        "asyncpg==0.32.0",
        "psycopg[binary]==3.2.1",
        "asyncmy==0.2.13",
        "blinker==1.7.*",
    )
    _pytest(session)


@nox.session(python=MAIN_PYTHON)
@nox.parametrize(
    "pin",
    [
        nox.param(f"sqlalchemy[asyncio]=={OLDEST_SQLALCHEMY}", id="sqlalchemy-oldest"),
        nox.param("sqlalchemy[asyncio]<2.1", id="sqlalchemy-2.0"),
        nox.param(f"quart=={OLDEST_QUART}.*", id="quart-oldest"),
    ],
)
def tests_deps(session: nox.Session, pin: str) -> None:
    """The main Python with one dependency at another supported version."""
    _install(session, pin)
    _pytest(session)


@nox.session(python=MAIN_PYTHON)
def tests_uvloop(session: nox.Session) -> None:
    """Every test's event loop is a uvloop loop."""
    _install(session, "uvloop")
    _pytest(session, loop="uvloop")


@nox.session(python=["3.12", "3.13"])
def tests_eager(session: nox.Session) -> None:
    """Every event loop runs tasks with ``asyncio.eager_task_factory``."""
    _install(session)
    _pytest(session, loop="eager")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=MAIN_PYTHON)
@nox.parametrize(
    "sqlalchemy",
    [
        nox.param("sqlalchemy[asyncio]", id="newest"),
        nox.param(f"sqlalchemy[asyncio]=={OLDEST_SQLALCHEMY}", id="sqlalchemy-oldest"),
    ],
)
def typing(session: nox.Session, sqlalchemy: str) -> None:
    """mypy --strict over the package, tests, examples and benchmarks, on the
    newest and the oldest supported SQLAlchemy."""
    session.install("-e", ".[postgresql,quart,migrations]", *group("typing"))
    session.install("--upgrade", sqlalchemy)
    session.run("mypy")


@nox.session(python=MAIN_PYTHON)
@nox.parametrize(
    "flit_core",
    [
        nox.param("flit_core==3.11.0", id="oldest"),
        nox.param("flit_core<5", id="newest"),
    ],
)
def build(session: nox.Session, flit_core: str) -> None:
    """The wheel, built with the oldest and the newest build backend pyproject.toml
    allows; it must ship the license and ``py.typed``."""
    session.install(flit_core)
    out = session.create_tmp()
    session.run("pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", out)
    (wheel,) = Path(out).glob("async_sa-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    for required in ("async_sa/py.typed", "LICENSE"):
        if not any(name.endswith(required) for name in names):
            session.error(f"{wheel.name} lacks {required}")
    wheel.unlink()


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against plain SQLAlchemy asyncio (never run by tests)."""
    session.install("-e", ".[postgresql,psycopg,mysql,quart]", *group("bench"))
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """The standalone example script on embedded SQLite."""
    session.install("-e", ".")
    session.run("python", "examples/standalone.py")


@nox.session
def demo_app(session: nox.Session) -> None:
    """The example Quart app on embedded SQLite, served by hypercorn on 127.0.0.1:
    a few requests, printed, then the server stops."""
    session.install("-e", ".[quart]", "hypercorn", "httpx")
    session.run("python", "-m", "examples.notes_app", "--demo")
