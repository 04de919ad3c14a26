"""What `t2vrt serve --ray` is asked for, checked before Ray is imported (this module never imports Ray)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from t2vrt.errors import UsageError

APP_NAME = "t2vrt"
_REPLICAS = re.compile(r"(\d+)(?:\s*[:-]\s*(\d+))?")


@dataclass(frozen=True)
class RayOptions:
    # None: what ray.init() does with no address (RAY_ADDRESS, else the cluster `ray start` made on this machine,
    # else a new local one owned by this process); "auto": an existing cluster only; "HOST:PORT" / "ray://...".
    address: str | None = None
    replicas: int = 1  # a fixed count, or the lower bound when max_replicas is set
    max_replicas: int | None = None  # autoscaling between replicas..max_replicas
    gpus_per_replica: float = 1.0
    cpus_per_replica: float = 1.0  # also the ONNX Runtime CPU threads of a replica that runs on the CPU
    models_per_replica: int | None = None  # bundles one replica keeps loaded (LRU); None: all of them
    build_engines: bool = False  # a replica runs `t2vrt build` for its own GPU when the bundle has no engines
    app_name: str = APP_NAME

    @property
    def slots(self) -> int:
        """Jobs the server hands to Ray at once: one per replica it may have (the rest wait in the store)."""
        return self.max_replicas if self.max_replicas is not None else self.replicas

    def replica_count(self) -> dict[str, Any]:
        """`num_replicas` or `autoscaling_config`, as Deployment.options() takes them."""
        if self.max_replicas is None:
            return {"num_replicas": self.replicas}
        # target 1 ongoing request: one more replica for every job waiting, up to max; down after a quiet minute
        # (one replica starts warm even when the lower bound is 0)
        return {
            "autoscaling_config": {
                "min_replicas": self.replicas,
                "max_replicas": self.max_replicas,
                "initial_replicas": max(1, self.replicas),
                "target_ongoing_requests": 1.0,
                "upscale_delay_s": 5.0,
                "downscale_delay_s": 60.0,
            }
        }

    def actor_options(self) -> dict[str, Any]:
        return {"num_gpus": self.gpus_per_replica, "num_cpus": self.cpus_per_replica}


def parse_replicas(text: str) -> tuple[int, int | None]:
    """'2' -> (2, None) a fixed count; '1:4' (or '1-4') -> (1, 4) autoscaling between the bounds."""
    m = _REPLICAS.fullmatch(text.strip())
    if not m:
        raise UsageError(f"--replicas must be a count like 2 or bounds like 1:4, got {text!r}")
    low, high = int(m.group(1)), (int(m.group(2)) if m.group(2) is not None else None)
    if high is None and low < 1:
        raise UsageError(f"--replicas must be at least 1, got {low} (use bounds like 0:4 to scale to zero)")
    if high is not None and not (0 <= low <= high and high >= 1):
        raise UsageError(f"--replicas {text}: bounds must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def check_ray_options(o: RayOptions) -> None:
    if o.gpus_per_replica < 0:
        raise UsageError(f"--replica-gpus must be >= 0, got {o.gpus_per_replica:g}")
    if o.cpus_per_replica <= 0:
        raise UsageError(f"--replica-cpus must be > 0, got {o.cpus_per_replica:g}")
    if o.models_per_replica is not None and o.models_per_replica < 1:
        raise UsageError(f"--models-per-replica must be >= 1, got {o.models_per_replica}")
    if o.address is not None and not o.address.strip():
        raise UsageError("--ray ADDRESS must not be empty (omit it to use RAY_ADDRESS or start a local cluster)")


def models_per_replica(o: RayOptions, bundles: int) -> int:
    """Any number of bundles share the replicas (model multiplexing); each replica keeps this many loaded."""
    return min(o.models_per_replica, bundles) if o.models_per_replica is not None else bundles
