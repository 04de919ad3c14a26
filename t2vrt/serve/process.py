"""`t2vrt serve` as a child process on a free loopback port: what the tests, the load benchmark and the screenshot
script start, so they exercise the real server (its own process, signals, state directory) and not a test client.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    def __init__(self, bundles: list[str], state: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.args = [sys.executable, "-m", "t2vrt.cli", "serve", "--port", "0", "--state", str(state)]
        for b in bundles:
            self.args += ["--bundle", b]
        self.args += list(extra)
        self.env = {**os.environ, **(env or {})}
        self.lines: list[str] = []
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.lines = []
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env
        )
        ready = threading.Event()

        def read(proc: subprocess.Popen[str]) -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = _LISTENING.search(line)
                if m:
                    self.url = m.group(1)
                    ready.set()
            ready.set()  # the process ended before listening

        threading.Thread(target=read, args=(self.proc,), daemon=True).start()
        if not ready.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError(f"t2vrt serve did not start within {timeout:.0f} s:\n" + "\n".join(self.lines[-30:]))
        return self

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (the server drains); SIGKILL if it outlives `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """kill -9: what a crash looks like to the state directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()


def wait_for(predicate: Callable[[], T | None], timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll `predicate()` until it returns a truthy value (returned); TimeoutError after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
