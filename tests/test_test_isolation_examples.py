"""The README's two conftest examples (examples/testing_standalone and
examples/testing_quart) pass as their own pytest runs: on SQLite and PostgreSQL,
with pytest-asyncio's loop per test and with one loop for the session."""

from __future__ import annotations

import os
import subprocess
import sys
import typing as t
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from async_sa import SQLAlchemy
from async_sa.testing import MIN_PYTEST_ASYNCIO
from tests.conftest import _on_postgres
from tests.conftest import POSTGRES_URL
from tests.conftest import require_postgres

ROOT = Path(__file__).parent.parent
EXAMPLES = {
    "standalone": ("examples/testing_standalone", "BLOG_DATABASE_URL", 6),
    "quart": ("examples/testing_quart", "TEST_DATABASE_URL", 7),
}


def _pytest_asyncio_version() -> tuple[int, ...]:
    import importlib.metadata

    version = importlib.metadata.version("pytest-asyncio")
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


pytestmark = pytest.mark.skipif(
    _pytest_asyncio_version() < MIN_PYTEST_ASYNCIO,
    reason="async_sa.testing needs a pytest-asyncio that hands fixture context "
    "variables to the test",
)


@pytest.fixture
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A file SQLite database, or a PostgreSQL database made for the run."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blog.db'}"
        return
    require_postgres()
    name = f"async_sa_example_{uuid.uuid4().hex[:12]}"
    await _on_postgres(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(False)
    finally:
        await _on_postgres(f'DROP DATABASE "{name}" WITH (FORCE)')


CASES = [
    (example, loop_scope, backend)
    for example in EXAMPLES
    for loop_scope, backend in [
        ("function", "sqlite"),
        ("function", "postgresql"),
        ("session", "sqlite"),
    ]
]
"""Each example on each backend with a loop per test, and with one loop for the
session on SQLite (each case is a new interpreter, ~10 s)."""


@pytest.mark.parametrize(
    ("example", "loop_scope", "database_url"), CASES, indirect=["database_url"]
)
def test_the_readme_conftest_examples_pass(
    example: str, loop_scope: str, database_url: str
) -> None:
    """Every test of the example passes in strict mode (each starts from an
    empty database), and the database is left empty of tables."""
    folder, variable, tests = EXAMPLES[example]
    result = _run_pytest(
        "-o",
        f"asyncio_default_fixture_loop_scope={loop_scope}",
        "-o",
        f"asyncio_default_test_loop_scope={loop_scope}",
        folder,
        env={variable: database_url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{tests} passed" in result.stdout
    assert _tables(database_url) == []


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_the_readme_shows_the_examples_conftest_as_it_is(example: str) -> None:
    """The README's conftest.py blocks are the files these tests run."""
    conftest = (ROOT / EXAMPLES[example][0] / "conftest.py").read_text()
    assert f"```python\n{conftest}```" in (ROOT / "README.md").read_text()


def test_the_plugin_without_the_db_fixture_says_what_to_define(
    tmp_path: Path,
) -> None:
    """A suite that opts in but defines no async_sa_db fails naming the
    fixture to define."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["async_sa.testing"]\n')
    (tmp_path / "test_it.py").write_text("async def test_db(isolated_db): pass\n")
    result = _run_pytest("-o", "asyncio_mode=auto", str(tmp_path), env={})
    assert result.returncode != 0
    assert "define a session-scoped fixture named async_sa_db" in result.stdout


def _run_pytest(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """pytest in a new interpreter, from the repository root, strict mode."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["-o", "asyncio_mode=strict", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tables(url: str) -> list[str]:
    """The tables left in ``url``'s database (a sync look, in a thread)."""
    import asyncio
    import concurrent.futures

    async def look() -> list[str]:
        async with SQLAlchemy(url=url) as db, db.engine.connect() as connection:
            return t.cast(
                list[str],
                await connection.run_sync(
                    lambda sync: sa.inspect(sync).get_table_names()
                ),
            )

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, look()).result()
