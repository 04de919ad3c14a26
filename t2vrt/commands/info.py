"""`t2vrt info MODEL`: what a checkpoint (either layout, a hub id, `tiny`) or a bundle directory holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from t2vrt.commands import reports_errors
from t2vrt.manifest import MANIFEST_NAME


def is_bundle(model: str) -> bool:
    return (Path(model) / MANIFEST_NAME).is_file()


def describe_bundle(bundle: Path) -> dict[str, Any]:
    """A bundle's manifest summary and its TensorRT engines on disk (torch-free)."""
    from t2vrt.config import to_dict
    from t2vrt.engine.store import bundle_engine_summary
    from t2vrt.manifest import load_manifest, verify_files

    m = load_manifest(bundle)
    hashed = verify_files(m)  # every graph and data file against the manifest's sha256 (UsageError if one differs)
    return {
        "kind": "bundle",
        "bundle": str(bundle),
        "verified": {
            "files": sum(1 + bool(f.data_sha256) for c in m.components.values() for f in c.files.values()),
            "hashed_now": len(hashed),
        },
        "name": m.model_name,
        "precisions": m.precisions,
        "defaults": to_dict(m.defaults),
        "components": {
            name: {p: {"path": str(f.path), "bytes": f.bytes, "parity": f.parity} for p, f in c.files.items()}
            for name, c in m.components.items()
        },
        "fp16_gate": m.fp16_gate,
        "source": {"layout": m.source.layout, "location": m.source.location},
        "engines": bundle_engine_summary(bundle),
    }


def format_bundle(d: dict[str, Any]) -> str:
    v = d["verified"]
    lines = [
        f"bundle:  {d['bundle']}",
        f"verified: sha256 of {v['files']} files match the manifest ({v['hashed_now']} hashed now, the rest unchanged since last checked)",
        f"name:    {d['name']}",
        f"precisions: {', '.join(d['precisions']) or 'none'}",
    ]
    for name, files in d["components"].items():
        for p, f in files.items():
            err = f["parity"].get("rel_l2")
            gate = f"rel L2 {err:.1e} vs PyTorch" if err is not None else ""
            lines.append(f"  {name:<13} {p}  {f['bytes']:>14,} bytes  {Path(f['path']).name:<11} {gate}")
    if d.get("fp16_gate"):
        lines.append(f"fp16 gate: decoded frames {d['fp16_gate']['psnr_db']:.1f} dB PSNR vs fp32")
    lines.append(f"source:  {d['source']['layout']} {d['source']['location']}")
    engines = d.get("engines") or []
    lines.append(f"TensorRT engines: {len(engines) or 'none (t2vrt build BUNDLE)'}")
    for e in engines:
        state = f"STALE: {e['stale']}" if e["stale"] else "ok"
        lines.append(
            f"  {e['target']}  {e['component'] or '?'}  {e['shapes'] or '?'}  {e['bytes'] / 2**20:,.1f} MiB  {state}"
        )
    if any(e["stale"] for e in engines):
        lines.append("remove stale engines with: t2vrt build BUNDLE --clean")
    return "\n".join(lines)


def describe_any(model: str) -> dict[str, Any]:
    """A bundle directory (one with manifest.json) or a checkpoint; the same dict `--json` prints."""
    if is_bundle(model):
        return describe_bundle(Path(model))
    from t2vrt.models.info import describe  # torch: only for checkpoints

    return describe(model)


@click.command("info")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@reports_errors
def command(model: str, as_json: bool) -> None:
    """Describe MODEL without loading its weights: a checkpoint directory (ModelScope original or diffusers
    layout), a hub id, `tiny`, or a bundle directory written by `t2vrt export`."""
    d = describe_any(model)
    if as_json:
        click.echo(json.dumps(d, indent=2))
    elif d["kind"] == "bundle":
        click.echo(format_bundle(d))
    else:
        from t2vrt.models.info import format_description

        click.echo(format_description(d))
