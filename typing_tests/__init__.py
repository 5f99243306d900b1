"""Files that pin the public types: checked by mypy (``nox -s typing``), never run."""
