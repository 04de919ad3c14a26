"""A real SIGTERM mid-export and mid-generate: cleaned up like Ctrl-C, exit non-zero, the final name intact or absent,
no hidden temp directories left."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-m", "t2vrt.cli"]


class _Run:
    """A t2vrt subprocess whose stderr is read as it comes (tqdm writes \\r, not newlines)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(CLI + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err = b""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := self.proc.stderr.read1(4096):
            self.err += chunk

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern.encode(), self.err):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"never saw {pattern!r}; stderr: {self.err.decode(errors='replace')[-2000:]}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 120) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, self.err.decode(errors="replace")


def _check_interrupted(code: int, err: str) -> None:
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    lines = [part for line in err.splitlines() for part in line.split("\r")]
    assert [x for x in lines if "error" in x.lower()] == ["error: interrupted (SIGTERM)"], err[-2000:]


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_sigterm_mid_export_leaves_nothing(tmp_path: Path) -> None:
    run = _Run(["export", "tiny", "--out", str(tmp_path / "bundle"), "--precision", "fp32"], tmp_path)
    run.wait_for(r"tracing to ONNX", timeout=300)
    code, err = run.terminate()
    _check_interrupted(code, err)
    assert not (tmp_path / "bundle").exists() and _hidden(tmp_path) == []


def test_sigterm_mid_generate_keeps_the_previous_output(tiny_bundle: Path, tmp_path: Path) -> None:
    from t2vrt.runtime.video import read_video, save_video

    frames = np.full((2, 64, 64, 3), 7, np.uint8)
    out = save_video(frames, tmp_path / "frames")  # an earlier run's output, to be replaced with --overwrite
    run = _Run(
        [
            "generate",
            "a cat",
            "--bundle",
            str(tiny_bundle),
            "-o",
            str(out),
            "--overwrite",
            "--steps",
            "900",
            "--frames",
            "16",
        ],
        tmp_path,
    )
    run.wait_for(r"\d+/900", timeout=300)  # the progress bar is moving
    code, err = run.terminate()
    _check_interrupted(code, err)
    np.testing.assert_array_equal(read_video(out), frames)
    assert _hidden(tmp_path) == []
