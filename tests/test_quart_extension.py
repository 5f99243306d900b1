"""The Quart extension through the test client: config, routing, lifecycle, commit."""

from __future__ import annotations

import asyncio
import typing as t
from collections.abc import AsyncIterator
from collections.abc import Callable
from pathlib import Path

import pytest
import quart
import sqlalchemy as sa
from quart import stream_with_context
from werkzeug.exceptions import NotFound as HTTPNotFound

from async_sa import models_committed
from async_sa import NotFound
from async_sa import SQLAlchemy
from async_sa.quart import QUART
from async_sa.state import State
from tests.conftest import Backend
from tests.conftest import checked_out
from tests.conftest import count
from tests.conftest import NewDb
from tests.conftest import note_model

MakeApp = Callable[..., quart.Quart]


@pytest.fixture
def make_app(backend: Backend, tmp_path: Path) -> MakeApp:
    """Quart apps configured for ``backend``; keyword arguments go to app.config."""

    def make(name: str = "notes", **config: t.Any) -> quart.Quart:
        app = quart.Quart(name, instance_path=str(tmp_path / name / "instance"))
        app.config["SQLALCHEMY_DATABASE_URI"] = backend.url
        app.config["SQLALCHEMY_ENGINE_OPTIONS"] = backend.engine_options
        app.config.update(config)
        return app

    return make


@pytest.fixture
def db(new_db: NewDb) -> SQLAlchemy:
    """A SQLAlchemy object with no standalone URL: configured by init_app only."""
    return new_db()


def backend_name(backend: Backend) -> str:
    return sa.make_url(backend.url).get_backend_name()


def app_state(app: quart.Quart) -> State:
    state: State = app.extensions["sqlalchemy"].state_for(app)
    return state


async def finished(db: SQLAlchemy) -> None:
    """Let sessions of finished tasks finish closing in the background."""
    await asyncio.sleep(0)
    await db.session.registry.wait_closed()


@pytest.fixture
async def notes(
    db: SQLAlchemy, make_app: MakeApp
) -> AsyncIterator[tuple[quart.Quart, type[t.Any]]]:
    """An app with a Note table and views that write without committing."""
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    db.init_app(app)
    Note = note_model(db)

    @app.post("/notes/<int:note_id>")
    async def add(note_id: int) -> tuple[str, int]:
        db.session.add(Note(id=note_id, text="added"))
        await db.session.flush()
        status = int(quart.request.args.get("status", 201))
        if status == 500:
            raise RuntimeError("the view failed")
        return "", status

    async with app.app_context():
        await db.create_all()
    yield app, Note


# -- configuration -------------------------------------------------------------


async def test_app_config_beats_constructor_arguments(
    new_db: NewDb, make_app: MakeApp, backend: Backend, tmp_path: Path
) -> None:
    """URL, each bind, each engine option and each switch: app.config wins."""
    db = new_db(
        url=f"sqlite:///{tmp_path / 'ctor.db'}",
        binds={
            "a": f"sqlite:///{tmp_path / 'ctor_a.db'}",
            "b": f"sqlite:///{tmp_path / 'ctor_b.db'}",
        },
        engine_options={"pool_recycle": 100, "pool_pre_ping": True},
        track_modifications=True,
        record_queries=True,
    )
    app = make_app(
        SQLALCHEMY_BINDS={"a": f"sqlite:///{tmp_path / 'config_a.db'}"},
        SQLALCHEMY_ENGINE_OPTIONS={**backend.engine_options, "pool_recycle": 200},
        SQLALCHEMY_ECHO=True,
        SQLALCHEMY_TRACK_MODIFICATIONS=False,
        SQLALCHEMY_RECORD_QUERIES=False,
    )
    db.init_app(app)
    async with app.app_context():
        assert db.engine.url.get_backend_name() == backend_name(backend)
        assert "ctor" not in str(db.engine.url.database)
        assert db.engines["a"].url.database == str(tmp_path / "config_a.db")
        assert db.engines["b"].url.database == str(tmp_path / "ctor_b.db")
        for engine in db.engines.values():
            assert engine.pool._recycle == 200
            assert engine.pool._pre_ping
            assert engine.echo
    state = app_state(app)
    assert not state.track_modifications
    assert not state.record_queries
    async with db.sessionmaker() as session:
        assert session.sync_session._async_sa_state is not state  # type: ignore[attr-defined]


async def test_constructor_arguments_apply_when_config_is_silent(
    new_db: NewDb, tmp_path: Path
) -> None:
    """Without SQLALCHEMY_* keys, init_app uses the constructor's URL and switches."""
    db = new_db(url="sqlite:///ctor.db", track_modifications=True)
    app = quart.Quart("ctor", instance_path=str(tmp_path / "instance"))
    db.init_app(app)
    async with app.app_context():
        assert db.engine.url.database == str(tmp_path / "instance" / "ctor.db")
    assert app_state(app).track_modifications
    assert not app_state(app).commit_on_success


def test_no_url_and_no_binds_names_the_keys_to_set(tmp_path: Path) -> None:
    """init_app without any database says which config keys to set."""
    app = quart.Quart("empty", instance_path=str(tmp_path))
    with pytest.raises(RuntimeError, match="set SQLALCHEMY_DATABASE_URI") as info:
        SQLAlchemy(app)
    assert "SQLALCHEMY_BINDS" in str(info.value)
    assert "sqlalchemy" not in app.extensions


@pytest.mark.parametrize(
    ("config", "where"),
    [
        (
            {"SQLALCHEMY_DATABASE_URI": "postgresql+psycopg2://u:secret@h/d"},
            "SQLALCHEMY_DATABASE_URI",
        ),
        (
            {"SQLALCHEMY_BINDS": {"audit": "postgresql+psycopg2://u:secret@h/d"}},
            r"SQLALCHEMY_BINDS\['audit'\]",
        ),
    ],
)
def test_bad_config_errors_name_the_config_key(
    config: dict[str, t.Any], where: str, tmp_path: Path
) -> None:
    """A sync driver in app.config is reported under its config key, no password."""
    app = quart.Quart("bad", instance_path=str(tmp_path))
    app.config.update(config)
    with pytest.raises(ValueError, match=where) as info:
        SQLAlchemy(app)
    assert "secret" not in str(info.value)


async def test_second_init_app_on_one_app_is_an_error(
    db: SQLAlchemy, new_db: NewDb, make_app: MakeApp
) -> None:
    """init_app twice on one app, with the same or another db, is refused."""
    app = make_app()
    db.init_app(app)
    with pytest.raises(RuntimeError, match="init_app only once per app"):
        db.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        new_db().init_app(app)


async def test_session_outside_app_context_says_why(
    db: SQLAlchemy, make_app: MakeApp
) -> None:
    """Quart-only configuration and no app context: a RuntimeError naming the fix."""
    db.init_app(make_app())
    with pytest.raises(RuntimeError, match="outside an app context"):
        db.session()


async def test_app_context_of_an_unregistered_app_asks_for_init_app(
    db: SQLAlchemy, make_app: MakeApp
) -> None:
    """Inside another app's context, the error asks whether init_app was called."""
    db.init_app(make_app())
    other = make_app("other")
    async with other.app_context():
        with pytest.raises(RuntimeError, match="did you forget to call db.init_app"):
            db.session()


async def test_one_db_serves_several_apps_with_their_own_engines(
    db: SQLAlchemy, make_app: MakeApp, tmp_path: Path
) -> None:
    """Each request uses its own app's engines, concurrently."""
    Note = note_model(db)
    first = make_app("first")
    second = make_app(
        "second",
        SQLALCHEMY_DATABASE_URI="sqlite:///second.db",
        SQLALCHEMY_ENGINE_OPTIONS={},
    )
    for app in (first, second):
        db.init_app(app)

        @app.post("/<text>")
        async def add(text: str) -> str:
            db.session.add(Note(text=text))
            await asyncio.sleep(0.01)
            await db.session.commit()
            engine = t.cast(sa.Engine, db.session.get_bind())
            return str(engine.url.database)

        async with app.app_context():
            await db.create_all()

    responses = await asyncio.gather(
        first.test_client().post("/one"),
        second.test_client().post("/two"),
        second.test_client().post("/three"),
    )
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert (await responses[1].get_data(as_text=True)) == str(
        tmp_path / "second" / "instance" / "second.db"
    )
    async with first.app_context():
        texts = (await db.session.scalars(sa.select(Note.text))).all()
        assert texts == ["one"]
    async with second.app_context():
        texts = (await db.session.scalars(sa.select(Note.text))).all()
        assert sorted(texts) == ["three", "two"]


async def test_sqlite_relative_path_is_under_instance_path(
    db: SQLAlchemy, make_app: MakeApp, tmp_path: Path
) -> None:
    """A relative SQLite path lands in app.instance_path, created if missing."""
    app = make_app(
        "relative",
        SQLALCHEMY_DATABASE_URI="sqlite:///data.db",
        SQLALCHEMY_BINDS={"audit": "sqlite:///audit.db"},
        SQLALCHEMY_ENGINE_OPTIONS={},
    )
    db.init_app(app)
    note_model(db)
    async with app.app_context():
        await db.create_all()
    instance = tmp_path / "relative" / "instance"
    assert (instance / "data.db").is_file()
    async with app.app_context():
        assert db.engines["audit"].url.database == str(instance / "audit.db")


# -- lifecycle -------------------------------------------------------------------


@pytest.mark.parametrize("status", [201, 400, 500])
async def test_teardown_rolls_back_and_never_commits(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]], status: int
) -> None:
    """Without commit-on-success, a request's uncommitted work is rolled back."""
    app, Note = notes
    response = await app.test_client().post(f"/notes/1?status={status}")
    assert response.status_code == status
    await finished(db)
    assert await count(db, Note, app) == 0
    assert checked_out(db, app) == 0
    assert not db.session.registry.registry


async def test_teardown_cancelled_during_the_close_raises_nothing_until_it_is_done(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """A cancellation arriving while teardown closes the session: the close
    finishes, the teardown functions after ours still run, and the task ends
    cancelled (not with a teardown error), at its first await after teardown."""
    app, Note = notes
    steps: list[str] = []

    @app.teardown_appcontext
    async def later_teardown(exc: BaseException | None) -> None:
        steps.append(f"later teardown, checked out: {checked_out(db, app)}")

    async def handler() -> None:
        async with app.app_context():
            db.session.add(Note(text="never committed"))
            await db.session.flush()
            # Delivered at the next await: the first one of teardown's close.
            t.cast(asyncio.Task[None], asyncio.current_task()).cancel()
        steps.append("after teardown")
        await asyncio.sleep(0)
        steps.append("not cancelled")

    task = asyncio.create_task(handler())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["later teardown, checked out: 0", "after teardown"]
    assert await count(db, Note, app) == 0


async def test_teardown_logs_instead_of_raising_when_close_fails(
    db: SQLAlchemy,
    notes: tuple[quart.Quart, type[t.Any]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failing close is logged, the connection invalidated, the response kept."""
    app, Note = notes

    async def broken_close(self: t.Any) -> None:
        raise OSError("connection lost")

    @app.get("/break")
    async def break_close() -> str:
        await db.session.execute(sa.select(Note.id))
        monkeypatch.setattr(type(db.session()), "close", broken_close)
        return "ok"

    response = await app.test_client().get("/break")
    monkeypatch.undo()
    assert response.status_code == 200
    assert "closing the request's session failed" in caplog.text
    assert checked_out(db, app) == 0


async def test_app_context_in_a_cli_command_removes_the_session(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """asyncio.run + async with app.app_context(), as a CLI command does it."""
    app, Note = notes
    async with app.app_context():
        db.session.add(Note(id=1))
        await db.session.flush()
        session = db.session()
    assert not db.session.registry.has()
    assert not session.in_transaction()
    assert await count(db, Note, app) == 0


async def test_websocket_session_is_removed(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """A websocket handler's session is closed when the handler ends."""
    app, Note = notes

    @app.websocket("/ws")
    async def ws() -> None:
        text = await quart.websocket.receive()
        db.session.add(Note(text=text))
        await db.session.commit()
        db.session.add(Note(text="never committed"))
        await db.session.flush()
        await quart.websocket.send(str(await db.session.scalar(sa.select(Note.id))))

    async with app.test_client().websocket("/ws") as socket:
        await socket.send("hello")
        assert await socket.receive() == "1"
    await finished(db)
    assert await count(db, Note, app) == 1
    assert checked_out(db, app) == 0


async def test_background_task_session_is_removed(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """A background task gets its own session, removed at its own teardown."""
    app, Note = notes
    sessions: list[t.Any] = []

    async def write(text: str) -> None:
        sessions.append(db.session())
        db.session.add(Note(text=text))
        await db.session.commit()
        db.session.add(Note(text="never committed"))
        await db.session.flush()

    @app.post("/later")
    async def later() -> str:
        sessions.append(db.session())
        app.add_background_task(write, "later")
        return "accepted"

    assert (await app.test_client().post("/later")).status_code == 200
    await asyncio.gather(*app.background_tasks)
    await finished(db)
    assert sessions[0] is not sessions[1]
    assert not sessions[1].in_transaction()
    assert await count(db, Note, app) == 1
    assert checked_out(db, app) == 0


async def test_stream_with_context_keeps_a_session_for_the_stream(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """A stream_with_context generator queries while streaming; closed at its end."""
    app, Note = notes
    async with app.app_context():
        db.session.add_all([Note(text=f"note {n}") for n in range(3)])
        await db.session.commit()

    @app.get("/notes.txt")
    async def notes_text() -> t.AsyncGenerator[str, None]:
        @stream_with_context
        async def lines() -> t.AsyncGenerator[str, None]:
            result = await db.session.stream_scalars(sa.select(Note).order_by(Note.id))
            async for note in result:
                yield f"{note.text}\n"

        stream: t.AsyncGenerator[str, None] = lines()
        return stream

    response = await app.test_client().get("/notes.txt")
    assert await response.get_data(as_text=True) == "note 0\nnote 1\nnote 2\n"
    await finished(db)
    assert checked_out(db, app) == 0
    assert not db.session.registry.registry


async def test_after_serving_disposes_the_apps_engines(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """Shutting the app down disposes its engines (pooled connections closed)."""
    app, Note = notes
    async with app.test_app() as test_app:
        await test_app.test_client().post("/notes/1?status=201")
        pools = [engine.pool for engine in app_state(app).engines.values()]
    assert all(
        engine.pool is not pool
        for engine, pool in zip(app_state(app).engines.values(), pools, strict=True)
    )


async def test_shell_context_has_db_and_models(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """quart shell gets db and every model by class name."""
    app, Note = notes
    context = app.make_shell_context()
    assert context["db"] is db
    assert context["Note"] is Note


async def test_signal_sender_is_the_app(
    db: SQLAlchemy, make_app: MakeApp, tmp_path: Path
) -> None:
    """models_committed is sent by the app the committing session belongs to."""
    first = make_app("first", SQLALCHEMY_TRACK_MODIFICATIONS=True)
    second = make_app(
        "second",
        SQLALCHEMY_DATABASE_URI="sqlite:///second.db",
        SQLALCHEMY_ENGINE_OPTIONS={},
        SQLALCHEMY_TRACK_MODIFICATIONS=True,
    )
    Note = note_model(db)
    senders: list[t.Any] = []

    def receiver(sender: t.Any, changes: list[tuple[t.Any, str]]) -> None:
        senders.append(sender)

    with models_committed.connected_to(receiver):
        for app in (first, second):
            db.init_app(app)
            async with app.app_context():
                await db.create_all()
                db.session.add(Note(text=app.name))
                await db.session.commit()
    assert senders == [first, second]


async def test_not_found_and_request_args_hooks_use_quart(
    db: SQLAlchemy, notes: tuple[quart.Quart, type[t.Any]]
) -> None:
    """404 helpers abort(404) with the description; query args inside requests."""
    app, Note = notes
    integration = QUART
    async with app.app_context():
        with pytest.raises(HTTPNotFound) as info:
            integration.not_found("no such note")
        assert integration.request_args() is None
    assert info.value.description == "no such note"
    with pytest.raises(NotFound, match="no such note"):
        integration.not_found("no such note")
    async with app.test_request_context("/?page=2"):
        assert dict(integration.request_args() or {}) == {"page": "2"}


# -- commit on success ------------------------------------------------------------


@pytest.fixture
async def committing(
    db: SQLAlchemy, make_app: MakeApp
) -> AsyncIterator[tuple[quart.Quart, type[t.Any]]]:
    """An app with SQLALCHEMY_COMMIT_ON_SUCCESS and a view taking the status."""
    app = make_app(SQLALCHEMY_COMMIT_ON_SUCCESS=True, PROPAGATE_EXCEPTIONS=False)
    db.init_app(app)
    Note = note_model(db)

    @app.post("/notes/<int:note_id>")
    async def add(note_id: int) -> tuple[str, int]:
        db.session.add_all([Note(text="first"), Note(id=note_id, text="second")])
        return "stored", int(quart.request.args.get("status", 201))

    @app.get("/read")
    async def read() -> str:
        return str(await db.session.scalar(sa.select(sa.func.count(Note.id))))

    async with app.app_context():
        await db.create_all()
    yield app, Note


@pytest.mark.parametrize(("status", "stored"), [(200, 2), (302, 2), (400, 0)])
async def test_commit_on_success_commits_below_400_only(
    db: SQLAlchemy,
    committing: tuple[quart.Quart, type[t.Any]],
    status: int,
    stored: int,
) -> None:
    """The request's session is committed when the status is below 400."""
    app, Note = committing
    response = await app.test_client().post(f"/notes/100?status={status}")
    assert response.status_code == status
    assert await count(db, Note, app) == stored
    assert checked_out(db, app) == 0


async def test_failed_commit_is_a_500_and_nothing_is_stored(
    db: SQLAlchemy, committing: tuple[quart.Quart, type[t.Any]]
) -> None:
    """A commit that fails (duplicate key) answers 500 and stores no row of it."""
    app, Note = committing
    client = app.test_client()
    assert (await client.post("/notes/100")).status_code == 201
    response = await client.post("/notes/100")
    assert response.status_code == 500
    assert await count(db, Note, app) == 2
    assert (await client.get("/read")).status_code == 200
    await finished(db)
    assert checked_out(db, app) == 0


async def test_failed_commit_is_a_500_even_if_the_500_handler_says_200(
    db: SQLAlchemy, committing: tuple[quart.Quart, type[t.Any]]
) -> None:
    """A custom 500 handler cannot turn a failed commit into a success."""
    app, Note = committing

    @app.errorhandler(500)
    async def pretend_all_is_well(error: Exception) -> tuple[str, int]:
        return "all is well", 200

    client = app.test_client()
    assert (await client.post("/notes/100")).status_code == 201
    response = await client.post("/notes/100")
    assert response.status_code == 500
    assert await count(db, Note, app) == 2


async def test_failed_commit_propagates_when_testing(
    db: SQLAlchemy, committing: tuple[quart.Quart, type[t.Any]]
) -> None:
    """With PROPAGATE_EXCEPTIONS the commit error is propagated by Quart's error
    handling (``got_request_exception`` sees it) instead of becoming a 500 page.

    What the test client does with it next is Quart's: 0.21+ raise it (0.23
    in an ExceptionGroup) unless ``testing`` or ``debug``; 0.19 and 0.20 raise
    it only when ``testing``, else answer Quart's traceback page.
    """
    app, Note = committing
    app.config["PROPAGATE_EXCEPTIONS"] = True
    propagated: list[BaseException] = []

    async def record(sender: quart.Quart, exception: BaseException) -> None:
        propagated.append(exception)

    quart.got_request_exception.connect(record, app)
    client = app.test_client()
    await client.post("/notes/100")
    try:
        response = await client.post("/notes/100")
    except BaseException as raised:  # an ExceptionGroup on Quart 0.23
        assert unwrapped(raised) is propagated[0]
    else:
        assert response.status_code == 500
    assert [type(error) for error in propagated] == [sa.exc.IntegrityError]
    assert await count(db, Note, app) == 2


def unwrapped(error: BaseException) -> BaseException:
    """The one exception inside nested exception groups (Quart 0.23 gathers
    request errors in them)."""
    inner: tuple[BaseException, ...] = getattr(error, "exceptions", ())
    while len(inner) == 1:
        error = inner[0]
        inner = getattr(error, "exceptions", ())
    return error


async def test_commit_on_a_killed_connection_is_a_500_and_nothing_is_stored(
    new_db: NewDb, postgres: Backend, tmp_path: Path
) -> None:
    """The connection dies between handler and commit: 500, no row, pool intact."""
    db = new_db()
    app = quart.Quart("killed", instance_path=str(tmp_path))
    app.config.update(
        SQLALCHEMY_DATABASE_URI=postgres.url,
        SQLALCHEMY_ENGINE_OPTIONS=postgres.engine_options,
        SQLALCHEMY_COMMIT_ON_SUCCESS=True,
        PROPAGATE_EXCEPTIONS=False,
    )
    db.init_app(app)
    Note = note_model(db)

    @app.post("/notes")
    async def add() -> tuple[str, int]:
        db.session.add(Note(text="lost"))
        await db.session.flush()
        pid = await db.session.scalar(sa.text("SELECT pg_backend_pid()"))
        async with db.sessionmaker() as other:
            await other.execute(sa.text(f"SELECT pg_terminate_backend({int(pid)})"))
        return "stored?", 201

    async with app.app_context():
        await db.create_all()
    client = app.test_client()
    assert (await client.post("/notes")).status_code == 500
    await finished(db)
    assert checked_out(db, app) == 0
    assert await count(db, Note, app) == 0


async def test_init_app_makes_a_metadata_per_configured_bind(
    new_db: NewDb, make_app: MakeApp, backend: Backend
) -> None:
    """Each SQLALCHEMY_BINDS key has its ``db.metadatas`` entry once init_app
    has run, with the default metadata's naming convention."""
    convention = {"pk": "pk_%(table_name)s"}
    db = new_db(metadata=sa.MetaData(naming_convention=convention))
    app = make_app(SQLALCHEMY_BINDS={"audit": backend.bind(), "cache": backend.bind()})
    db.init_app(app)
    assert {"audit", "cache"} <= set(db.metadatas)
    for key in ("audit", "cache"):
        assert db.metadatas[key].info["bind_key"] == key
        assert db.metadatas[key].naming_convention == db.metadata.naming_convention
