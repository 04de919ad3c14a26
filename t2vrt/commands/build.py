"""`t2vrt build BUNDLE`: FP16 TensorRT engines for this GPU, sized by the planner; `--clean` deletes stale ones."""

from __future__ import annotations

from pathlib import Path

import click

from t2vrt.commands import reports_errors


@click.command("build")
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--vram",
    default=None,
    help="Plan for a card of this size (e.g. 6GiB; the CUDA context comes out of it) instead of the card's "
    "free memory; never more than is free now.",
)
@click.option("--frames", type=int, default=None, help="Frames per video (default: the bundle's).")
@click.option("--height", type=int, default=None, help="Height in pixels (default: the bundle's).")
@click.option("--width", type=int, default=None, help="Width in pixels (default: the bundle's).")
@click.option("--dynamic", is_flag=True, help="One engine per component for a range of shapes up to these (slower).")
@click.option("--clean", is_flag=True, help="Only delete stale engines (older exports, unused shapes, temp files).")
@reports_errors
def command(
    bundle: Path,
    vram: str | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    dynamic: bool,
    clean: bool,
) -> None:
    """Build (or reuse) BUNDLE's TensorRT engines for this GPU and TensorRT version."""
    from t2vrt.engine import store

    if clean:
        from t2vrt.manifest import load_manifest

        load_manifest(bundle)  # a clear error when BUNDLE is not a bundle
        removed = store.clean(bundle)
        for row in removed:
            click.echo(f"removed {row['path']} ({row['bytes'] >> 20} MiB): {row['stale']}")
        click.echo(f"{len(removed)} stale engine file(s) removed")
        return
    from t2vrt.engine.build import current_target, import_tensorrt
    from t2vrt.engine.facts import bundle_facts, card_memory, make_plan, request_from

    facts = bundle_facts(bundle)  # a bad bundle is the first thing to say
    import_tensorrt()
    target, gpu = current_target()
    mem = card_memory(vram, gpu)
    req = request_from(facts, frames, height, width, dynamic)
    facts = bundle_facts(bundle, calibrate=req, target=target)
    p = make_plan(facts, req, mem.bytes, mem.free)
    click.echo(f"building for {target.describe()}; {mem.source}")
    click.echo(p.summary())
    click.echo(p.table())
    from t2vrt.engine.build import build

    assert facts.manifest is not None
    built = build(facts.manifest, p, target, echo=click.echo, facts=facts)
    if built.plan.engines != p.engines:
        click.echo("as built, in TensorRT's own figures:")
        click.echo(built.plan.summary())
        click.echo(built.plan.table())
    files = built.files
    click.echo(f"engines in {store.target_dir(bundle, target)}: {', '.join(f.name for f in files.values())}")
