"""Configuration: URL upgrades, option precedence, SQLite defaults, clear errors."""

from __future__ import annotations

import logging
import sys
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import AsyncAdaptedQueuePool

from async_sa import SQLAlchemy
from async_sa import UnknownBindKeyError
from async_sa.engines import to_async_url
from async_sa.sqlite import BUSY_TIMEOUT as SQLITE_BUSY_TIMEOUT
from tests.conftest import Backend
from tests.conftest import MakeDb


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite://", "sqlite+aiosqlite"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("postgresql://u@h/d", "postgresql+asyncpg"),
        ("postgres://u@h/d", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg"),
        ("mysql://u@h/d", "mysql+asyncmy"),
        ("mariadb://u@h/d", "mariadb+asyncmy"),
        ("mysql+asyncmy://u@h/d", "mysql+asyncmy"),
    ],
)
async def test_url_without_async_driver_is_upgraded(
    given: str, driver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bare backend gets its usual async driver; async drivers are kept."""
    monkeypatch.chdir(tmp_path)
    async with SQLAlchemy(url=given) as db:
        assert db.engine.url.drivername == driver


@pytest.mark.parametrize(
    ("url", "driver", "suggestion"),
    [
        ("sqlite+pysqlite:///x.db", "pysqlite", "sqlite+aiosqlite"),
        ("postgresql+psycopg2://u:secret@h/d", "psycopg2", "postgresql+psycopg"),
        ("mysql+pymysql://u:secret@h/d", "pymysql", "mysql+asyncmy"),
        ("mariadb+mysqldb://u:secret@h/d", "mysqldb", "mariadb+asyncmy"),
    ],
)
def test_sync_driver_is_rejected_naming_driver_and_fix(
    url: str, driver: str, suggestion: str
) -> None:
    """A sync-only driver fails at configuration with the async driver to use."""
    db = SQLAlchemy(url=url)
    with pytest.raises(ValueError, match=rf"synchronous driver '{driver}'") as info:
        db.engine  # noqa: B018
    assert suggestion in str(info.value)
    assert "secret" not in str(info.value)


def test_driver_with_an_async_mode_is_accepted() -> None:
    """psycopg (3) and oracledb run async under create_async_engine: kept as is."""
    for url in ("postgresql+psycopg://u@h/d", "oracle+oracledb://u@h/d"):
        assert to_async_url(url, where="url=") == sa.make_url(url)


def test_missing_driver_package_says_what_to_install() -> None:
    """A driver that is not installed names the package to install."""
    db = SQLAlchemy(url="mssql+aioodbc://u:secret@h/d")
    with pytest.raises(ImportError, match="pip install") as info:
        db.engine  # noqa: B018
    assert "secret" not in str(info.value)


async def test_bare_postgresql_url_takes_psycopg_when_asyncpg_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without asyncpg, ``postgresql://`` runs on psycopg, if installed."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    async with SQLAlchemy(url="postgres://u@h/d") as db:
        assert db.engine.url.drivername == "postgresql+psycopg"


def test_bare_postgresql_url_without_any_driver_names_both_extras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With neither asyncpg nor psycopg, the error names the extra of each."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.setitem(sys.modules, "psycopg", None)
    db = SQLAlchemy(url="postgresql://u:secret@h/d")
    with pytest.raises(ImportError) as info:
        db.engine  # noqa: B018
    message = str(info.value)
    assert "'async_sa[postgresql]' (asyncpg)" in message
    assert "'async_sa[psycopg]' (psycopg)" in message
    assert "url=" in message and "secret" not in message


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("mysql://u:secret@h/d", "asyncmy", "mysql"),
        ("mariadb+asyncmy://u:secret@h/d", "asyncmy", "mysql"),
        ("postgresql+psycopg://u:secret@h/d", "psycopg", "psycopg"),
        ("postgresql+asyncpg://u:secret@h/d", "asyncpg", "postgresql"),
    ],
)
def test_url_whose_driver_is_missing_names_the_extra(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL naming a driver that is not installed names its async_sa extra."""
    monkeypatch.setitem(sys.modules, module, None)
    db = SQLAlchemy(url=url)
    with pytest.raises(
        ImportError, match=rf"pip install 'async_sa\[{extra}\]'"
    ) as info:
        db.engine  # noqa: B018
    assert "secret" not in str(info.value)


def test_sync_driver_in_binds_names_the_bind() -> None:
    """The error says which bind holds the bad URL."""
    db = SQLAlchemy(url="sqlite://", binds={"legacy": "postgresql+psycopg2://h/d"})
    with pytest.raises(ValueError, match=r"binds=\['legacy'\]"):
        db.engine  # noqa: B018


def test_malformed_url_is_rejected() -> None:
    """Something that is not a URL says so and shows what a URL looks like."""
    db = SQLAlchemy(url="not a url")
    with pytest.raises(ValueError, match="is not a database URL"):
        db.engine  # noqa: B018


def test_no_url_and_no_binds_says_what_to_set() -> None:
    """With nothing configured, the error names the argument and config keys."""
    db = SQLAlchemy()
    with pytest.raises(RuntimeError, match=r"pass url=.*SQLALCHEMY_DATABASE_URI"):
        db.engine  # noqa: B018


def test_bind_without_url_is_rejected() -> None:
    """A dict bind must carry its URL."""
    db = SQLAlchemy(binds={"a": {"echo": True}})
    with pytest.raises(ValueError, match=r"binds=\['a'\] has no 'url'"):
        db.engines  # noqa: B018


def test_bind_of_wrong_type_is_rejected() -> None:
    """A bind that is neither URL nor dict names its key and the accepted forms."""
    db = SQLAlchemy(binds={"a": 42})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"binds=\['a'\] must be a URL string"):
        db.engines  # noqa: B018


async def test_unknown_bind_key_names_key_and_configured_keys() -> None:
    """get_engine for a missing key lists the keys that exist and how to add it."""
    async with SQLAlchemy(url="sqlite://", binds={"a": "sqlite://"}) as db:
        with pytest.raises(UnknownBindKeyError, match=r"'nope'.*None, 'a'|'a', None"):
            db.get_engine("nope")
        with pytest.raises(LookupError, match="SQLALCHEMY_BINDS"):
            db.get_engine("nope")


async def test_binds_only_has_no_default_engine() -> None:
    """Without url=, only the binds exist, and db.engine explains the fix."""
    async with SQLAlchemy(binds={"a": "sqlite://"}) as db:
        assert list(db.engines) == ["a"]
        with pytest.raises(UnknownBindKeyError, match="SQLALCHEMY_DATABASE_URI"):
            db.engine  # noqa: B018


@pytest.mark.parametrize(
    "bind",
    ["sqlite://", sa.make_url("sqlite://"), {"url": "sqlite://"}],
    ids=["str", "URL", "dict"],
)
async def test_bind_accepts_string_url_object_or_dict(bind: t.Any) -> None:
    """A bind may be given as a string, a sqlalchemy.URL or a dict with a url."""
    async with SQLAlchemy(url="sqlite://", binds={"a": bind}) as db:
        assert db.engines["a"].url.drivername == "sqlite+aiosqlite"
        assert db.engines["a"] is not db.engine


async def test_engine_options_apply_to_every_engine_and_bind_options_win() -> None:
    """Constructor engine_options reach binds too; a bind's own options beat them."""
    db = SQLAlchemy(
        url="sqlite://",
        binds={"a": "sqlite://", "b": {"url": "sqlite://", "echo": False}},
        engine_options={"echo": True},
    )
    async with db:
        assert db.engine.echo is True
        assert db.engines["a"].echo is True
        assert db.engines["b"].echo is False


async def test_memory_database_is_shared_by_every_connection() -> None:
    """Two sessions on ``sqlite://`` see one database, on separate connections."""
    async with SQLAlchemy(url="sqlite://") as db:
        async with db.sessionmaker() as first, db.sessionmaker() as second:
            await first.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            await first.execute(sa.text("INSERT INTO t VALUES (1)"))
            await first.commit()
            assert await second.scalar(sa.text("SELECT count(*) FROM t")) == 1
            one = await first.connection()
            two = await second.connection()
            assert (await one.get_raw_connection()).driver_connection is not (
                await two.get_raw_connection()
            ).driver_connection


async def test_memory_databases_of_two_engines_are_separate() -> None:
    """Each ``sqlite://`` engine has a database of its own."""
    async with SQLAlchemy(url="sqlite://", binds={"other": "sqlite://"}) as db:
        async with db.engine.begin() as connection:
            await connection.execute(sa.text("CREATE TABLE only_default (x INTEGER)"))
        async with db.engines["other"].connect() as connection:
            with pytest.raises(sa.exc.OperationalError, match="no such table"):
                await connection.execute(sa.text("SELECT * FROM only_default"))


async def test_memory_database_survives_dispose() -> None:
    """Disposing the pool (as every event loop's end does) keeps the data."""
    async with SQLAlchemy(url="sqlite://") as db:
        async with db.engine.begin() as connection:
            await connection.execute(sa.text("CREATE TABLE kept (x INTEGER)"))
        await db.dispose()
        async with db.engine.connect() as connection:
            assert await connection.scalar(sa.text("SELECT count(*) FROM kept")) == 0


async def test_sqlite_relative_path_is_resolved_against_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative file is placed in the working directory at configuration time."""
    monkeypatch.chdir(tmp_path)
    async with SQLAlchemy(url="sqlite:///relative.db") as db:
        assert db.engine.url.database == str(tmp_path / "relative.db")
        async with db.engine.begin() as connection:
            await connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        assert (tmp_path / "relative.db").exists()
        assert isinstance(db.engine.pool, AsyncAdaptedQueuePool)


async def test_sqlite_file_gets_busy_timeout_and_user_value_wins(
    tmp_path: Path,
) -> None:
    """File databases wait for locks by default; connect_args given by the user win."""
    db = SQLAlchemy(
        url=f"sqlite:///{tmp_path / 'a.db'}",
        binds={
            "b": {
                "url": f"sqlite:///{tmp_path / 'b.db'}",
                "connect_args": {"timeout": 1},
            }
        },
    )
    async with db:
        for key, timeout in ((None, SQLITE_BUSY_TIMEOUT), ("b", 1)):
            async with db.get_engine(key).connect() as connection:
                raw = await connection.get_raw_connection()
                busy = await raw.driver_connection.execute("PRAGMA busy_timeout")  # type: ignore[union-attr]
                assert (await busy.fetchone()) == (int(timeout * 1000),)


async def test_password_never_appears_in_repr_or_errors() -> None:
    """repr(db), repr(engine) and configuration errors hide the password."""
    url = "postgresql://user:s3cr3t-pw@127.0.0.1:1/nowhere"
    async with SQLAlchemy(
        url=url, binds={"bad": "postgresql+psycopg2://u:s3cr3t-pw@h/d"}
    ) as db:
        with pytest.raises(ValueError) as info:
            db.engine  # noqa: B018
        assert "s3cr3t-pw" not in str(info.value)
    async with SQLAlchemy(url=url) as db:
        assert "s3cr3t-pw" not in repr(db)
        assert "s3cr3t-pw" not in repr(db.engine)
        assert "***" in repr(db)


async def test_password_never_logged_when_connecting_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A failed connection logs and raises nothing that contains the password."""
    caplog.set_level(logging.DEBUG)
    url = "postgresql://user:s3cr3t-pw@127.0.0.1:1/nowhere"
    async with SQLAlchemy(url=url, engine_options={"echo": "debug"}) as db:
        with pytest.raises((OSError, sa.exc.DBAPIError)) as info:
            async with db.engine.connect():
                pass
    assert "s3cr3t-pw" not in str(info.value)
    assert "s3cr3t-pw" not in caplog.text


async def test_repr_names_default_url_and_bind_count(
    make_db: MakeDb, backend: Backend
) -> None:
    """repr shows the default engine's URL and how many binds there are."""
    db = make_db(binds={"a": "sqlite://"})
    db.engine  # noqa: B018
    assert repr(db).startswith("<SQLAlchemy ")
    assert repr(db).endswith("+1 binds>")


def test_repr_before_configuration_is_bare() -> None:
    """An unconfigured object still has a repr."""
    assert repr(SQLAlchemy()) == "<SQLAlchemy>"


def test_sqlalchemy_names_are_reexported() -> None:
    """db.Column, db.String, db.select, db.relationship, ... as in Flask-SQLAlchemy."""
    db = SQLAlchemy()
    assert db.Column is sa.Column
    assert db.String is sa.String
    assert db.select is sa.select
    assert db.relationship is sa.orm.relationship
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        db.nonexistent  # noqa: B018
    with pytest.raises(AttributeError):
        db._private  # noqa: B018
