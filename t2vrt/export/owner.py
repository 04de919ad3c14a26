"""Which files of a bundle directory t2vrt wrote, for bundles exported before ownership markers existed.

A bundle written now carries t2vrt.safety.owned's marker. An older one is recognised by its manifest (a JSON object
with a schema version, a model and components); only the files such a bundle always has are claimed as t2vrt's:
manifest.json, tokenizer.json and <component>/<fp32|fp16>/model.onnx[.data]. Everything else in it (engines, a
user's notes) is foreign: a re-export carries it over, nothing deletes it. An empty directory is adopted (there is
nothing in it to lose). Any other directory is not a bundle, whatever it contains.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from t2vrt.errors import UsageError
from t2vrt.safety import owned
from t2vrt.safety.jsonfile import read_json

_GRAPH = re.compile(r"[a-z][a-z0-9_]*/(?:fp32|fp16)/model\.onnx(?:\.data)?")


def legacy_bundle(directory: Path) -> owned.Owned | None:
    if not any(os.scandir(directory)):
        return owned.Owned("bundle", owned.COMPLETE, frozenset())
    try:
        raw = read_json(directory / "manifest.json", max_bytes=16 << 20)
    except UsageError:
        return None
    if not (
        isinstance(raw, dict)
        and isinstance(raw.get("schema_version"), int)
        and isinstance(raw.get("model"), dict)
        and isinstance(raw.get("components"), dict)
    ):
        return None
    files = {"manifest.json", "tokenizer.json"}
    for comp in raw["components"].values():
        for entry in (comp.get("files") or {}).values() if isinstance(comp, dict) else ():
            for rel in (entry.get("path"), entry.get("data")) if isinstance(entry, dict) else ():
                if isinstance(rel, str) and _GRAPH.fullmatch(rel):
                    files.add(rel)
    return owned.Owned("bundle", owned.COMPLETE, frozenset(f for f in files if (directory / f).is_file()))
