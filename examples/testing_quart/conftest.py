"""Tests of a Quart app made by a factory: every test is rolled back, tables
made once, and the test client's requests share the test's session."""

from __future__ import annotations

import os

import pytest
import quart
from quart.typing import TestClientProtocol

from async_sa import SQLAlchemy
from examples.testing_quart.blog import create_app
from examples.testing_quart.blog import db

pytest_plugins = ["async_sa.testing"]


@pytest.fixture(scope="session")
def async_sa_app() -> quart.Quart:
    """One app for the whole session, on the test database."""
    return create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": os.environ.get("TEST_DATABASE_URL", "sqlite://"),
        }
    )


@pytest.fixture(scope="session")
def async_sa_db() -> SQLAlchemy:
    """The ``db`` the fixtures isolate."""
    return db


@pytest.fixture
def client(isolated_app: quart.Quart) -> TestClientProtocol:
    """A test client whose requests run inside the test's isolation."""
    return isolated_app.test_client()
