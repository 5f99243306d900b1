"""The end-to-end JSON API, five ways, served by hypercorn on 127.0.0.1.

- ``GET /items/<id>``: one row, or 404;
- ``POST /items`` ``{"text": ...}``: one new row, committed, 201;
- ``GET /items?page=N``: 20 rows of page N, with the total count.

``--app async_sa`` uses the async_sa Quart extension (``db.session``,
``db.get_or_404``, ``db.paginate``); ``--app by_hand`` opens an
``async_sessionmaker`` session in ``before_request`` and closes it in
``teardown_appcontext``; ``--app quart_sqlalchemy`` does the same with
quart-sqlalchemy 3.0.4's session factory, and runs in that package's own
virtual environment (it pins older Quart and SQLAlchemy). ``--app
starlette_async_sa`` is Starlette with :class:`async_sa.asgi.SessionMiddleware`;
``--app starlette_by_hand`` is Starlette with an ``async_sessionmaker`` session
per endpoint.

This file imports nothing from ``benchmarks`` or (but for ``--app async_sa``)
``async_sa``, so any of those environments can run it by path::

    python benchmarks/e2e_server.py --app by_hand --url URL --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import signal
import typing as t

import quart
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

TABLE = "bench_e2e_item"
PER_PAGE = 20
APPS = (
    "async_sa",
    "async_sa_replica",
    "by_hand",
    "quart_sqlalchemy",
    "starlette_async_sa",
    "starlette_by_hand",
)


class PlainBase(sa_orm.DeclarativeBase):
    pass


class PlainItem(PlainBase):
    """The table as the hand-written apps map it."""

    __tablename__ = TABLE
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(sa.String(200))


def _text(body: t.Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        quart.abort(400)
    return t.cast(str, body["text"])


def _page() -> int:
    return quart.request.args.get("page", 1, type=int) or 1


def async_sa_app(
    url: str, engine_options: dict[str, t.Any], replicas: list[str] | None = None
) -> quart.Quart:
    """(a) The async_sa Quart extension: the request's session is ``db.session``.
    ``--app async_sa_replica`` is the same with ``SQLALCHEMY_REPLICAS`` set to
    ``--replicas``."""
    from async_sa import SQLAlchemy

    app = quart.Quart(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url, SQLALCHEMY_ENGINE_OPTIONS=engine_options
    )
    if replicas:
        app.config["SQLALCHEMY_REPLICAS"] = replicas
    db = SQLAlchemy(app)

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(200))

    @app.get("/items/<int:item_id>")
    async def get_item(item_id: int) -> dict[str, t.Any]:
        item = await db.get_or_404(Item, item_id)
        return {"id": item.id, "text": item.text}

    @app.post("/items")
    async def add_item() -> tuple[dict[str, t.Any], int]:
        item = Item(text=_text(await quart.request.get_json()))
        db.session.add(item)
        await db.session.commit()
        return {"id": item.id, "text": item.text}, 201

    @app.get("/items")
    async def list_items() -> dict[str, t.Any]:
        page = await db.paginate(sa.select(Item).order_by(Item.id), per_page=PER_PAGE)
        return {
            "items": [{"id": item.id, "text": item.text} for item in page.items],
            "page": page.page,
            "total": page.total,
        }

    return app


def by_hand_app(url: str, engine_options: dict[str, t.Any]) -> quart.Quart:
    """(b) By hand: ``async_sessionmaker``, a session opened in ``before_request``
    and closed in ``teardown_appcontext``."""

    app = quart.Quart(__name__)
    engine = sa_async.create_async_engine(url, **engine_options)
    make_session = sa_async.async_sessionmaker(engine, expire_on_commit=False)
    add_routes(app, PlainItem, make_session)

    @app.after_serving
    async def dispose() -> None:
        await engine.dispose()

    return app


def quart_sqlalchemy_app(url: str, engine_options: dict[str, t.Any]) -> quart.Quart:
    """(c) quart-sqlalchemy 3.0.4: its async bind's session factory, a session
    per request as in (b). That package has no request-scoped session."""
    config_module = importlib.import_module("quart_sqlalchemy")
    framework = importlib.import_module("quart_sqlalchemy.framework")
    app = quart.Quart(__name__)
    config = config_module.SQLAlchemyConfig(
        binds={
            "default": {
                "engine": {"url": url, **engine_options},
                "session": {"expire_on_commit": False},
            }
        }
    )
    db = framework.QuartSQLAlchemy(config, app)

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(200))

    bind = db.get_bind("default")
    add_routes(app, Item, bind.Session)

    @app.after_serving
    async def dispose() -> None:
        await bind.engine.dispose()

    return app


def starlette_async_sa_app(url: str, engine_options: dict[str, t.Any]) -> t.Any:
    """(d) Starlette with async_sa's ASGI middleware: the request's session is
    ``db.session``, 404s and pages come from ``db.get_or_404``/``db.paginate``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from async_sa import SQLAlchemy
    from async_sa.asgi import SessionMiddleware

    db = SQLAlchemy(url=url, engine_options=engine_options)

    class Item(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = TABLE
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(sa.String(200))

    async def get_item(request: Request) -> JSONResponse:
        item = await db.get_or_404(Item, request.path_params["item_id"])
        return JSONResponse({"id": item.id, "text": item.text})

    async def add_item(request: Request) -> JSONResponse:
        item = Item(text=_starlette_text(await request.json()))
        db.session.add(item)
        await db.session.commit()
        return JSONResponse({"id": item.id, "text": item.text}, 201)

    async def list_items(request: Request) -> JSONResponse:
        page = await db.paginate(sa.select(Item).order_by(Item.id), per_page=PER_PAGE)
        return JSONResponse(
            {
                "items": [{"id": item.id, "text": item.text} for item in page.items],
                "page": page.page,
                "total": page.total,
            }
        )

    app = Starlette(
        routes=[
            Route("/items/{item_id:int}", get_item),
            Route("/items", add_item, methods=["POST"]),
            Route("/items", list_items),
        ]
    )
    app.add_middleware(SessionMiddleware, db=db)
    return app


def starlette_by_hand_app(url: str, engine_options: dict[str, t.Any]) -> t.Any:
    """(e) Starlette by hand: ``async_sessionmaker``, a session per endpoint in
    ``async with``, engines disposed at lifespan shutdown."""
    import contextlib
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    engine = sa_async.create_async_engine(url, **engine_options)
    make_session = sa_async.async_sessionmaker(engine, expire_on_commit=False)

    async def get_item(request: Request) -> JSONResponse:
        async with make_session() as session:
            item = await session.get(PlainItem, request.path_params["item_id"])
            if item is None:
                raise HTTPException(404)
            return JSONResponse({"id": item.id, "text": item.text})

    async def add_item(request: Request) -> JSONResponse:
        item = PlainItem(text=_starlette_text(await request.json()))
        async with make_session() as session:
            session.add(item)
            await session.commit()
            return JSONResponse({"id": item.id, "text": item.text}, 201)

    async def list_items(request: Request) -> JSONResponse:
        try:
            page = max(int(request.query_params.get("page", 1)), 1)
        except ValueError:
            raise HTTPException(404) from None
        async with make_session() as session:
            count = sa.select(sa.func.count()).select_from(PlainItem)
            total = await session.scalar(count)
            items = await session.scalars(
                sa.select(PlainItem)
                .order_by(PlainItem.id)
                .limit(PER_PAGE)
                .offset((page - 1) * PER_PAGE)
            )
            return JSONResponse(
                {
                    "items": [{"id": item.id, "text": item.text} for item in items],
                    "page": page,
                    "total": total,
                }
            )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    return Starlette(
        routes=[
            Route("/items/{item_id:int}", get_item),
            Route("/items", add_item, methods=["POST"]),
            Route("/items", list_items),
        ],
        lifespan=lifespan,
    )


def _starlette_text(body: t.Any) -> str:
    from starlette.exceptions import HTTPException

    if not isinstance(body, dict) or not isinstance(body.get("text"), str):
        raise HTTPException(400)
    return t.cast(str, body["text"])


def add_routes(
    app: quart.Quart, item_class: t.Any, make_session: t.Callable[[], t.Any]
) -> None:
    """The API on a session kept in ``g`` from ``before_request`` to
    ``teardown_appcontext``, as (b) and (c) write it."""

    @app.before_request
    async def open_session() -> None:
        quart.g.session = make_session()

    @app.teardown_appcontext
    async def close_session(exc: BaseException | None) -> None:
        session = quart.g.pop("session", None)
        if session is not None:
            await session.close()

    @app.get("/items/<int:item_id>")
    async def get_item(item_id: int) -> dict[str, t.Any]:
        item = await quart.g.session.get(item_class, item_id)
        if item is None:
            quart.abort(404)
        return {"id": item.id, "text": item.text}

    @app.post("/items")
    async def add_item() -> tuple[dict[str, t.Any], int]:
        item = item_class(text=_text(await quart.request.get_json()))
        quart.g.session.add(item)
        await quart.g.session.commit()
        return {"id": item.id, "text": item.text}, 201

    @app.get("/items")
    async def list_items() -> dict[str, t.Any]:
        page = _page()
        session = quart.g.session
        total = await session.scalar(sa.select(sa.func.count()).select_from(item_class))
        items = await session.scalars(
            sa.select(item_class)
            .order_by(item_class.id)
            .limit(PER_PAGE)
            .offset((page - 1) * PER_PAGE)
        )
        return {
            "items": [{"id": item.id, "text": item.text} for item in items],
            "page": page,
            "total": total,
        }


async def serve(app: t.Any, port: int) -> None:
    import hypercorn.asyncio
    import hypercorn.config

    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.backlog = 1024
    config.loglevel = "WARNING"
    # The load generator keeps its connections open for the whole sweep.
    config.keep_alive_timeout = 600
    config.keep_alive_max_requests = 1_000_000
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await hypercorn.asyncio.serve(app, config, shutdown_trigger=stop.wait)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=APPS, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument(
        "--engine-options", default="{}", help="create_async_engine options, JSON"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--replicas", default="[]", help="async_sa_replica: replica URLs, JSON"
    )
    args = parser.parse_args()
    if args.app == "async_sa_replica":
        replicas = json.loads(args.replicas)
        app = async_sa_app(args.url, json.loads(args.engine_options), replicas)
        asyncio.run(serve(app, args.port))
        return
    make_app = {
        "async_sa": async_sa_app,
        "by_hand": by_hand_app,
        "quart_sqlalchemy": quart_sqlalchemy_app,
        "starlette_async_sa": starlette_async_sa_app,
        "starlette_by_hand": starlette_by_hand_app,
    }[args.app]
    app = make_app(args.url, json.loads(args.engine_options))
    asyncio.run(serve(app, args.port))


if __name__ == "__main__":
    main()
