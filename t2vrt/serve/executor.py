"""Where a job actually runs, behind one small interface so another executor (Ray, issue 15) can replace it.

    executor.models()                      -> {model id: ModelInfo}   what each bundle can do, its defaults
    executor.validate(model, prompt, **o)  -> GenerateOptions         the CLI's checks (UsageError, same message)
    executor.run(job, out_dir, on_step)    -> result dict             writes video.mp4, thumbnail.png,
                                                                      spritesheet.jpg into out_dir; calls
                                                                      on_step(done, total) after every denoising
                                                                      step (on_step raising stops the job)

`job` is a plain dict (JSON-able): {"id", "model", "given": {pipeline kwargs the user set}, "input": {"path",
"kind"} | None}. LocalExecutor runs it in the calling thread on Pipelines loaded once at start.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from t2vrt.errors import UsageError
from t2vrt.runtime import samplers
from t2vrt.runtime.options import GenerateOptions, resolve_options

StepFn = Callable[[int, int], None]
V2V_KWARGS = ("init_video", "init_image", "strength", "hold_frames")  # issue 13's Pipeline arguments


@dataclass(frozen=True)
class ModelInfo:
    id: str
    bundle: str
    defaults: GenerateOptions
    fps: int
    size_multiple: int
    samplers: tuple[str, ...]
    accepts: frozenset[str]  # the keyword arguments the bundle's Pipeline takes
    no_init: str | None = None  # why this model cannot start from an input clip or image (None: it can)

    @property
    def video_to_video(self) -> bool:
        return self.no_init is None and "init_video" in self.accepts

    @property
    def image_to_video(self) -> bool:
        return self.no_init is None and "init_image" in self.accepts

    def to_api(self) -> dict[str, Any]:
        d = self.defaults
        return {
            "id": self.id,
            "object": "model",
            "created": 0,
            "owned_by": "t2vrt",
            "t2vrt": {
                "bundle": self.bundle,
                "fps": self.fps,
                "size_multiple": self.size_multiple,
                "samplers": list(self.samplers),
                "video_to_video": self.video_to_video,
                "image_to_video": self.image_to_video,
                "no_input_reason": self.no_init,
                "defaults": {
                    "frames": d.num_frames,
                    "width": d.width,
                    "height": d.height,
                    "steps": d.num_inference_steps,
                    "guidance": d.guidance_scale,
                    "negative_prompt": d.negative_prompt,
                    "sampler": d.scheduler,
                },
            },
        }


class Executor(Protocol):
    def models(self) -> dict[str, ModelInfo]: ...

    def validate(self, model: str, prompt: str, **given: Any) -> GenerateOptions: ...

    def run(self, job: dict[str, Any], out_dir: Path, on_step: StepFn) -> dict[str, Any]: ...

    def close(self) -> None: ...


def pipeline_kwargs(given: dict[str, Any]) -> dict[str, Any]:
    """API field names -> Pipeline keyword arguments (only what the user set: the bundle decides the rest)."""
    names = {
        "negative_prompt": "negative_prompt",
        "frames": "num_frames",
        "height": "height",
        "width": "width",
        "steps": "num_inference_steps",
        "guidance": "guidance_scale",
        "eta": "eta",
        "seed": "seed",
        "sampler": "scheduler",
        "strength": "strength",
        "hold_frames": "hold_frames",
    }
    return {names[k]: v for k, v in given.items() if k in names and v is not None}


def _accepts(pipe: Any) -> frozenset[str]:
    params = inspect.signature(pipe.__call__).parameters
    return frozenset(n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def _no_init(pipe: Any, accepts: frozenset[str]) -> str | None:
    """Why `pipe` cannot do video-to-video / image-to-video, in the runtime's own words; None when it can."""
    if "init_video" not in accepts:
        return "this t2vrt runtime's Pipeline takes no init_video"
    from t2vrt.runtime import vid2vid_stage

    if vid2vid_stage.ENCODER not in pipe.manifest.components:
        return str(vid2vid_stage.encoder_missing(pipe.manifest))
    return None


def _spritesheet(frames: np.ndarray, most: int = 16) -> np.ndarray:
    """Up to `most` evenly spaced frames in a near-square grid, (rows*h, cols*w, 3)."""
    idx = np.linspace(0, len(frames) - 1, min(most, len(frames))).round().astype(int)
    cols = math.ceil(math.sqrt(len(idx)))
    rows = math.ceil(len(idx) / cols)
    h, w = frames.shape[1:3]
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for n, i in enumerate(idx):
        r, c = divmod(n, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
    return sheet


class LocalExecutor:
    """Pipelines loaded once, run in the caller's thread (the Worker's): one job at a time on this GPU or CPU."""

    def __init__(self, pipelines: dict[str, Any]) -> None:
        self._pipes = pipelines
        self._models: dict[str, ModelInfo] = {}
        for name, pipe in pipelines.items():
            defaults = resolve_options(pipe.manifest, "")
            accepts = _accepts(pipe)
            self._models[name] = ModelInfo(
                id=name,
                bundle=str(pipe.manifest.bundle),
                defaults=defaults,
                fps=int(pipe.manifest.defaults.fps),
                size_multiple=int(pipe.manifest.model.size_multiple),
                samplers=tuple(samplers.SAMPLERS),
                accepts=accepts,
                no_init=_no_init(pipe, accepts),
            )

    @classmethod
    def load(cls, bundles: dict[str, Path], backend: str = "auto") -> LocalExecutor:
        from t2vrt import Pipeline

        pipes: dict[str, Any] = {}
        try:
            for name, path in bundles.items():
                pipes[name] = Pipeline.from_bundle(path, backend=backend)
        except BaseException:
            for p in pipes.values():
                p.close()
            raise
        return cls(pipes)

    def models(self) -> dict[str, ModelInfo]:
        return self._models

    def describe(self) -> dict[str, str]:
        return {name: getattr(p, "selection_note", "") for name, p in self._pipes.items()}

    def validate(self, model: str, prompt: str, **given: Any) -> GenerateOptions:
        kw = {k: v for k, v in pipeline_kwargs(given).items() if k not in V2V_KWARGS}
        return resolve_options(self._pipes[model].manifest, prompt, **kw)

    def run(self, job: dict[str, Any], out_dir: Path, on_step: StepFn) -> dict[str, Any]:
        import imageio.v3 as iio

        pipe = self._pipes[job["model"]]
        kwargs = pipeline_kwargs(job["given"])
        source = job.get("input")
        if source is not None:
            if source["kind"] == "image" and "init_image" in self._models[job["model"]].accepts:
                kwargs["init_image"] = source["path"]
            else:
                kwargs["init_video"] = source["path"]
        unknown = set(kwargs) - self._models[job["model"]].accepts
        if unknown:
            raise UsageError(f"model {job['model']!r} does not take {', '.join(sorted(unknown))}")
        video = pipe(job["prompt"], callback=on_step, **kwargs)
        frames = video.frames  # (f, h, w, 3) uint8
        video.save(out_dir / "video.mp4")
        iio.imwrite(out_dir / "thumbnail.png", frames[len(frames) // 2], plugin="pillow", extension=".png")
        iio.imwrite(out_dir / "spritesheet.jpg", _spritesheet(frames), plugin="pillow", extension=".jpg", quality=90)
        return {
            "frames": int(frames.shape[0]),
            "width": int(frames.shape[2]),
            "height": int(frames.shape[1]),
            "fps": int(video.fps),
            "backend": str(video.backend),
            "timings": {k: round(float(v), 4) for k, v in video.timings.items()},
        }

    def close(self) -> None:
        for p in self._pipes.values():
            p.close()
