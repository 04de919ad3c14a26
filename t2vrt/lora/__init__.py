"""LoRA files users have for ModelScope text-to-video, merged into the UNet before export.

`read_lora(path, cfg, shapes)` reads PEFT / diffusers, the cloneofsimo tensor list (T2V-Turbo), Text-To-Video-
Finetuning stable_lora, sd-webui-text2video and kohya files; `merge_loras` adds their fp32 deltas to a state dict in
the original layout. `parse_lora_spec` and `resolve_lora` turn `--lora SOURCE[:SCALE]` into a local path.
"""

from t2vrt.lora.detect import read_lora
from t2vrt.lora.entries import LoraEntry, LoraFile
from t2vrt.lora.hub import resolve_lora
from t2vrt.lora.merge import MergeReport, merge_into_module, merge_loras
from t2vrt.lora.spec import LoraSpec, parse_lora_spec

__all__ = [
    "LoraEntry",
    "LoraFile",
    "LoraSpec",
    "MergeReport",
    "merge_into_module",
    "merge_loras",
    "parse_lora_spec",
    "read_lora",
    "resolve_lora",
]
