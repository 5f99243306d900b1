"""The async shell: ``quart db shell`` and ``python -m async_sa shell --db M:NAME``.

An interactive console where statements may ``await`` at top level, with
``db``, every model, ``asyncio`` and ``sa`` (and, for an app, ``app`` and the
names of its shell context processors) in the namespace.

The console reads lines in the main thread, as the plain REPL does, so Ctrl+C
reaches it there: at the prompt it drops the line being typed, and while a
statement runs it cancels that statement's task and the shell goes on. An
event loop runs in a second thread; each statement runs in it as a task of its
own (as in ``python -m asyncio``), in a copy of one context where the app
context is pushed and one session is kept for the whole shell, so an object
added or loaded by one statement is still attached in the next. Ctrl+D (or
``exit()``) cancels the tasks the statements left running, closes the session,
pops the app context and disposes the engines.
"""

from __future__ import annotations

import ast
import asyncio
import code
import concurrent.futures
import contextlib
import contextvars
import inspect
import os
import signal
import sys
import threading
import types
import typing as t
from collections.abc import Callable
from collections.abc import Iterator

import sqlalchemy as sa

from async_sa.target import Target

if t.TYPE_CHECKING:
    from async_sa.extension import SQLAlchemy


def models(db: SQLAlchemy) -> dict[str, type[t.Any]]:
    """Class name → model, for every model mapped on ``db.Model``."""
    return {
        mapper.class_.__name__: mapper.class_ for mapper in db.Model.registry.mappers
    }


def namespace(target: Target) -> dict[str, t.Any]:
    """What the shell starts with: ``asyncio``, ``sa``, the models and ``db``;
    for an app, also its shell context (``app``, ``g``, its processors' names)."""
    names: dict[str, t.Any] = {"asyncio": asyncio, "sa": sa}
    if target.app is not None:
        names.update(target.app.make_shell_context())
    return {**names, **models(target.db), "db": target.db}


class ShellError(Exception):
    """Opening or closing the shell failed; the message names the cause."""


def run(target: Target, *, readfunc: Callable[[str], str] | None = None) -> None:
    """Run the shell on ``target`` until Ctrl+D or ``exit()``.

    :param readfunc: reads a line after showing a prompt (default: ``input``);
        ``EOFError`` ends the shell.
    :raises SystemExit: a statement called ``exit()``, once everything is closed.
    :raises ShellError: opening the shell or closing it failed (the session,
        the app context or the engines), with the cause chained.
    """
    loop = _LoopThread(target)
    loop.start()
    loop.opened.wait()
    if loop.failure is not None:
        loop.join()
        raise _failed("opening", loop.failure)
    console = _Console(loop, readfunc)
    if readfunc is None and sys.stdin.isatty():
        _set_up_readline(loop.names)
    with _ctrl_c_handled_by(loop):
        try:
            startup = os.environ.get("PYTHONSTARTUP")
            if startup and os.path.isfile(startup):
                console.run_file(startup)
            console.interact(banner=_banner(target, loop.names), exitmsg="")
        finally:
            loop.close()
            if loop.failure is not None:
                raise _failed("closing", loop.failure)
            print("Closed the session and disposed the engines.")


@contextlib.contextmanager
def _ctrl_c_handled_by(loop: _LoopThread) -> Iterator[None]:
    """Send SIGINT (Ctrl+C) to ``loop.interrupt``, in the main thread (signal
    handlers can only be set there; elsewhere Ctrl+C is not ours to handle)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, loop.interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _failed(step: str, failure: BaseException) -> ShellError:
    error = ShellError(f"{step} the shell failed: {type(failure).__name__}: {failure}")
    error.__cause__ = failure
    return error


def _banner(target: Target, names: dict[str, t.Any]) -> str:
    shown = ", ".join(sorted(name for name in names if not name.startswith("_")))
    where = f" (app {target.app.name!r})" if target.app is not None else ""
    return (
        f"async_sa shell{where}, Python {sys.version.split()[0]}: `await` works "
        "at top level.\nOne session for the whole shell (db.session); Ctrl+C "
        "cancels the running statement; Ctrl+D closes the session and disposes "
        f"the engines.\nLoaded: {shown}"
    )


def _set_up_readline(names: dict[str, t.Any]) -> None:
    """Line editing, history and completion of the shell's names, as the plain
    REPL has them (through the site module's interactive hook)."""
    hook = getattr(sys, "__interactivehook__", None)
    if hook is not None:
        hook()
    try:
        import readline
        import rlcompleter
    except ImportError:
        return
    readline.set_completer(rlcompleter.Completer(names).complete)


class _LoopThread(threading.Thread):
    """The event loop the statements run in, and the shell's context in it.

    It opens the app context and the session scope, then waits for
    :meth:`close`; ``failure`` is what went wrong opening or closing.
    """

    def __init__(self, target: Target) -> None:
        super().__init__(name="async_sa shell loop", daemon=True)
        self.target = target
        self.opened = threading.Event()
        self.failure: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.context = contextvars.Context()
        self.names: dict[str, t.Any] = {}
        self._main: asyncio.Task[None] | None = None
        self._ended: asyncio.Future[None] | None = None
        self._statement: asyncio.Task[None] | None = None
        self._mode: t.Literal["prompt", "statement", "closing"] = "prompt"
        self._interrupted = False

    def run(self) -> None:
        # SIGINT goes to a thread that does not block it. Taken by this one
        # (or a driver's, started from here), it would not interrupt the main
        # thread's wait for input or for a statement.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by run(), in the main thread
            self.failure = error
        finally:
            self.opened.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._ended = self.loop.create_future()
        try:
            async with (
                self.target.app_context(),
                self.target.db.session.shared(),
            ):
                self.context = contextvars.copy_context()
                self.names = namespace(self.target)
                self.opened.set()
                await self._ended
                await _cancel_other_tasks()
        finally:
            await self.target.dispose()

    def interrupt(self, signum: int, frame: types.FrameType | None) -> None:
        """The SIGINT handler: at the prompt, ``KeyboardInterrupt`` (the line
        is dropped); while a statement runs, cancel it; while closing, stop.

        Only at the prompt does it raise: raised anywhere in the main thread
        while a statement runs, it could land between two steps of handing the
        statement over and leave it running unseen.
        """
        if self._mode == "prompt":
            raise KeyboardInterrupt
        assert self.loop is not None
        cancel: Callable[[], object]
        if self._mode == "statement":
            self._interrupted = True
            cancel = self._cancel_statement
        else:
            assert self._main is not None
            cancel = self._main.cancel
        with contextlib.suppress(RuntimeError):  # the loop has just ended
            self.loop.call_soon_threadsafe(cancel)

    def close(self) -> None:
        """End the shell and wait until everything is closed (Ctrl+C meanwhile
        cancels the closing)."""
        self._mode = "closing"
        if self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just ended
                self.loop.call_soon_threadsafe(self._end)
        self.join()

    def _end(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    def run_statement(self, code: types.CodeType) -> bool:
        """Run ``code`` as a task in the shell's context and wait for it; Ctrl+C
        meanwhile cancels the task.

        :returns: whether Ctrl+C cancelled it.
        :raises BaseException: what the statement raised.
        """
        assert self.loop is not None
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._interrupted = False
        self._mode = "statement"
        try:
            self.loop.call_soon_threadsafe(self._start, code, done)
            try:
                done.result()
            except asyncio.CancelledError:
                if self._interrupted:
                    return True
                raise
            return False
        finally:
            self._mode = "prompt"

    def _start(
        self, code: types.CodeType, done: concurrent.futures.Future[None]
    ) -> None:
        assert self.loop is not None
        statement = _statement(code, self.names, done)
        self._statement = self.context.run(self.loop.create_task, statement)
        if self._interrupted:  # Ctrl+C came before the task was there
            self._statement.cancel()

    def _cancel_statement(self) -> None:
        if self._statement is not None:
            self._statement.cancel()


async def _statement(
    code: types.CodeType,
    names: dict[str, t.Any],
    done: concurrent.futures.Future[None],
) -> None:
    """Run one statement and hand its outcome to the console in ``done``.

    What the statement raised goes to ``done`` only (the task ends quietly,
    not even ``SystemExit`` reaches the loop), except a cancellation, which
    also cancels the task.
    """
    try:
        result = types.FunctionType(code, names)()
        if code.co_flags & inspect.CO_COROUTINE:
            await result
    except asyncio.CancelledError as cancelled:
        done.set_exception(cancelled)
        raise
    except BaseException as error:
        done.set_exception(error)
    else:
        done.set_result(None)


async def _cancel_other_tasks() -> None:
    """Cancel what the statements left running, and wait for it to end."""
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


_INTERRUPTED = """
KeyboardInterrupt: the statement was cancelled. If it was cut off in a database
operation, run `await db.session.rollback()` before using the session again.
"""


class _Console(code.InteractiveConsole):
    """``code.InteractiveConsole`` with top-level ``await``, running each
    statement in the shell's loop."""

    def __init__(
        self, loop: _LoopThread, readfunc: Callable[[str], str] | None
    ) -> None:
        super().__init__(loop.names)
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self._loop = loop
        self._readfunc = readfunc

    def raw_input(self, prompt: str = "") -> str:
        if self._readfunc is not None:
            return self._readfunc(prompt)
        return super().raw_input(prompt)

    def runcode(self, code: types.CodeType) -> None:
        try:
            if self._loop.run_statement(code):
                self.write(_INTERRUPTED)
        except SystemExit:
            raise
        except BaseException as error:
            self._show(error, code)

    def run_file(self, path: str) -> None:
        """Run a startup file (``PYTHONSTARTUP``) as one statement."""
        with open(path, encoding="utf-8") as file:
            source = file.read()
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.runcode(compile(source, path, "exec", flags=flags))

    def _show(self, error: BaseException, code: types.CodeType) -> None:
        """Show ``error``'s traceback from the statement's own frame on, as the
        plain REPL does (not through the shell's machinery)."""
        frame = error.__traceback__
        while frame is not None and frame.tb_frame.f_code is not code:
            frame = frame.tb_next
        try:
            raise error.with_traceback(frame or error.__traceback__)
        except BaseException:
            self.showtraceback()
