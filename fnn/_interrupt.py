"""Ctrl-C for the command line: the first stops at the next safe point, a second at once.

A KeyboardInterrupt raised wherever the signal lands, inside JAX's compiler or one of XLA's
garbage-collection callbacks say, can be swallowed there ("Exception ignored in
_xla_gc_callback") or leave XLA's objects half made, so that the interpreter crashes as it
exits (SIGSEGV, seen in about 1 of 20 Ctrl-C's during ``fnn train --dataset digits``). So the
command line sets a flag instead, and raises KeyboardInterrupt itself between epochs, where the
checkpoint can be saved. No JAX here: ``fnn/__main__.py`` installs this before JAX is imported.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

STOP = threading.Event()
"""Set by the first Ctrl-C."""


def _handler(signum, frame) -> None:
    if STOP.is_set():
        print("\nfnn: stopped at once (exit code 130); the checkpoint holds the last epoch saved",
              file=sys.stderr, flush=True)
        os._exit(130)
    STOP.set()
    print("\nfnn: stopping at the next safe point (Ctrl-C again to stop at once)",
          file=sys.stderr, flush=True)


def install():
    """Handle SIGINT (and SIGTERM, which schedulers send before they kill) with the flag;
    returns what ``uninstall`` needs to put the previous handlers back (None if ours already)."""
    if signal.getsignal(signal.SIGINT) is _handler:
        return None
    signals = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    return {sig: signal.signal(sig, _handler) for sig in signals}


def uninstall(previous) -> None:
    """Put back the handlers ``install`` replaced, and forget a Ctrl-C."""
    if previous is not None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        STOP.clear()


def check() -> None:
    """A safe point: raise KeyboardInterrupt if Ctrl-C was pressed."""
    if STOP.is_set():
        raise KeyboardInterrupt
