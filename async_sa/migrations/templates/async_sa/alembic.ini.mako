# Alembic configuration for async_sa: the engines come from your SQLAlchemy
# object, so there is no sqlalchemy.url here.

[alembic]
script_location = ${script_location}
path_separator = os

# Logging: INFO for alembic shows each step on stderr.
[loggers]
keys = root,sqlalchemy,alembic,alembic_plugins

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[logger_alembic_plugins]
level = WARNING
handlers =
qualname = alembic.runtime.plugins

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
