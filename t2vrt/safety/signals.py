"""SIGTERM (and SIGHUP) handled like Ctrl-C: the main thread gets a KeyboardInterrupt, so every `finally` and
context manager that cleans up after Ctrl-C (temp directories, half-written files, engines) runs for them too.

`install()` is called once by the CLI entry point; the Python API leaves the embedding program's handlers alone.
`deferred()` holds these signals back for a few syscalls that must not be separated (a rename and the state that
records it); a signal arriving meanwhile is delivered right after.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANDLED = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)
_MASK = {signal.SIGINT, *HANDLED}


class Terminated(KeyboardInterrupt):
    """A KeyboardInterrupt raised for a signal other than SIGINT; `signum` says which (exit status 128 + signum)."""

    def __init__(self, signum: int) -> None:
        self.name = signal.Signals(signum).name
        super().__init__(f"terminated by {self.name}")
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def install() -> None:
    """Make SIGTERM/SIGHUP raise Terminated in the main thread (no-op elsewhere, or where the signal is ignored)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in HANDLED:
        if signal.getsignal(s) is signal.SIG_IGN:
            continue  # nohup and friends: the user asked for it to be ignored
        signal.signal(s, _raise)


def exit_status(e: KeyboardInterrupt) -> int:
    return 128 + (e.signum if isinstance(e, Terminated) else signal.SIGINT)


@contextmanager
def deferred() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _MASK)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
