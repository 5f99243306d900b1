"""A blog's tests: fixtures make users and posts, tests change and commit them;
each test starts from an empty database."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
import sqlalchemy as sa

from async_sa import SQLAlchemy
from examples.testing_standalone.blog import db
from examples.testing_standalone.blog import Post
from examples.testing_standalone.blog import publish
from examples.testing_standalone.blog import published_titles
from examples.testing_standalone.blog import User

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def user(isolated_db: SQLAlchemy) -> User:
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
    isolated_db: SQLAlchemy, run: int
) -> None:
    assert await db.session.scalar(sa.select(sa.func.count(User.id))) == 0
    db.session.add(User(name=f"run {run}"))
    await db.session.commit()


async def test_a_fixtures_object_is_changed_and_committed(user: User) -> None:
    user.name = "grace"
    await db.session.commit()
    assert await db.session.scalar(sa.select(User.name)) == "grace"


async def test_app_code_commits_and_the_test_reads_it_back(post: Post) -> None:
    await publish(post.id)
    assert post.published
    assert await published_titles(post.author_id) == ["Hello"]


async def test_a_rollback_keeps_what_was_committed(post: Post) -> None:
    post.title = "never stored"
    await db.session.rollback()
    assert await db.session.scalar(sa.select(Post.title)) == "Hello"


async def test_work_in_other_tasks_shares_the_session(user: User) -> None:
    async def rename() -> None:
        user.name = "renamed in a task"
        await db.session.commit()

    await asyncio.create_task(rename())
    assert await db.session.scalar(sa.select(User.name)) == "renamed in a task"
