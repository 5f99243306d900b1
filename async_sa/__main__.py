"""``python -m async_sa db --db MODULE:NAME COMMAND``: the db commands without Quart."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the command line; without click, say which extra to install."""
    try:
        from async_sa.cli import main as cli_main
    except ImportError as error:
        if error.name != "click":
            raise
        sys.exit("python -m async_sa needs click: pip install 'async_sa[migrations]'")
    cli_main(prog_name="python -m async_sa")


if __name__ == "__main__":
    main()
