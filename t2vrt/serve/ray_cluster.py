"""A private Ray cluster on this machine for the tests and the benchmark: `ray start --head --block` as a child
process, with logical GPUs declared (a CPU machine can say `--num-gpus 2`: Ray's resources are bookkeeping) and a
small object store, stopped at the end with every process it started. No Ray import here: the `ray` executable of
this interpreter does the work.

Ray turns 127.0.0.1 into the machine's own address (its services must be reachable from other nodes); the cluster
still lives on this machine only, on free ports, with its own short temp dir (Unix socket paths are length-limited).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

_READY = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalCluster:
    def __init__(self, gpus: int = 2, cpus: int = 2, object_store_mb: int = 100) -> None:
        self.gpus, self.cpus, self.object_store_mb = gpus, cpus, object_store_mb
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp: Path | None = None
        self.address = ""

    @property
    def log_path(self) -> Path:
        assert self.tmp is not None
        return self.tmp / "head.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.tmp and self.log_path.is_file() else ""

    def start(self, timeout: float = 120.0) -> LocalCluster:
        self.tmp = Path(tempfile.mkdtemp(prefix="t2r-"))
        port = free_port()
        ray = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            str(self.cpus),
            "--num-gpus",
            str(self.gpus),
            "--object-store-memory",
            str(self.object_store_mb << 20),
            "--include-dashboard",
            "false",
            "--dashboard-port",
            str(free_port()),
            "--dashboard-agent-listen-port",
            str(free_port()),
            "--ray-client-server-port",
            str(free_port()),
            "--temp-dir",
            str(self.tmp / "r"),
            "--disable-usage-stats",
        ]
        # SIGTERM stops at once (no 30 s node drain); no usage reports
        env = {**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while _READY not in self.log():
            if self.proc.poll() is not None or time.monotonic() > end:
                tail = self.log()[-3000:]
                self.stop()
                raise RuntimeError(f"ray start --head did not come up within {timeout:.0f} s:\n{tail}")
            time.sleep(0.2)
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM the head (it stops what it started); then SIGKILL, by pid, whatever of its tree is left."""
        if self.proc is not None:
            try:
                tree = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                tree = []
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(30)
            _, alive = psutil.wait_procs(tree, timeout=10)
            for p in alive:
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=10)
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
