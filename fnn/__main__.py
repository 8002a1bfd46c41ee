"""``python -m fnn`` and the ``fnn`` console script: see [`fnn.cli`][fnn.cli]."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fnn`` command line; returns the exit code (the console script exits with it).

    Ctrl-C is handled (``fnn._interrupt``) before JAX is imported; one pressed after the work
    was done still exits with 130.
    """
    from fnn import _interrupt

    _interrupt.install()
    from fnn.cli import main as cli_main

    code = cli_main(argv)
    if _interrupt.STOP.is_set() and code == 0:
        print("fnn: interrupted (the work was done)", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
