"""Alembic environment: every bind of the async_sa SQLAlchemy object.

async_sa runs each bind's migrations on its async engine. Keyword arguments to
run_migrations go to every bind's context.configure(), e.g.
run_migrations(context, include_object=..., compare_server_default=False).
"""

from logging.config import fileConfig

from alembic import context

from async_sa.migrations import run_migrations

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

run_migrations(context)
