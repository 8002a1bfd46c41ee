"""``python -m fnn`` and the ``fnn`` console script: see [`fnn.cli`][fnn.cli]."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fnn`` command line; returns the exit code (the console script exits with it).

    Ctrl-C is handled (``fnn._interrupt``) before JAX is imported; one pressed after the work
    was done still exits with 130. ``fnn playground`` is not a run with safe points: the first
    Ctrl-C or SIGTERM stops its server at once (exit code 0, "fnn playground: stopped"). A
    process of a multi-process run that lost a peer (``fnn.parallel.PEER_LOST``) leaves at
    once with its code: JAX's exit would first wait for the lost peer's heartbeat to time out
    (about 100 s) and then abort with a stack dump.
    """
    from fnn import _interrupt

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["playground"]:  # the playground serves until Ctrl-C: no safe point to wait
        _interrupt.install()
    from fnn.cli import main as cli_main

    code = cli_main(argv)
    if _interrupt.STOP.is_set() and code == 0:
        print("fnn: interrupted (the work was done)", file=sys.stderr)
        return 130
    parallel = sys.modules.get("fnn.parallel")
    if parallel is not None and parallel.PEER_LOST.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
