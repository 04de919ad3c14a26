"""The parity gates every export ends with: ONNX Runtime vs PyTorch per component, and fp16 end to end.

fp32: each component's ONNX, run by ONNX Runtime on CPU at sizes other than the trace's, against the PyTorch module;
relative L2 <= 1e-4 or the export fails. fp16: the decoded frames of one guided denoising step through the fp16
graphs against the same step in fp32 PyTorch; under 35 dB PSNR the export fails (Apple's converter refuses under 35 dB
too). The step is the x0 prediction at t = 501 with guidance 9, the work the real loop's last steps do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from t2vrt.components import COMPONENTS
from t2vrt.errors import T2VError
from t2vrt.export.numerics import psnr, rel_l2
from t2vrt.runtime.denoiser import guide

FP32_REL_L2_BAR = 1e-4
FP16_PSNR_BAR_DB = 35.0
CHAIN_TIMESTEP = 501
CHAIN_GUIDANCE = 9.0
CHAIN_DIMS = {"frames": 3, "latent_height": 8, "latent_width": 8}


# Float inputs that stay fp32 in every precision (the registry's precision policy).
FP32_INPUTS = frozenset(name for c in COMPONENTS.values() for name in c.fp32_inputs)


def torch_run(module: nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One PyTorch call on numpy inputs: float inputs in the weights' dtype except FP32_INPUTS."""
    dtype = next(module.parameters()).dtype
    args = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]
    args = [a.to(dtype) if a.is_floating_point() and name not in FP32_INPUTS else a for a, name in zip(args, inputs)]
    with torch.no_grad():
        return module(*args).float().numpy()


def check_component(name: str, precision: str, onnx_out: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Compare one component's ONNX output with the fp32 PyTorch output; raise on an fp32 miss or any NaN/inf."""
    if not np.isfinite(onnx_out).all():
        raise T2VError(f"export parity gate: {name} {precision} ONNX output has NaN or inf")
    err = rel_l2(onnx_out, ref)
    if precision == "fp32" and not err <= FP32_REL_L2_BAR:
        raise T2VError(
            f"export parity gate: {name} fp32 ONNX differs from PyTorch by rel L2 {err:.2e} (bar {FP32_REL_L2_BAR:.0e})"
        )
    return {"rel_l2": err}


@dataclass(frozen=True)
class ChainInputs:
    tokens: np.ndarray  # (2, L): cond, uncond
    latents: np.ndarray  # (1, c, f, h, w)
    alpha_cumprod: float  # at CHAIN_TIMESTEP


Run = Callable[[dict[str, np.ndarray]], np.ndarray]  # one component's call on numpy inputs


class Chain:
    """tokens -> guided eps at t -> x0 prediction -> decoded frames (f, 3, H, W), fed one component at a time.

    Each stage needs only the previous stage's output, so an export can feed a component while it is the only one
    loaded (at full size, never two PyTorch modules at once)."""

    STAGES = ("text_encoder", "unet", "vae_decoder")

    def __init__(self, x: ChainInputs) -> None:
        self.x = x
        self.carry: np.ndarray | None = None  # the last stage's output
        self.fed: list[str] = []

    def feed(self, name: str, run: Run) -> None:
        if name not in self.STAGES:
            return
        if self.STAGES[len(self.fed)] != name:
            raise ValueError(f"the chain takes {self.STAGES[len(self.fed)]} next, not {name}")
        x = self.x
        if name == "text_encoder":
            self.carry = run({"tokens": x.tokens})  # (2, L, C)
        elif name == "unet":
            lat = np.concatenate([x.latents, x.latents])  # (2, c, f, h, w)
            t = np.full((2,), CHAIN_TIMESTEP, np.float32)
            eps_c, eps_u = run({"latents": lat, "timestep": t, "text_embeddings": self.carry})  # type: ignore[dict-item]
            eps = guide(eps_c, eps_u, CHAIN_GUIDANCE)
            a = x.alpha_cumprod
            x0 = (x.latents[0] - np.sqrt(1 - a) * eps) / np.sqrt(a)  # (c, f, h, w)
            self.carry = np.ascontiguousarray(x0.transpose(1, 0, 2, 3), dtype=np.float32)  # (f, c, h, w)
        else:
            self.carry = run({"latents": self.carry})  # type: ignore[dict-item]
        self.fed.append(name)

    @property
    def frames(self) -> np.ndarray:
        if len(self.fed) != len(self.STAGES):
            raise ValueError(f"the chain has been fed {self.fed}, not all of {self.STAGES}")
        return self.carry  # type: ignore[return-value]


def chain_frames(run: Callable[[str, dict[str, np.ndarray]], np.ndarray], x: ChainInputs) -> np.ndarray:
    """The whole chain with `run(component, inputs)` (PyTorch or ONNX) for every stage."""
    chain = Chain(x)
    for name in Chain.STAGES:
        chain.feed(name, partial(run, name))
    return chain.frames


def check_fp16_chain(frames16: np.ndarray, frames32: np.ndarray) -> dict[str, float]:
    if not np.isfinite(frames16).all():
        raise T2VError("export fp16 gate: decoded frames through the fp16 graphs have NaN or inf")
    db = psnr(frames16, frames32)
    if not db >= FP16_PSNR_BAR_DB:
        raise T2VError(
            f"export fp16 gate: decoded frames through the fp16 graphs are {db:.1f} dB PSNR from fp32 "
            f"(bar {FP16_PSNR_BAR_DB:.0f} dB); the fp16 bundle is refused"
        )
    return {"psnr_db": db}
