"""`t2vrt export MODEL --out BUNDLE`: checkpoint (local dir of either layout, hub id, or `tiny`) -> bundle."""

from __future__ import annotations

from pathlib import Path

import click

from t2vrt.commands import reports_errors


@click.command("export")
@click.argument("model")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "both"]),
    default="both",
    show_default=True,
    help="fp32 for ONNX Runtime on CPU, fp16 for TensorRT and ORT CUDA.",
)
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (17-20).")
@click.option("--force", is_flag=True, help="Re-export every component, even those unchanged since the last export.")
@click.option(
    "--lora",
    "loras",
    multiple=True,
    metavar="SOURCE[:SCALE]",
    help="Merge a LoRA into the UNet (file, folder or hub id[/subfolder]; repeatable). "
    "T2V-Turbo and MCM LoRAs make a few-step bundle.",
)
@click.option(
    "--few-step",
    type=click.Choice(["auto", "t2v-turbo", "lcm", "none"]),
    default="auto",
    show_default=True,
    help="The bundle's default sampler for a few-step LoRA (auto: from the LoRA).",
)
@click.option(
    "--guidance-w",
    type=float,
    default=7.5,
    show_default=True,
    help="T2V-Turbo's guidance value w, folded into the UNet (its LoRA's guidance embedding).",
)
@reports_errors
def command(
    model: str,
    out: Path,
    precision: str,
    opset: int,
    force: bool,
    loras: tuple[str, ...],
    few_step: str,
    guidance_w: float,
) -> None:
    """Export MODEL to an ONNX bundle, checking every graph against PyTorch.

    MODEL is a checkpoint directory (ModelScope original or diffusers layout), a hub id such as
    damo-vilab/text-to-video-ms-1.7b (needs internet), or `tiny`: an embedded random-weight model for trying things out.
    """
    from t2vrt.export.bundle import ExportOptions, export_bundle

    path = export_bundle(
        ExportOptions(
            model=model,
            out=out,
            precision=precision,
            opset=opset,
            force=force,
            loras=loras,
            few_step=few_step,
            guidance_w=guidance_w,
        ),
        progress=lambda s: click.echo(f"  {s}", err=True),
    )
    click.echo(f"bundle written: {path}")
