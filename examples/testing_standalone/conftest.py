"""Tests of a standalone ``db``: every test is rolled back, tables made once."""

from __future__ import annotations

import pytest

from async_sa import SQLAlchemy
from examples.testing_standalone.blog import db

pytest_plugins = ["async_sa.testing"]


@pytest.fixture(scope="session")
def async_sa_db() -> SQLAlchemy:
    """The ``db`` the fixtures isolate."""
    return db
