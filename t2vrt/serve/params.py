"""Request fields (multipart strings or JSON values) -> one validated job, before anything is queued.

Field names are OpenAI's (`prompt`, `model`, `seconds`, `size`, `input_reference`) plus the CLI's (`negative_prompt`,
`frames`, `steps`, `guidance`, `eta`, `seed`, `sampler`, `strength`, `hold_frames`). Range checks are the runtime's
own (`resolve_options`), so a bad value gets the CLI's one-line message, as a 400 naming the field.
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from t2vrt.errors import UsageError
from t2vrt.serve.errors import ApiError
from t2vrt.serve.executor import Executor, ModelInfo
from t2vrt.serve.uploads import Upload

INTS = ("frames", "steps", "seed", "hold_frames")
FLOATS = ("seconds", "guidance", "eta", "strength")
STRINGS = ("prompt", "model", "size", "negative_prompt", "sampler")
FIELDS = frozenset((*INTS, *FLOATS, *STRINGS, "input_reference", "scheduler"))
REMIX_FIELDS = frozenset(
    ("prompt", "negative_prompt", "steps", "guidance", "eta", "seed", "sampler", "scheduler", "strength")
)
# The first word of a runtime UsageError -> the API field it is about.
_PARAM_OF = {
    "height": "size",
    "width": "size",
    "frames": "frames",
    "steps": "steps",
    "guidance": "guidance",
    "eta": "eta",
    "scheduler": "sampler",
    "seed": "seed",
    "prompt": "prompt",
    "negative": "negative_prompt",
    "strength": "strength",
    "hold": "hold_frames",
}
_SIZE = re.compile(r"\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*")
_INT = re.compile(r"\s*[+-]?\d{1,20}\s*")


@dataclass(frozen=True)
class JobRequest:
    model: str
    prompt: str
    given: dict[str, Any]  # what the user set (and the seed the server drew), API names: passed to the Pipeline
    resolved: dict[str, Any]  # every value the job will use, for the video object and the page


def bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param)


def _int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise bad(name, f"{name} must be an integer, got {v!r}")
    if isinstance(v, float):
        if not v.is_integer():
            raise bad(name, f"{name} must be an integer, got {v!r}")
        return int(v)
    if isinstance(v, str):
        if not _INT.fullmatch(v):
            raise bad(name, f"{name} must be an integer, got {v!r}")
        return int(v)
    return v


def _float(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise bad(name, f"{name} must be a number, got {v!r}")
    try:
        f = float(v)
    except ValueError:
        raise bad(name, f"{name} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise bad(name, f"{name} must be a finite number, got {v!r}")
    return f


def _typed(raw: Mapping[str, Any], allowed: frozenset[str], max_chars: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in raw.items():
        if key not in allowed:
            raise bad(key, f"unknown field {key!r}; allowed: {', '.join(sorted(allowed))}")
        if v is None or key == "input_reference":
            continue
        name = "sampler" if key == "scheduler" else key
        if key in INTS:
            out[name] = _int(key, v)
        elif key in FLOATS:
            out[name] = _float(key, v)
        else:
            if not isinstance(v, str):
                raise bad(key, f"{key} must be a string, got {type(v).__name__}")
            if len(v) > max_chars:
                raise bad(key, f"{key} is {len(v)} characters; the limit is {max_chars}")
            out[name] = v
    return out


def _frames(f: dict[str, Any], info: ModelInfo) -> None:
    """`seconds` (OpenAI's) becomes frames at the bundle's fps; `frames` wins when both are given."""
    seconds = f.pop("seconds", None)
    if seconds is not None and "frames" not in f:
        if seconds <= 0:
            raise bad("seconds", f"seconds must be > 0, got {seconds:g}")
        f["frames"] = max(1, round(seconds * info.fps))


def _size(f: dict[str, Any]) -> None:
    size = f.pop("size", None)
    if size is None:
        return
    m = _SIZE.fullmatch(size)
    if not m:
        raise bad("size", f"size must be WIDTHxHEIGHT in pixels (e.g. 256x256), got {size!r}")
    f["width"], f["height"] = int(m.group(1)), int(m.group(2))


def _check_source(f: dict[str, Any], info: ModelInfo, kind: str | None, remix: bool) -> None:
    """strength / hold_frames make sense only with an input clip or image, and only where the bundle can."""
    field = "remix" if remix else "input_reference"
    if kind is None:
        for name in ("strength", "hold_frames"):
            if name in f:
                raise bad(name, f"{name} applies only with an input_reference (or a remix)")
        return
    if (kind == "video" and not info.video_to_video) or (kind == "image" and not info.image_to_video):
        what = "video-to-video" if kind == "video" else "image-to-video"
        reason = info.no_init or f"its Pipeline takes no {'init_video' if kind == 'video' else 'init_image'}"
        raise bad(field, f"model {info.id!r} cannot do {what}: {reason}")
    s = f.get("strength")
    if s is not None and not 0.0 < s <= 1.0:
        raise bad("strength", f"strength must be in (0, 1] (1 = ignore the input's content), got {s:g}")
    if "hold_frames" in f and kind != "image":
        raise bad("hold_frames", "hold_frames applies to an image input_reference only")
    for name in ("strength", "hold_frames"):
        if name in f and name not in info.accepts:
            raise bad(name, f"model {info.id!r} does not take {name}")


def _param_of(message: str, raw: Mapping[str, Any]) -> str | None:
    word = re.split(r"[\s:]", message, maxsplit=1)[0].lower()
    param = _PARAM_OF.get(word)
    if param == "frames" and "seconds" in raw and "frames" not in raw:
        return "seconds"
    return param


def parse_request(
    raw: Mapping[str, Any],
    executor: Executor,
    max_chars: int,
    upload: Upload | None = None,
    remix_of: dict[str, Any] | None = None,
) -> JobRequest:
    """Validate everything a job needs; raise ApiError (400) naming the first bad field.

    `remix_of`: the source job's {"model", "given", "resolved"} for POST /v1/videos/{id}/remix."""
    models = executor.models()
    f = _typed(raw, REMIX_FIELDS if remix_of else FIELDS, max_chars)
    prompt = f.pop("prompt", None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", "prompt is required (a non-empty string)")
    if remix_of is not None:
        model = remix_of["model"]
        r = remix_of["resolved"]
        f = {
            "frames": r["frames"],
            "width": r["width"],
            "height": r["height"],
            "seed": r["seed"],
            **{k: v for k, v in remix_of["given"].items() if k in REMIX_FIELDS and k != "strength"},
            **f,
        }
    else:
        model = f.pop("model", None) or next(iter(models))
        if model not in models:
            raise bad("model", f"model must be one of {', '.join(models)}, got {model!r}")
    info = models[model]
    _frames(f, info)
    _size(f)
    kind = "video" if remix_of is not None else (upload.kind if upload else None)
    _check_source(f, info, kind, remix=remix_of is not None)
    f.setdefault("seed", secrets.randbelow(2**32))  # random by default, and recorded, so a result can be redone
    try:
        o = executor.validate(model, prompt, **f)
    except UsageError as e:
        raise ApiError(400, str(e), param=_param_of(str(e), raw)) from None
    resolved = {
        "negative_prompt": o.negative_prompt,
        "frames": o.num_frames,
        "width": o.width,
        "height": o.height,
        "steps": o.num_inference_steps,
        "guidance": o.guidance_scale,
        "eta": o.eta,
        "seed": o.seed,
        "sampler": o.scheduler,
        "fps": info.fps,
        "strength": f.get("strength"),
        "hold_frames": f.get("hold_frames"),
        "input": kind,
    }
    return JobRequest(model, prompt, f, resolved)
