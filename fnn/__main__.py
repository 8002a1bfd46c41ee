"""``python -m fnn`` and the ``fnn`` console script: see [`fnn.cli`][fnn.cli]."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fnn`` command line; returns the exit code (the console script exits with it)."""
    from fnn.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
