"""Development sessions: tests (SQLite and PostgreSQL), lint, typing, bench, demos.

PostgreSQL cases read ``ASYNC_SA_TEST_POSTGRES_URL`` and skip when no server
answers, unless ``ASYNC_SA_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")


def group(name: str) -> list[str]:
    """The requirements of a dependency group of pyproject.toml."""
    return list(nox.project.dependency_groups(PYPROJECT, name))


OLDEST_SQLALCHEMY = "2.0.53"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on SQLite and PostgreSQL, with the newest dependencies."""
    session.install("-e", ".[postgresql,quart,migrations]", *group("tests"))
    session.run("pytest", *session.posargs)


@nox.session
def tests_min(session: nox.Session) -> None:
    """The test suite on the oldest supported SQLAlchemy 2.0 release.

    2.0.53 is the first whose asyncio connections are always closed when a task
    is cancelled mid-query (the disconnect-storm test fails on 2.0.30 to 2.0.52).
    """
    session.install("-e", ".[postgresql,quart]", *group("tests"))
    session.install(f"sqlalchemy[asyncio]=={OLDEST_SQLALCHEMY}")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, tests, examples and benchmarks."""
    session.install("-e", ".[postgresql,quart,migrations]", *group("typing"))
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: ratios against plain SQLAlchemy asyncio (never run by tests)."""
    session.install("-e", ".[postgresql,quart]", *group("bench"))
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
