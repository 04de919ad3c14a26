"""The runtime never imports torch, onnx or t2vrt.models (STYLE.md): checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("torch", "onnx", "t2vrt.models", "open_clip", "diffusers", "transformers")


def _leaks(code: str) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {FORBIDDEN!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_runtime_modules_import_without_torch() -> None:
    code = (
        "import t2vrt, t2vrt.runtime, t2vrt.runtime.pipeline, t2vrt.runtime.backends, t2vrt.runtime.onnxruntime_backend,"
        " t2vrt.runtime.tensorrt_backend, t2vrt.runtime.schedulers, t2vrt.runtime.tokenizer, t2vrt.runtime.video,"
        " t2vrt.cli\nfrom t2vrt import Pipeline"
    )
    assert _leaks(code) == []


def test_probe_detects_a_leak() -> None:
    """The check above can fail: importing torch is seen."""
    assert "torch" in _leaks("import torch")


def test_missing_optional_package_is_one_line() -> None:
    """A runtime-only install asked to export: one line naming the extra, not a traceback."""
    code = (
        "import sys\nsys.modules['torch'] = None\n"  # makes `import torch` raise ModuleNotFoundError
        "from click.testing import CliRunner\nfrom t2vrt.cli import cli\n"
        "r = CliRunner().invoke(cli, ['export', 'tiny', '--out', '/tmp/t2vrt-never-written'])\n"
        "print(r.exit_code, repr(r.output))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith("2 ") and "pip install 't2vrt[export]'" in out and "Traceback" not in out, out


def test_plan_a_preset_on_a_runtime_only_install() -> None:
    """`t2vrt plan ms-1.7b` needs neither torch nor onnx: the presets and the planner's walk are torch-free."""
    code = (
        "import sys\nfor m in ('torch', 'onnx'):\n    sys.modules[m] = None  # import raises, as when not installed\n"
        "from click.testing import CliRunner\nfrom t2vrt.cli import cli\n"
        "r = CliRunner().invoke(cli, ['plan', 'ms-1.7b', '--vram', '8GiB'])\n"
        "print(r.exit_code, repr(r.output))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith("0 ") and "unet" in out and "peak" in out, out


def test_registries_are_torch_free() -> None:
    """The component, backend and sampler tables and the configs load without torch (the runtime reads them)."""
    code = "import t2vrt.components, t2vrt.config, t2vrt.manifest, t2vrt.runtime.backends, t2vrt.runtime.samplers"
    assert _leaks(code) == []
