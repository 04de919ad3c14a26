"""`--lora` sources: a local file or folder, or a hub id `owner/name[/subfolder...][/file]` fetched into the hub cache.

Only the chosen folder's top-level LoRA files are downloaded (yhzhai/mcm holds five variants; a user wants one).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from t2vrt.errors import UsageError
from t2vrt.lora.spec import LoraSpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
_WANTED = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", "adapter_config.json")

ListFiles = Callable[[str], Sequence[str]]
Download = Callable[[str, str], str]


def _hub_list(repo_id: str) -> Sequence[str]:
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo_id)


def _hub_download(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename)


def split_hub_id(source: str) -> tuple[str, str]:
    """'owner/name/sub/dir' -> ('owner/name', 'sub/dir'); UsageError for what is no hub id or climbs out of the repo."""
    if not _HUB_ID.match(source) or any(part in ("..", ".") for part in source.split("/")):
        raise UsageError(
            f"LoRA {source!r} is neither an existing file or folder nor a hub id (owner/name[/subfolder][/file])"
        )
    parts = source.split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_lora(spec: LoraSpec, list_files: ListFiles | None = None, download: Download | None = None) -> Path:
    """A local path for the spec's source: as given when it exists, else fetched from the hub."""
    local = Path(spec.source).expanduser()
    if local.exists():
        return local
    looks_local = spec.source.startswith(("/", "./", "../", "~", "\\")) or "\\" in spec.source or ":" in spec.source
    if looks_local:
        raise UsageError(f"LoRA {spec.source!r} does not exist")
    repo_id, sub = split_hub_id(spec.source)
    list_files = list_files or _hub_list
    download = download or _hub_download
    try:
        files = list(list_files(repo_id))
        if sub and sub in files:  # a single file named in full
            wanted = [sub]
            config = str(PurePosixPath(sub).parent / "adapter_config.json").removeprefix("./")
            wanted += [config] if config in files else []
        else:
            prefix = f"{sub}/" if sub else ""
            wanted = [f for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :] and f.endswith(_WANTED)]
            if not wanted:
                where = f"folder {sub!r} of " if sub else ""
                raise UsageError(f"the {where}hub repo {repo_id!r} has no LoRA file (.safetensors / .pt / .bin)")
        paths = [Path(download(repo_id, f)) for f in wanted]
    except UsageError:
        raise
    except Exception as e:  # huggingface_hub raises many types (HTTP, offline, not found): all mean "not fetched"
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        raise UsageError(
            f"cannot fetch LoRA {spec.source!r} from the hub: {type(e).__name__}: {lines[0] if lines else ''}"[:400]
        ) from None
    return paths[0] if sub and sub in files else paths[0].parent
