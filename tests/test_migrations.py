"""Migrations across binds: the real ``python -m async_sa db`` in a temporary project.

Each command runs in a subprocess, as a user would run it, on SQLite files and
on PostgreSQL (a schema per bind).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from click.testing import Result

import async_sa
from async_sa.cli import main
from tests.migration_project import Project
from tests.migration_project import project_fixture
from tests.migration_project import sqlite_project_at

EMPTY = {
    None: {"alembic_version": {"version_num"}},
    "users": {"alembic_version": {"version_num"}},
}
"""Both databases after autogenerate: an (empty) version table, nothing else."""


project = project_fixture("sqlite_file", "postgresql", "mariadb")


sqlite_project = project_fixture("sqlite_file")
"""A project with two binds on SQLite files, for failures that do not depend
on the database."""


async def test_init_migrate_upgrade_check_downgrade_cover_both_binds(
    project: Project,
) -> None:
    """One revision carries both binds; upgrade and downgrade apply it to both
    databases, each recording its own version; check and migrate see added
    columns, changed types and changed server defaults, and migrate writes
    nothing when no bind changed."""
    project.db("init")
    for name in ("env.py", "script.py.mako", "alembic.ini", "versions"):
        assert (project.path / "migrations" / name).exists()

    project.db("migrate", "-m", "first")
    (first,) = project.revisions()
    source = first.read_text()
    assert "def upgrade_()" in source and "def upgrade_users()" in source
    upgraded = project.db("upgrade")
    assert "ignored for PRIMARY key" not in upgraded.stderr  # MariaDB's note
    columns = await project.columns()
    assert columns[None]["note"] == {"id", "text"}
    assert columns["users"]["user"] == {"id", "name"}
    assert "alembic_version" in columns[None] and "alembic_version" in columns["users"]
    assert "user" not in columns[None] and "note" not in columns["users"]
    project.db("check")

    project.write_models(columns_added=True, types_changed=True)
    failed = project.db("check", ok=False)
    assert "the default bind: add_column note.title" in failed.stderr
    assert "modify_type note.text" in failed.stderr
    assert "bind 'users': add_column user.email" in failed.stderr
    assert "modify_default user.name" in failed.stderr
    project.db("migrate", "-m", "columns")
    assert len(project.revisions()) == 2
    project.db("upgrade")
    columns = await project.columns()
    assert columns[None]["note"] == {"id", "text", "title"}
    assert columns["users"]["user"] == {"id", "name", "email"}
    project.db("migrate", "-m", "nothing")
    assert len(project.revisions()) == 2, "a revision without changes was written"

    project.db("downgrade")
    columns = await project.columns()
    assert columns[None]["note"] == {"id", "text"}
    assert columns["users"]["user"] == {"id", "name"}
    first_revision = first.name.partition("_")[0]
    current = project.db("current").stdout
    assert current.count(first_revision) == 2, current


async def test_upgrade_sql_prints_each_binds_ddl_and_stamp_only_records(
    project: Project,
) -> None:
    """--sql prints every bind's script, each after a comment naming the bind,
    and leaves the databases empty; stamp records the head in each database
    without creating tables."""
    project.init()
    project.db("migrate", "-m", "first")
    script = project.db("upgrade", "--sql").stdout
    default, _, users = script.partition("-- bind 'users'")
    assert script.startswith("-- the default bind")
    assert "CREATE TABLE note" in default and "CREATE TABLE user" not in default
    assert 'CREATE TABLE "user"' in users or "CREATE TABLE user" in users
    assert "alembic_version" in default and "alembic_version" in users
    assert await project.columns() == EMPTY

    project.db("stamp", "head")
    (revision,) = project.revisions()
    head = revision.name.partition("_")[0]
    assert await project.versions() == {None: [head], "users": [head]}
    assert await project.columns() == EMPTY


async def test_check_and_migrate_fail_on_a_database_behind_the_head(
    sqlite_project: Project,
) -> None:
    """Comparing the models with a database that misses revisions is refused,
    saying which bind and what to run."""
    sqlite_project.init()
    sqlite_project.db("migrate", "-m", "first")
    for command in ("check", "migrate"):
        failed = sqlite_project.db(command, ok=False)
        assert (
            "The database of the default bind is at no revision, behind the head"
            in (failed.stderr)
        )
        assert "run `db upgrade` first" in failed.stderr
    assert len(sqlite_project.revisions()) == 1


async def test_binds_of_the_migrations_and_of_the_config_must_match(
    sqlite_project: Project,
) -> None:
    """A bind the migrations have but the config lacks, the reverse, and two
    binds on one database stop the command before any database is changed,
    naming the binds."""
    project = sqlite_project
    project.init()
    project.db("migrate", "-m", "first")

    project.write_models(binds={None: project.binds[None]})
    failed = project.db("upgrade", ok=False)
    assert "The migrations have bind 'users'" in failed.stderr
    assert "no engine is configured for it" in failed.stderr

    project.write_models(
        binds={None: project.binds[None], "users": project.binds[None]}
    )
    failed = project.db("upgrade", ok=False)
    assert "The default bind and bind 'users' are the same database" in failed.stderr

    archive = {"url": f"sqlite:///{project.path / 'archive.db'}"}
    project.write_models(binds={**project.binds, "archive": archive})
    failed = project.db("upgrade", ok=False)
    assert "Bind 'archive' is configured, but the migrations do not cover it" in (
        failed.stderr
    )
    assert await project.columns() == EMPTY


async def test_upgrade_failing_on_the_second_bind_says_which_binds_were_upgraded(
    project: Project,
) -> None:
    """The first bind is upgraded and says so; the failed bind records no new
    version (and, on PostgreSQL, whose DDL is transactional, keeps no part of
    the revision)."""
    project.init()
    project.db("revision", "-m", "manual")
    (revision,) = project.revisions()
    source = revision.read_text()
    log = "op.create_table('log', sa.Column('id', sa.Integer, primary_key=True))"
    audit = "op.create_table('audit', sa.Column('id', sa.Integer, primary_key=True))"
    source = source.replace(
        "def upgrade_() -> None:\n    pass", f"def upgrade_() -> None:\n    {log}"
    ).replace(
        "def upgrade_users() -> None:\n    pass",
        f"def upgrade_users() -> None:\n    {audit}\n"
        "    op.execute('SELECT * FROM no_such_table')",
    )
    revision.write_text(source)

    failed = project.db("upgrade", ok=False)
    assert "upgrade failed on bind 'users'" in failed.stderr
    assert "no_such_table" in failed.stderr
    assert (
        "Already upgraded (each database records its own version): "
        "the default bind." in failed.stderr
    )
    assert "Not upgraded: bind 'users'." in failed.stderr
    current = project.db("current").stdout
    revision_id = revision.name.partition("_")[0]
    assert current.count(revision_id) == 1, current
    columns = await project.columns()
    assert "log" in columns[None]
    if project.backend == "postgresql":
        assert "audit" not in columns["users"]


async def test_downgrade_failing_on_the_second_bind_says_which_binds_were_downgraded(
    project: Project,
) -> None:
    """The first bind is downgraded and says so; the failed bind keeps its
    version, so `db current` shows the two databases apart."""
    project.init()
    project.db("revision", "-m", "manual")
    (revision,) = project.revisions()
    source = revision.read_text().replace(
        "def downgrade_users() -> None:\n    pass",
        "def downgrade_users() -> None:\n    op.execute('SELECT * FROM no_such_table')",
    )
    revision.write_text(source)
    project.db("upgrade")

    failed = project.db("downgrade", ok=False)
    assert "downgrade failed on bind 'users'" in failed.stderr
    assert (
        "Already downgraded (each database records its own version): "
        "the default bind." in failed.stderr
    )
    assert "Not downgraded: bind 'users'." in failed.stderr
    revision_id = revision.name.partition("_")[0]
    assert await project.versions() == {None: [], "users": [revision_id]}


@pytest.fixture
def in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """Run ``python -m async_sa db ARGS`` in this process, in a SQLite project,
    for commands that never reach env.py (no logging set up, no event loop)."""
    sqlite_project_at(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("models", None)

    def run(*args: str, ok: bool = True) -> Result:
        result = CliRunner().invoke(main, ["db", *args])
        assert (result.exit_code == 0) == ok, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result

    yield run
    for name in ("models", "bare", "broken", "odd"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module:db", "no module named 'no_such_module'"),
        ("models:missing", "module 'models' has no attribute 'missing'"),
        ("models:Note", "is <class 'models.Note'>, not a SQLAlchemy object"),
        ("models", "is not MODULE:NAME"),
        ("os:getcwd", "calling it returned '"),
        ("json:dumps", "which needs arguments: an app factory is called without"),
        ("bare:db", "has no database: pass url= (or binds=) to SQLAlchemy()"),
        ("broken:db", "importing 'broken' failed: No module named 'nothing_here'"),
    ],
)
def test_db_option_naming_no_database_is_an_error(
    in_process: Callable[..., Result], spec: str, message: str
) -> None:
    """--db must name a SQLAlchemy object with a database, a Quart app or an
    app factory taking no arguments, in a module that imports."""
    Path("bare.py").write_text("from async_sa import SQLAlchemy\ndb = SQLAlchemy()\n")
    Path("broken.py").write_text("import nothing_here\n")
    failed = in_process("--db", spec, "upgrade", ok=False)
    assert message in failed.output


@pytest.mark.parametrize("command", [("upgrade",), ("revision", "-m", "x")])
def test_a_bind_key_that_cannot_name_a_function_is_an_error(
    in_process: Callable[..., Result], command: tuple[str, ...]
) -> None:
    """A bind key that is not a Python identifier cannot name a revision's
    upgrade_<bind>(): the command says so and what to do."""
    Path("odd.py").write_text(
        "from async_sa import SQLAlchemy\n"
        "db = SQLAlchemy(binds={None: 'sqlite:///a.db', 'user-db': 'sqlite:///b.db'})\n"
    )
    in_process("init")
    failed = in_process("--db", "odd:db", *command, ok=False)
    assert "The bind key 'user-db' cannot name a revision's upgrade_user-db()" in (
        failed.output
    )
    assert "rename it to a Python identifier" in failed.output


def test_missing_migrations_directory_says_to_run_init(
    in_process: Callable[..., Result],
) -> None:
    """Every command but init needs the directory, and says how to make it."""
    failed = in_process("--db", "models:db", "upgrade", ok=False)
    assert "No migrations directory at 'migrations'" in failed.output
    assert "run `db init` first" in failed.output


def test_revision_history_and_heads(in_process: Callable[..., Result]) -> None:
    """revision writes a function pair per bind; history and heads list it."""
    in_process("init")
    in_process("--db", "models:db", "revision", "-m", "one")
    in_process("--db", "models:db", "revision", "-m", "two")
    one, two = (
        path.read_text() for path in sorted(Path("migrations/versions").glob("*.py"))
    )
    first = one.split("revision = ")[1].split("\n")[0].strip("'")
    second = two.split("revision = ")[1].split("\n")[0].strip("'")
    if f"down_revision = '{first}'" not in two:
        first, second = second, first
    heads = in_process("--db", "models:db", "heads").output
    assert heads.strip() == f"{second} (head)"
    history = in_process("--db", "models:db", "history").output
    assert f"{first} -> {second} (head), two" in history
    assert f"<base> -> {first}, one" in history


def test_without_alembic_the_commands_say_what_to_install(
    in_process: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The db commands need the migrations extra, and say so."""
    monkeypatch.setitem(sys.modules, "alembic.util", None)
    failed = in_process("--db", "models:db", "upgrade", ok=False)
    assert "pip install 'async_sa[migrations]'" in failed.output


def test_core_imports_neither_alembic_nor_click(tmp_path: Path) -> None:
    """alembic and click are optional: `import async_sa` loads neither."""
    code = (
        "import sys, async_sa; "
        "print(sorted(m for m in ('alembic', 'click', 'mako') if m in sys.modules))"
    )
    result = Project(tmp_path, {}, "none").run(sys.executable, "-c", code)
    assert result.stdout.strip() == "[]"


def test_every_command_has_help() -> None:
    """Each command of SPEC §11 answers --help with what it does."""
    from async_sa.cli import COMMANDS

    names = {command.name for command in COMMANDS}
    assert names == {
        "init",
        "migrate",
        "revision",
        "upgrade",
        "downgrade",
        "current",
        "history",
        "heads",
        "stamp",
        "check",
    }
    runner = CliRunner()
    for command in COMMANDS:
        assert command.name is not None and command.help
        result = runner.invoke(main, ["db", command.name, "--help"])
        assert result.exit_code == 0, result.output
        assert command.help.split()[0] in result.output
        assert "-d, --directory" in result.output


def test_templates_ship_with_the_package() -> None:
    """The templates init copies are files of the installed package."""
    templates = Path(async_sa.__file__).parent / "migrations" / "templates"
    names = {path.name for path in (templates / "async_sa").iterdir()}
    assert {"env.py", "script.py.mako", "alembic.ini.mako", "README"} <= names
