"""Export the full ms-1.7b config (seeded random weights, ORIGINAL release layout) and record time and peak RSS.

    .venv/bin/python benchmarks/fullsize_export.py [--work /tmp/t2vrt-fullsize] [--keep]

Writes the checkpoint once (7.2 GB: UNet .pth, open_clip .bin, Lightning VQGAN .pth), then runs `t2vrt export` in a
child process under /usr/bin/time -v (peak RSS of the export alone) and writes benchmarks/results/fullsize-export-*.md.
While it runs, the child's RSS is sampled 5x a second and charged to the progress line it last printed, split into
anonymous memory and file-backed pages (mapped checkpoint or graph data, which the kernel can drop under pressure):
the table says which stage holds the peak. Needs ~25 GB of disk; deletes the bundle afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def write_checkpoint(ckpt: Path) -> None:
    if (ckpt / "configuration.json").is_file():
        return
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from support.writers import write_original

    from t2vrt.config import preset
    from t2vrt.models.checkpoint import build_modules
    from t2vrt.models.random_init import randomize_

    cfg = preset("ms-1.7b")
    models = {n: randomize_(m, seed=i) for i, (n, m) in enumerate(build_modules(cfg).items())}
    with torch.no_grad():
        write_original(ckpt, models, cfg)


def _unbuffered() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONUNBUFFERED": "1"}


class _Stages:
    """Peak RSS (total, anonymous, file-backed) per progress line of a running child."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stage = "start"
        self.peaks: dict[str, tuple[int, int, int]] = {}
        self.stdout = ""

    def sample(self, procs: list) -> None:
        rss = anon = 0
        for q in procs:
            try:
                m = q.memory_info()
            except Exception:  # the process ended between the listing and the read
                continue
            rss, anon = rss + m.rss, anon + m.rss - m.shared
        if rss > self.peaks.get(self.stage, (0, 0, 0))[0]:
            self.peaks[self.stage] = (rss, anon, rss - anon)

    def table(self) -> str:
        rows = ["| stage (last line printed) | peak RSS GB | anonymous GB | file-backed GB |", "|---|---|---|---|"]
        for stage, (rss, anon, file) in self.peaks.items():
            rows.append(f"| {stage} | {rss / 1e9:.2f} | {anon / 1e9:.2f} | {file / 1e9:.2f} |")
        return "\n".join(rows)


def _sample_stages(p: subprocess.Popen) -> _Stages:
    import psutil

    st = _Stages()
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def watch() -> None:
        root = psutil.Process(p.pid)  # /usr/bin/time; the export is its child
        while p.poll() is None:
            try:
                st.sample(root.children(recursive=True))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for line in p.stderr:  # type: ignore[union-attr]
        st.lines.append(line)
        st.stage = line.strip()[:90] or st.stage
    p.wait()
    watcher.join()
    reader.join()
    st.stdout = "".join(out)
    return st


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/t2vrt-fullsize"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    ckpt, out = args.work / "ckpt", args.work / "bundle"
    t0 = time.time()
    write_checkpoint(ckpt)
    print(f"checkpoint ready in {time.time() - t0:.0f} s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "t2vrt.cli", "export", str(ckpt), "--out", str(out)]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_unbuffered())
    stages = _sample_stages(p)
    wall = time.time() - t0
    stdout, stderr = stages.stdout, "".join(stages.lines)  # progress lines (and /usr/bin/time's report) are stderr
    if p.returncode:
        sys.exit(f"export failed:\n{stdout}\n{stderr[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))  # type: ignore[union-attr]
    log = "\n".join(line for line in (stdout + stderr).splitlines() if not line.startswith("\t"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report = HERE / "results" / f"fullsize-export-{stamp}.md"
    report.write_text(
        f"# Full-size export, ms-1.7b config, random weights, original layout ({stamp})\n\n"
        f"Machine: {platform.processor() or platform.machine()}, 2 cores, 24 GiB (other jobs may have been running).\n"
        f"Command: `t2vrt export CKPT --out BUNDLE` (precision both, opset 17), measured with /usr/bin/time -v.\n\n"
        f"**{wall:.0f} s wall, {peak_kb / 2**20:.2f} GiB ({peak_kb * 1024 / 1e9:.2f} GB) peak RSS.**\n\n"
        f"```\n{log.strip()}\n```\n\n"
        f"## Peak RSS by stage (sampled every 0.2 s; stage = the last progress line printed)\n\n"
        f"{stages.table()}\n"
    )
    print(report.read_text())
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
