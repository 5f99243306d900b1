"""A blog app's tests: fixtures make users and posts, tests change them, commit,
call the test client and read back; each test starts from an empty database."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
import quart
import quart.typing
import sqlalchemy as sa

from examples.testing_quart.blog import db
from examples.testing_quart.blog import Post
from examples.testing_quart.blog import User

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def user(isolated_app: quart.Quart) -> User:
    user = User(name="ada")
    db.session.add(user)
    await db.session.commit()
    return user


@pytest_asyncio.fixture
async def post(user: User) -> Post:
    post = Post(title="Hello", author_id=user.id)
    db.session.add(post)
    await db.session.commit()
    return post


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_starts_from_an_empty_database(
    client: quart.typing.TestClientProtocol, run: int
) -> None:
    assert await db.session.scalar(sa.select(sa.func.count(User.id))) == 0
    response = await client.post("/users", json={"name": f"run {run}"})
    assert response.status_code == 201


async def test_a_fixtures_object_is_changed_and_committed(user: User) -> None:
    user.name = "grace"
    await db.session.commit()
    assert await db.session.scalar(sa.select(User.name)) == "grace"


async def test_a_request_sees_the_fixtures_data(
    client: quart.typing.TestClientProtocol, post: Post
) -> None:
    post.published = True
    await db.session.commit()
    response = await client.get(f"/users/{post.author_id}/posts")
    assert await response.get_json() == ["Hello"]


async def test_what_a_request_commits_the_test_sees(
    client: quart.typing.TestClientProtocol, post: Post
) -> None:
    response = await client.post(f"/posts/{post.id}/publish")
    assert response.status_code == 200
    assert post.published


async def test_a_user_made_by_a_request_is_read_back(
    client: quart.typing.TestClientProtocol,
) -> None:
    response = await client.post("/users", json={"name": "linus"})
    user = await db.session.get_one(User, (await response.get_json())["id"])
    assert user.name == "linus"


async def test_a_background_task_awaited_by_the_test(
    client: quart.typing.TestClientProtocol, isolated_app: quart.Quart, post: Post
) -> None:
    await client.post(f"/posts/{post.id}/views")
    await asyncio.gather(*isolated_app.background_tasks)
    assert post.views == 1
