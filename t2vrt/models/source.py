"""Where a model comes from: MODEL string -> Source (layout, root, the files the loader reads, role -> file).

MODEL is one of:
- `tiny`: the embedded random-weight model (built in memory, the same weights on every machine);
- a local directory in the original ModelScope layout (configuration.json, text2video_pytorch_model.pth,
  open_clip_pytorch_model.bin, VQGAN_autoencoder.pth) or the diffusers layout (model_index.json, unet/, vae/,
  text_encoder/, tokenizer/, scheduler/);
- a hub id (`org/name`), downloaded with huggingface_hub (only the files the loader reads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from t2vrt.errors import T2VError, UsageError

EMBEDDED = ("tiny",)
ORIGINAL_FILES = {  # role -> default file name; configuration.json's model_args may rename the weights
    "config": "configuration.json",
    "unet": "text2video_pytorch_model.pth",
    "text_encoder": "open_clip_pytorch_model.bin",
    "vae": "VQGAN_autoencoder.pth",
}
_MODEL_ARGS = {"unet": "ckpt_unet", "text_encoder": "ckpt_clip", "vae": "ckpt_autoencoder"}
# part -> weights file names in order of preference (diffusers' names; transformers' for the text encoder).
DIFFUSERS_PARTS = {
    part: [f"{stem}{variant}{ext}" for variant in ("", ".fp16") for stem, ext in stems]
    for part, stems in {
        "unet": [("diffusion_pytorch_model", ".safetensors"), ("diffusion_pytorch_model", ".bin")],
        "vae": [("diffusion_pytorch_model", ".safetensors"), ("diffusion_pytorch_model", ".bin")],
        "text_encoder": [("model", ".safetensors"), ("pytorch_model", ".bin")],
    }.items()
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Source:
    layout: str  # "embedded" | "original" | "diffusers"
    root: Path | str  # the checkpoint directory; the preset name for "embedded"
    files: tuple[Path, ...] = ()  # every file the loader reads
    parts: Mapping[str, Path] = field(default_factory=dict)  # role -> file (see ORIGINAL_FILES, _diffusers_parts)
    hint: str = ""  # what the user typed (a hub id or a path): picks the zeroscope defaults


def resolve(model: str) -> Source:
    """MODEL string -> Source; UsageError naming what is missing when it is neither a checkpoint nor a hub id."""
    if model in EMBEDDED:
        return Source("embedded", model, hint=model)
    path = Path(model).expanduser()
    if path.is_dir():
        return detect(path, hint=model)
    if path.exists():
        raise UsageError(f"MODEL {model!r} is a file; give the checkpoint directory that holds it")
    if _HUB_ID.match(model) and not model.startswith((".", "/")):
        return detect(download(model), hint=model)
    raise UsageError(
        f"MODEL {model!r}: no such directory, and not a hub id (org/name) or an embedded model ({', '.join(EMBEDDED)})"
    )


def detect(root: Path, hint: str = "") -> Source:
    """Which layout a directory holds; UsageError naming the first missing file of the layout it looks like."""
    looks_diffusers = (root / "model_index.json").is_file() or any((root / p).is_dir() for p in DIFFUSERS_PARTS)
    if looks_diffusers:
        return _diffusers_source(root, hint)
    if any((root / name).exists() for name in ORIGINAL_FILES.values()):
        return _original_source(root, hint)
    raise UsageError(
        f"{str(root)!r} holds no checkpoint: expected the ModelScope files ({', '.join(ORIGINAL_FILES.values())}) "
        f"or a diffusers layout (model_index.json, {'/, '.join(DIFFUSERS_PARTS)}/)"
    )


def _original_source(root: Path, hint: str) -> Source:
    config = root / ORIGINAL_FILES["config"]
    if not config.is_file():
        raise UsageError(f"{str(root)!r}: original ModelScope layout but {config.name} is missing")
    raw = read_json_object(config)
    model_args = raw.get("model", raw).get("model_args") or {}  # the release nests model_args and model_cfg in "model"
    parts = {"config": config}
    for role, arg in _MODEL_ARGS.items():
        name = model_args.get(arg) or ORIGINAL_FILES[role]
        parts[role] = root / Path(str(name)).name  # a file name only: never a path out of the directory
        if not parts[role].is_file():
            raise UsageError(f"{str(root)!r}: original ModelScope layout but {parts[role].name} ({role}) is missing")
    return Source("original", root, tuple(parts.values()), parts, hint)


def _weights_file(folder: Path, names: list[str]) -> Path | None:
    """The one weights file of a diffusers subfolder (see DIFFUSERS_PARTS), or the index of its shards."""
    for name in names:
        for candidate in (name, f"{name}.index.json"):
            if (folder / candidate).is_file():
                return folder / candidate
    return None


def _diffusers_source(root: Path, hint: str) -> Source:
    parts: dict[str, Path] = {}
    files: list[Path] = []
    if (root / "model_index.json").is_file():
        files.append(root / "model_index.json")
    for part, names in DIFFUSERS_PARTS.items():
        folder = root / part
        if not (folder / "config.json").is_file():
            raise UsageError(f"{str(root)!r}: diffusers layout but {part}/config.json is missing")
        weights = _weights_file(folder, names)
        if weights is None:
            raise UsageError(f"{str(root)!r}: diffusers layout but {part}/ has no {' or '.join(names[:2])}")
        parts[f"{part}_config"], parts[part] = folder / "config.json", weights
        files += [folder / "config.json", *_shards(weights)]
    scheduler = root / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        parts["scheduler"] = scheduler
        files.append(scheduler)
    return Source("diffusers", root, tuple(files), parts, hint)


def _shards(weights: Path) -> list[Path]:
    if not weights.name.endswith(".index.json"):
        return [weights]
    index = read_json_object(weights).get("weight_map", {})
    return [weights, *(weights.parent / Path(str(s)).name for s in sorted(set(index.values())))]


def hub_files(repo_id: str, names: set[str]) -> list[str]:
    """The files of a hub repo listing that the loader reads (diffusers layout preferred, one weights variant)."""
    if "model_index.json" in names:
        files = ["model_index.json"] + sorted(n for n in names if n.startswith(("scheduler/", "tokenizer/")))
        for part, candidates in DIFFUSERS_PARTS.items():
            files.append(f"{part}/config.json")
            for name in candidates:
                single, index = f"{part}/{name}", f"{part}/{name}.index.json"
                if single in names:
                    files.append(single)
                    break
                if index in names:  # shards: stem-0000k-of-0000n[.fp16].ext
                    stem, ext = name.split(".", 1)[0], "." + name.rsplit(".", 1)[1]
                    fp16 = ".fp16" in name
                    shards = [
                        n
                        for n in names
                        if n.startswith(f"{part}/{stem}-")
                        and "-of-" in n
                        and n.endswith(ext)
                        and (".fp16" in n) == fp16
                    ]
                    files += [index, *sorted(shards)]
                    break
        return files
    if ORIGINAL_FILES["config"] in names:
        return list(ORIGINAL_FILES.values())
    raise T2VError(f"hub repo {repo_id!r} holds neither a diffusers nor an original ModelScope checkpoint")


def download(repo_id: str) -> Path:
    """Fetch the files the loader needs from the Hugging Face hub; T2VError if it fails."""
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        raise T2VError(
            f"{repo_id!r} looks like a hub id, but huggingface_hub is not installed (pip install 't2vrt[export]')"
        ) from None
    try:
        files = hub_files(repo_id, set(HfApi().list_repo_files(repo_id)))
        return Path(snapshot_download(repo_id, allow_patterns=files))
    except T2VError:
        raise
    except Exception as e:
        raise T2VError(
            f"MODEL {repo_id!r} is not a local directory, and downloading it from the hub failed: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object, or one T2VError line naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise T2VError(f"cannot read {str(path)!r}: {e}") from None
    if not isinstance(data, dict):
        raise T2VError(f"{str(path)!r} does not hold a JSON object")
    return data
