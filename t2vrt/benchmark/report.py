"""A benchmark's record: the machine and versions, a terminal table, the JSON (every figure) and a PNG plot.

Torch-free; matplotlib only for the plot (the `bench` extra), imported when a plot is written.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from t2vrt.errors import UsageError

RESULTS_DIR = Path("benchmarks") / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info() -> list[dict[str, Any]]:
    """Name, memory and driver of each NVIDIA GPU (NVML); empty without one."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                    "driver": driver.decode() if isinstance(driver, bytes) else driver,
                }
            )
        return out
    except Exception:  # no nvidia-ml-py, no driver: no GPU to describe
        return []


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "ram_bytes": int(psutil.virtual_memory().total),
        "load_average": list(os.getloadavg()),
        "gpus": gpu_info(),
    }


def versions() -> dict[str, str]:
    """Versions of what was measured (each package only if installed)."""
    import importlib.metadata as md

    import t2vrt

    out = {"t2vrt": t2vrt.__version__, "python": platform.python_version()}
    for dist in ("numpy", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch", "onnx"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def stamp() -> str:
    """UTC time for file names and records: 2026-11-24T19:50:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def check_out_dir(out_dir: Path) -> Path:
    """`bench --out`: a directory (existing or creatable) where records are added; checked before minutes of work.
    Records never replace a file (see free_name); a file in the way of the directory is refused."""
    from t2vrt.safety.atomic import check_target

    target = check_target(out_dir, "--out")
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--out {out_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out_dir}: {probe} is not writable")
    return target


SIBLINGS = (".png", ".md")  # written beside a record's .json under the same stem


def free_name(path: Path) -> Path:
    """`path`, or path-2, path-3, ... when a file of that name (or of its .png/.md siblings) is already there: a
    record never replaces a file."""
    n, candidate = 1, path
    while any(os.path.lexists(candidate.with_suffix(s)) for s in (candidate.suffix, *SIBLINGS)):
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def write_json(path: Path, record: Mapping[str, Any]) -> Path:
    from t2vrt.safety.atomic import staged_file
    from t2vrt.safety.diskfull import reraise_disk_full

    with reraise_disk_full(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path, ".json", "--out") as tmp:  # temp name then rename; a full disk is "disk full at PATH"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f} s" if v >= 1 else f"{v * 1e3:.1f} ms"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A plain aligned text table (first column left, the rest right)."""
    cols = [header, *rows]
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def stage_table(stages: Mapping[str, Mapping[str, float | None]], ratio_of: tuple[str, str] | None = None) -> str:
    """stages: figure -> contender -> seconds. With ratio_of=(ours, theirs), a last column theirs / ours."""
    contenders: list[str] = []
    for per in stages.values():
        contenders += [c for c in per if c not in contenders]
    header = ["figure", *contenders] + ([f"{ratio_of[1]}/{ratio_of[0]}"] if ratio_of else [])
    rows = []
    for fig, per in stages.items():
        row = [fig, *(_fmt_s(per.get(c)) for c in contenders)]
        if ratio_of:
            a, b = per.get(ratio_of[0]), per.get(ratio_of[1])
            row.append(f"{b / a:.2f}x" if a and b else "-")
        rows.append(row)
    return table(rows, header)


def plot_stages(path: Path, stages: Mapping[str, Mapping[str, float | None]], title: str) -> Path:
    """Grouped horizontal bars: one group per figure, one bar per contender, milliseconds on a log axis (the
    stages span 1000x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = list(stages)
    contenders: list[str] = []
    for per in stages.values():
        contenders += [c for c in per if c not in contenders]
    height = 0.8 / max(1, len(contenders))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.5 * len(figs) * max(1, len(contenders)) ** 0.5 + 0.5))
    for j, c in enumerate(contenders):
        ys = [i + j * height for i in range(len(figs))]
        xs = [(stages[f].get(c) or 0.0) * 1e3 for f in figs]
        bars = ax.barh(ys, xs, height=height, label=c)
        for bar, x in zip(bars, xs):
            if x > 0:
                ax.text(
                    x,
                    bar.get_y() + bar.get_height() / 2,
                    f" {x:,.0f}" if x >= 10 else f" {x:.2f}",
                    va="center",
                    fontsize=7,
                )
    ax.set_yticks([i + height * (len(contenders) - 1) / 2 for i in range(len(figs))])
    ax.set_yticklabels(figs)
    ax.invert_yaxis()
    ax.set_xscale("log")
    top = max([v for per in stages.values() for v in per.values() if v] or [1e-3]) * 1e3
    ax.set_xlim(right=top * 4)  # room for the value labels
    ax.set_xlabel("milliseconds (log scale; lower is better)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    from t2vrt.safety.atomic import staged_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path, ".png", "--out") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
