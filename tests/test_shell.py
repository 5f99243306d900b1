"""The async shell: the real ``python -m async_sa shell --db models:db`` in a
temporary project with two binds, fed on its standard input or typed on a
pseudo-terminal (Ctrl+C, Ctrl+D), on SQLite files, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from async_sa import shell
from async_sa import SQLAlchemy
from async_sa.cli import main
from async_sa.target import load_target
from tests.migration_project import Project
from tests.migration_project import project_fixture

SHELL = (sys.executable, "-m", "async_sa", "shell", "--db", "models:db")
CONTROLLING_TERMINAL = (
    "import fcntl, os, sys, termios; "
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
"""Run ``argv[1:]`` with its standard input, a pseudo-terminal, as its
controlling terminal, so Ctrl+C typed there sends it SIGINT."""


project = project_fixture("sqlite_file", "postgresql", "mariadb")
sqlite_project = project_fixture("sqlite_file")


async def rows(
    project: Project, column: str, table: str, bind_key: str | None = None
) -> list[t.Any]:
    """``column`` of every row of ``table`` in the database of ``bind_key``."""
    db = SQLAlchemy(binds=project.binds)
    query: sa.Select[t.Any] = sa.select(sa.column(column)).select_from(sa.table(table))
    try:
        async with db.get_engine(bind_key).connect() as connection:
            return list((await connection.scalars(query)).all())
    finally:
        await db.dispose()


def shell_with(
    project: Project, statements: list[str]
) -> subprocess.CompletedProcess[str]:
    """Run the shell with ``statements`` on its standard input, then Ctrl+D
    (its end); it must succeed, with nothing on stderr but its banner."""
    return project.run(*SHELL, input="\n".join(statements) + "\n")


class Terminal:
    """A command on a pseudo-terminal: what a user types and what they see."""

    def __init__(self, args: t.Sequence[str], project: Project) -> None:
        self.master, replica = os.openpty()
        env = {**project.env(), "HOME": str(project.path), "TERM": "dumb"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", CONTROLLING_TERMINAL, *args],
            stdin=replica,
            stdout=replica,
            stderr=replica,
            cwd=project.path,
            env=env,
            start_new_session=True,
        )
        os.close(replica)
        self.output = ""
        self._seen = 0

    def type(self, keys: str) -> None:
        """Type ``keys`` (``\\r`` is Enter, ``\\x03`` Ctrl+C)."""
        os.write(self.master, keys.encode())

    def ctrl_d(self, after: str) -> None:
        """Type Ctrl+D at the prompt that follows ``after``: typed ahead, while
        the terminal is not yet in readline's mode, it could be lost."""
        self.expect(after)
        self.expect(">>> ")
        self.type("\x04")

    def expect(self, text: str, timeout: float = 60) -> None:
        """Wait until ``text`` shows after what the last expect saw."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self._seen :]:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(
                    f"{text!r} never showed; the screen:\n{self.output}"
                )
        self._seen = self.output.index(text, self._seen) + len(text)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the command ended
            return False
        self.output += data.decode(errors="replace")
        return bool(data)

    def wait(self) -> int:
        """Wait for the command's end; its exit status."""
        while self._read(60):
            pass
        os.close(self.master)
        return self.process.wait(timeout=60)


@pytest.fixture
def terminal(project: Project) -> Iterator[t.Callable[..., Terminal]]:
    """Start commands on pseudo-terminals; any still running is killed after."""
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        started.append(Terminal(args, project))
        return started[-1]

    yield start
    for made in started:
        if made.process.poll() is None:
            made.process.kill()
            made.wait()


async def test_statements_await_at_top_level_with_db_and_the_models_loaded(
    project: Project,
) -> None:
    """`await` works at top level; db, every model of every bind, asyncio and
    sa are there without an import."""
    statements = [
        "await db.create_all()",
        "print('names', sorted({'db', 'Note', 'User', 'asyncio', 'sa'} & set(dir())))",
        "print('answer', await db.session.scalar(sa.select(sa.literal(6 * 7))))",
    ]
    result = shell_with(project, statements)
    assert "names ['Note', 'User', 'asyncio', 'db', 'sa']" in result.stdout
    assert "answer 42" in result.stdout
    assert "Closed the session and disposed the engines." in result.stdout
    assert set(await project.columns()) == {None, "users"}
    assert "note" in (await project.columns())[None]


async def test_objects_stay_attached_across_statements_and_commit_stores_them(
    project: Project,
) -> None:
    """Each statement runs as a task of its own, yet all use one session: an
    object added in one statement, or loaded in one and changed in the next,
    is committed by a later one."""
    statements = [
        "await db.create_all()",
        "first = db.session()",
        "note = Note(text='added')",
        "db.session.add(note)",
        "user = User(name='someone')",
        "db.session.add(user)",
        "await db.session.flush()",
        "print('attached', db.session() is first, note in db.session, "
        "user in db.session)",
        "await db.session.commit()",
        "loaded = await db.session.get(Note, note.id)",
        "loaded.text = 'changed'",
        "print('dirty', loaded in db.session.dirty, loaded is note)",
        "await db.session.commit()",
    ]
    result = shell_with(project, statements)
    assert "attached True True True" in result.stdout
    assert "dirty True True" in result.stdout
    assert await rows(project, "text", "note") == ["changed"]
    users = await rows(project, "name", "user", "users")
    assert users == ["someone"]


async def test_uncommitted_work_is_rolled_back_at_ctrl_d(project: Project) -> None:
    """Ctrl+D closes the session: what was added and flushed but not
    committed is not stored."""
    statements = [
        "await db.create_all()",
        "db.session.add(Note(text='kept'))",
        "await db.session.commit()",
        "db.session.add(Note(text='dropped'))",
        "await db.session.flush()",
    ]
    shell_with(project, statements)
    assert await rows(project, "text", "note") == ["kept"]


async def test_ctrl_c_cancels_the_running_statement_and_ctrl_d_leaves_no_connection(
    project: Project, terminal: t.Callable[..., Terminal]
) -> None:
    """Typed on a terminal: Ctrl+C cancels the statement that runs (not the
    shell, not its session); Ctrl+D closes the session and disposes the
    engines: no connection is left open while the process still runs."""
    shell_terminal = terminal(*SHELL)
    shell_terminal.expect("Loaded: ")
    shell_terminal.type("await db.create_all()\r")
    shell_terminal.type("note = Note(text='typed'); db.session.add(note)\r")
    shell_terminal.type("await db.session.flush(); first = db.session()\r")
    shell_terminal.type(
        "print('sleep' + 'ing', flush=True); await asyncio.sleep(600)\r"
    )
    shell_terminal.expect("sleeping")
    shell_terminal.type("\x03")
    shell_terminal.expect("KeyboardInterrupt")
    shell_terminal.type(
        "print('still', 'here', db.session() is first, note in db.session)\r"
    )
    shell_terminal.expect("still here True True")
    shell_terminal.type("await db.session.commit()\r")
    if project.servers:
        shell_terminal.type("print('open', 'now', flush=True)\r")
        shell_terminal.expect("open now")
        assert await project.connections() >= 1
    # The process waits at exit, after the shell ended, until Enter is typed.
    shell_terminal.type(
        "import atexit, sys; atexit.register(lambda: print('shell', 'ended', "
        "flush=True) or sys.stdin.readline())\r"
    )
    shell_terminal.type("print('at exit', 'registered')\r")
    shell_terminal.ctrl_d(after="at exit registered")
    shell_terminal.expect("Closed the session and disposed the engines.")
    shell_terminal.expect("shell ended")
    if project.servers:
        assert await project.connections() == 0
    shell_terminal.type("\r")
    assert shell_terminal.wait() == 0, shell_terminal.output
    assert "Traceback" not in shell_terminal.output
    assert await rows(project, "text", "note") == ["typed"]


async def test_ctrl_d_in_process_closes_every_connection_it_opened(
    project: Project,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When the shell returns, every connection it opened is closed (pool
    events) and, on a server, no connection of its binds is left."""
    monkeypatch.syspath_prepend(str(project.path))
    sys.modules.pop("models", None)
    try:
        target = load_target("models:db")
        opened: list[object] = []
        closed: list[object] = []
        for engine in target.engines.values():
            pool = engine.sync_engine.pool
            sa.event.listen(pool, "connect", lambda *_: opened.append(_))
            sa.event.listen(pool, "close", lambda *_: closed.append(_))
        statements = iter(
            [
                "await db.create_all()",
                "db.session.add(Note(text='one')); db.session.add(User(name='u'))",
                "await db.session.flush()",
            ]
        )

        def read(prompt: str) -> str:
            try:
                return next(statements)
            except StopIteration:
                raise EOFError from None

        await asyncio.to_thread(shell.run, target, readfunc=read)
        assert "Closed the session" in capsys.readouterr().out
        assert len(opened) >= 2
        assert len(closed) == len(opened)
        if project.servers:
            assert await project.connections() == 0
    finally:
        sys.modules.pop("models", None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--db", "no_such_module:db"), "no module named 'no_such_module'"),
        (("--db", "models:missing"), "module 'models' has no attribute 'missing'"),
        (("--db", "models:Note"), "is <class 'models.Note'>, not a SQLAlchemy object"),
        (("--db", "models"), "is not MODULE:NAME"),
        ((), "Which database? Pass --db MODULE:NAME"),
    ],
)
async def test_db_option_naming_no_database_exits_with_a_message(
    sqlite_project: Project, args: tuple[str, ...], message: str
) -> None:
    """A --db that names no SQLAlchemy object, app or factory: the reason on
    stderr, a non-zero exit, no traceback, and no prompt."""
    failed = sqlite_project.run(
        sys.executable, "-m", "async_sa", "shell", *args, ok=False, input="1\n"
    )
    assert message in failed.stderr
    assert failed.returncode == 1
    assert ">>>" not in failed.stdout


async def test_errors_show_the_statements_traceback_and_the_shell_goes_on(
    sqlite_project: Project,
) -> None:
    """A failing statement shows its own traceback (not the shell's frames)
    and the next statement runs; exit(3) ends the shell with status 3."""
    result = subprocess.run(
        SHELL,
        cwd=sqlite_project.path,
        env=sqlite_project.env(),
        input="1 / 0\nprint('next', 2 + 2)\nexit(3)\nprint('never')\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert 'File "<console>", line 1, in <module>' in result.stderr
    assert "ZeroDivisionError: division by zero" in result.stderr
    assert "shell.py" not in result.stderr, result.stderr
    assert "next 4" in result.stdout
    assert "never" not in result.stdout
    assert "Closed the session and disposed the engines." in result.stdout


def test_the_shell_needs_neither_alembic_nor_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the migrations' Alembic, the shell runs, reading statements
    from a plain input."""
    from tests.migration_project import sqlite_project_at

    sqlite_project_at(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "alembic", None)
    sys.modules.pop("models", None)
    try:
        result = CliRunner().invoke(
            main,
            ["shell", "--db", "models:db"],
            input="await db.create_all()\nprint('ok', len(db.engines))\n",
        )
    finally:
        sys.modules.pop("models", None)
    assert result.exit_code == 0, result.output
    assert "ok 2" in result.output


def test_shell_has_help() -> None:
    """`shell --help` says what the shell is and how it ends."""
    result = CliRunner().invoke(main, ["shell", "--help"])
    assert result.exit_code == 0, result.output
    assert "--db MODULE:NAME" in result.output
    assert "Ctrl+D" in result.output


async def test_ctrl_c_during_a_query_then_rollback_and_the_session_goes_on(
    project: Project, terminal: t.Callable[..., Terminal]
) -> None:
    """Ctrl+C cancels a statement waiting for the database; the shell says to
    roll back, and after `await db.session.rollback()` the session works. At
    the prompt, Ctrl+C drops the line being typed."""
    if project.backend == "postgresql":
        slow = "sa.text('SELECT pg_sleep(600)')"
    elif project.backend == "mariadb":
        slow = "sa.text('SELECT SLEEP(5)')"
    else:
        slow = (
            "sa.text('WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 "
            "FROM c WHERE x < 4000000) SELECT count(*) FROM c')"
        )
    shell_terminal = terminal(*SHELL)
    shell_terminal.expect("Loaded: ")
    shell_terminal.type(
        f"print('que' + 'rying', flush=True); await db.session.execute({slow})\r"
    )
    shell_terminal.expect("querying")
    if project.servers:
        while await project.connections() == 0:
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    shell_terminal.type("\x03")
    shell_terminal.expect("run `await db.session.rollback()`")
    shell_terminal.type("await db.session.rollback()\r")
    shell_terminal.type("print('answer', await db.session.scalar(sa.select(6 * 7)))\r")
    shell_terminal.expect("answer 42")
    shell_terminal.expect(">>> ")
    shell_terminal.type("unfinished = (1,")
    shell_terminal.expect("unfinished = (1,")
    # Python's readline loop runs signal handlers only when its wait for a key
    # is interrupted: a Ctrl+C that lands while it handles the typed keys
    # waits for the next key. A person never types that fast.
    await asyncio.sleep(0.3)
    shell_terminal.type("\x03")
    shell_terminal.expect("KeyboardInterrupt")
    shell_terminal.type("print('fresh', 'line')\r")
    shell_terminal.ctrl_d(after="fresh line")
    shell_terminal.expect("Closed the session and disposed the engines.")
    assert shell_terminal.wait() == 0, shell_terminal.output
    if project.backend == "mariadb":
        # MariaDB runs a query whose client is gone to its end: SLEEP(5).
        await asyncio.sleep(6)
    if project.servers:
        assert await project.connections() == 0
