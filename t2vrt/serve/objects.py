"""Store rows -> the API's JSON objects (OpenAI's video object, plus a `t2vrt` member with what the page shows)."""

from __future__ import annotations

from typing import Any

from t2vrt.serve.store import Job


def video_object(job: Job, live: dict[str, Any] | None = None, queue_position: int | None = None) -> dict[str, Any]:
    r = job.params["resolved"]
    frames = (job.result or {}).get("frames", r["frames"])
    error = None
    if job.error is not None:
        error = {"code": job.error.get("code"), "message": job.error.get("message")}
    extra: dict[str, Any] = {"parameters": {k: v for k, v in r.items() if v is not None}}
    if live is not None:
        extra["live"] = live
    if queue_position is not None:
        extra["queue_position"] = queue_position
    if job.result is not None:
        extra["timings"] = job.result.get("timings", {})
        extra["backend"] = job.result.get("backend")
        if "replica" in job.result:  # t2vrt serve --ray: which replica made it (and any lost on the way)
            extra["replica"] = job.result["replica"]
            extra["replicas_lost"] = job.result.get("replicas_lost", [])
    return {
        "id": job.id,
        "object": "video",
        "status": job.status,
        "progress": job.progress,
        "created_at": job.created_at,
        "completed_at": job.completed_at,
        "expires_at": job.expires_at,
        "model": job.model,
        "prompt": job.params["prompt"],
        "seconds": f"{frames / r['fps']:g}",
        "size": f"{r['width']}x{r['height']}",
        "error": error,
        "remixed_from_video_id": job.remixed_from,
        "t2vrt": extra,
    }


def deleted_object(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "object": "video.deleted", "deleted": True}
