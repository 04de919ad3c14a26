"""`t2vrt plan BUNDLE --vram 6GiB`: how engines would be built and run on a card, with the memory table. No GPU needed."""

from __future__ import annotations

import json

import click

from t2vrt.commands import reports_errors


@click.command("plan")
@click.argument("bundle")
@click.option(
    "--vram",
    default=None,
    help="The card's memory as sold, e.g. 6GiB, 8GB, 6144MiB; the CUDA context comes out of it "
    "(default: this GPU's free memory, measured: the context is already out of it).",
)
@click.option("--frames", type=int, default=None, help="Frames per video (default: the bundle's).")
@click.option("--height", type=int, default=None, help="Height in pixels (default: the bundle's).")
@click.option("--width", type=int, default=None, help="Width in pixels (default: the bundle's).")
@click.option("--dynamic", is_flag=True, help="Plan a profile range up to these shapes instead of exactly them.")
@click.option("--no-calibrate", is_flag=True, help="Skip the ONNX liveness pass; use the analytic estimate only.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@reports_errors
def command(
    bundle: str,
    vram: str | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    dynamic: bool,
    no_calibrate: bool,
    as_json: bool,
) -> None:
    """Plan TensorRT engines for BUNDLE (a bundle directory, or a model preset name such as ms-1.7b)."""
    from t2vrt.engine.facts import card_memory, load_facts, make_plan, request_from

    mem = card_memory(vram)
    facts = load_facts(bundle)
    req = request_from(facts, frames, height, width, dynamic)
    if facts.manifest is not None and not no_calibrate:
        facts = load_facts(bundle, calibrate=req)
    p = make_plan(facts, req, mem.bytes, mem.free)
    if as_json:
        click.echo(json.dumps(p.to_json(), indent=2))
        return
    click.echo(f"plan for {facts.name} ({mem.source}; activations: {facts.sizes.source})")
    click.echo(p.summary())
    click.echo(p.table())
