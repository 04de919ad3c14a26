"""The components a model has, in one table: what each engine takes and gives, and where each stage finds its parts.

An entry says, for one engine of the bundle:
- `io`: its io spec from the model config (the single source of its shapes);
- `config`: the part of the model config its graph depends on (in its export key and the manifest);
- `module` / `keys`: the PyTorch module built from that config, and the key maps that turn each checkpoint layout's
  state dict into the module's names ("package.module:attribute", imported only by the export stage: this table is
  torch-free so the runtime and the planner read it too);
- `precision`: which inputs stay fp32 inside an fp16 graph;
- `planner`: its parameter count and peak activation elements at given io-spec sizes (t2vrt.engine.analytic);
- `trace_dims` / `check_dims`: the sizes the exporter traces at and the different ones its parity gate checks at.

Adding a component (a VAE encoder, an optional guidance input) is one `ComponentDef` in COMPONENTS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from t2vrt.config import ModelConfig
from t2vrt.engine import analytic
from t2vrt.iospec import IOSpec, text_encoder_spec, unet_spec, vae_decoder_spec, vae_encoder_spec


def resolve_ref(ref: str) -> Any:
    """ "package.module:attribute" -> the attribute (imports the module on first use)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class KeyMaps:
    """Per checkpoint layout, a function (state dict in that layout's names, component config) -> our names.

    `part` is the checkpoint role (t2vrt.models.source) whose file holds the component's weights."""

    part: str
    original: str
    diffusers: str


@dataclass(frozen=True)
class PlannerEntry:
    params: Callable[[ModelConfig], int]
    activations: Callable[[ModelConfig, Mapping[str, int]], int]  # peak live elements at io-spec sizes
    fp16_graph_factor: float  # fp16 graph's liveness / the analytic walk (Casts around norms and boundaries)


@dataclass(frozen=True)
class ComponentDef:
    name: str
    io: Callable[[ModelConfig], IOSpec]
    config: Callable[[ModelConfig], Any]
    module: str
    keys: KeyMaps
    planner: PlannerEntry
    trace_dims: Mapping[str, int]
    check_dims: Mapping[str, int]
    fp32_inputs: tuple[str, ...] = ()  # float inputs an fp16 graph keeps in fp32 (e.g. the sinusoidal timestep)
    required: bool = True  # optional components may be absent from a bundle (older exports)
    tiny_seed: int = 0  # the embedded tiny model's per-component weight seed
    doc: str = ""

    def build(self, cfg: ModelConfig) -> Any:
        """The PyTorch module for `cfg` (export stage only: imports torch)."""
        return resolve_ref(self.module)(self.config(cfg))


# The sizes the exporter traces at have every dynamic dim >= 2 and distinct, so no axis is specialised; the gate
# checks at other sizes, so a graph that silently baked in a trace size fails it.
COMPONENTS: dict[str, ComponentDef] = {
    c.name: c
    for c in (
        ComponentDef(
            name="text_encoder",
            doc="tokens -> OpenCLIP ViT-H-14 penultimate-layer embeddings",
            io=lambda m: text_encoder_spec(m.text_encoder.context_length, m.text_encoder.width),
            config=lambda m: m.text_encoder,
            module="t2vrt.models.text_encoder:TextEncoder",
            keys=KeyMaps(
                "text_encoder",
                original="t2vrt.models.text_encoder_keys:openclip_to_ours",
                diffusers="t2vrt.models.text_encoder_keys:diffusers_to_original",
            ),
            planner=PlannerEntry(
                params=lambda m: analytic.text_encoder(m.text_encoder, 1)[0],
                activations=lambda m, d: analytic.text_encoder(m.text_encoder, d["text_batch"])[1],
                fp16_graph_factor=1.3,
            ),
            trace_dims={"text_batch": 2},
            check_dims={"text_batch": 3},
            tiny_seed=1,
        ),
        ComponentDef(
            name="unet",
            doc="(latents, timestep, text embeddings) -> predicted noise",
            io=lambda m: unet_spec(
                m.unet.in_channels, m.unet.out_channels, m.text_encoder.context_length, m.unet.context_dim
            ),
            config=lambda m: m.unet,
            module="t2vrt.models.unet3d:UNet3D",
            keys=KeyMaps(
                "unet",
                original="t2vrt.models.unet3d_keys:original_names",
                diffusers="t2vrt.models.unet3d_keys:diffusers_to_original",
            ),
            planner=PlannerEntry(
                params=lambda m: analytic.unet(m.unet, 1, 1, 8, 8)[0],
                activations=lambda m, d: analytic.unet(
                    m.unet, d["batch"], d["frames"], d["latent_height"], d["latent_width"]
                )[1],
                fp16_graph_factor=1.25,
            ),
            trace_dims={"batch": 2, "frames": 3, "latent_height": 8, "latent_width": 16},
            check_dims={"batch": 1, "frames": 5, "latent_height": 16, "latent_width": 8},
            fp32_inputs=("timestep",),
            tiny_seed=2,
        ),
        ComponentDef(
            name="vae_decoder",
            doc="latents (one frame each) -> images in [-1, 1]",
            io=lambda m: vae_decoder_spec(m.vae.z_channels, m.vae.downscale, m.vae.out_ch),
            config=lambda m: m.vae,
            module="t2vrt.models.vae:VAEDecoder",
            keys=KeyMaps(
                "vae",
                original="t2vrt.models.vae_keys:lightning_to_ours",
                diffusers="t2vrt.models.vae_keys:diffusers_to_original",
            ),
            planner=PlannerEntry(
                params=lambda m: analytic.vae_decoder(m.vae, 1, 1, 1)[0],
                activations=lambda m, d: analytic.vae_decoder(
                    m.vae, d["vae_batch"], d["latent_height"], d["latent_width"]
                )[1],
                fp16_graph_factor=1.4,
            ),
            # small: torch's fp16 CPU convs are slow
            trace_dims={"vae_batch": 2, "latent_height": 4, "latent_width": 6},
            check_dims={"vae_batch": 3, "latent_height": 12, "latent_width": 8},
            tiny_seed=3,
        ),
        ComponentDef(
            name="vae_encoder",
            doc="images (one frame each) -> posterior moments (mean | logvar), for video-to-video",
            io=lambda m: vae_encoder_spec(m.vae.out_ch, m.vae.downscale, m.vae.embed_dim),
            config=lambda m: m.vae,
            module="t2vrt.models.vae_encoder:VAEEncoderMoments",
            keys=KeyMaps(
                "vae",
                original="t2vrt.models.vae_encoder_keys:lightning_to_ours",
                diffusers="t2vrt.models.vae_encoder_keys:diffusers_to_original",
            ),
            planner=PlannerEntry(
                params=lambda m: analytic.vae_encoder(m.vae, 1, 1, 1)[0],
                activations=lambda m, d: analytic.vae_encoder(
                    m.vae, d["vae_batch"], d["latent_height"], d["latent_width"]
                )[1],
                fp16_graph_factor=1.33,
            ),
            trace_dims={"vae_batch": 2, "latent_height": 4, "latent_width": 6},
            check_dims={"vae_batch": 3, "latent_height": 5, "latent_width": 4},
            required=False,  # bundles exported before video-to-video work for text-to-video without it
            tiny_seed=4,
        ),
    )
}
NAMES: tuple[str, ...] = tuple(COMPONENTS)
REQUIRED: tuple[str, ...] = tuple(n for n, c in COMPONENTS.items() if c.required)


def io_specs(cfg: ModelConfig) -> dict[str, IOSpec]:
    return {n: c.io(cfg) for n, c in COMPONENTS.items()}
