"""The public root: a sorted, complete __all__, and the PostgreSQL test switch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import async_sa


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted and lists every public name the package root defines."""
    public = {
        name
        for name, value in vars(async_sa).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("async_sa")
    }
    assert async_sa.__all__ == sorted(async_sa.__all__)
    assert public <= set(async_sa.__all__)
    for name in async_sa.__all__:
        assert getattr(async_sa, name).__doc__, f"{name} has no docstring"


def test_package_ships_py_typed() -> None:
    """Type checkers see our annotations."""
    assert (Path(async_sa.__file__).parent / "py.typed").exists()


SWITCH_TEST = "tests/test_routing.py::test_text_goes_to_default_unless_bind_key_given"


def run_with_unreachable_servers(require: bool) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ASYNC_SA_TEST_POSTGRES_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",
        "ASYNC_SA_TEST_MARIADB_URL": "mysql+asyncmy://nobody@127.0.0.1:1/none",
        "ASYNC_SA_REQUIRE_POSTGRES": "1" if require else "0",
        "ASYNC_SA_REQUIRE_MARIADB": "1" if require else "0",
    }
    env.pop("ASYNC_SA_TEST_PSYCOPG_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            SWITCH_TEST,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )


@pytest.mark.parametrize("require", [False, True], ids=["skip", "require"])
def test_server_cases_skip_with_reason_or_fail_when_required(require: bool) -> None:
    """Without servers, the PostgreSQL (both drivers) and MariaDB cases skip
    saying how to enable them; with ASYNC_SA_REQUIRE_POSTGRES=1 and
    ASYNC_SA_REQUIRE_MARIADB=1 they fail instead."""
    result = run_with_unreachable_servers(require)
    if require:
        assert result.returncode == 1, result.stdout
        assert "PostgreSQL is required" in result.stdout
        assert "MariaDB is required" in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "set ASYNC_SA_TEST_POSTGRES_URL" in result.stdout
        assert "set ASYNC_SA_TEST_PSYCOPG_URL" in result.stdout
        assert "set ASYNC_SA_TEST_MARIADB_URL" in result.stdout
        assert "2 passed, 3 skipped" in result.stdout
