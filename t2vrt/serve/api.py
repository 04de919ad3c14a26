"""The HTTP API: OpenAI's Videos API shape over the job store, /v1/models, SSE progress, and the page at `/`.

Handlers that touch the store are plain `def`s (FastAPI runs them in its thread pool); the ones that read a request
body are `async` and hand the store work to the pool. Every error is `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from t2vrt.serve.errors import ApiError, error_body, not_found
from t2vrt.serve.executor import Executor
from t2vrt.serve.files import VARIANTS, StateDir
from t2vrt.serve.ids import is_job_id, new_id
from t2vrt.serve.limits import TooLarge
from t2vrt.serve.objects import deleted_object, video_object
from t2vrt.serve.params import JobRequest, parse_request
from t2vrt.serve.pool import Workers
from t2vrt.serve.store import Job, JobStore, QueueFull
from t2vrt.serve.uploads import Upload, check_upload, from_reference
from t2vrt.serve.worker import Live


@dataclass
class Services:
    store: JobStore
    state: StateDir
    executor: Executor
    worker: Workers  # one Worker, or a WorkerPool (t2vrt serve --ray)
    live: Live
    max_queue: int = 64
    max_upload_bytes: int = 64 << 20
    max_prompt_chars: int = 2000
    poll_after_ms: int = 500
    closing: threading.Event = field(default_factory=threading.Event)


def _err(
    status: int, message: str, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return _err(e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(TooLarge)
    async def too_large(_: Request, e: TooLarge) -> JSONResponse:
        return _err(413, str(e), code="request_too_large")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = str(e.detail)
        if e.status_code in (404, 405):
            message = f"{message}: {request.method} {request.url.path}"
        return _err(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        param = str(first.get("loc", ["", "?"])[-1])
        return _err(400, f"{param}: {first.get('msg', 'invalid value')}", param=param)


async def _read_body(request: Request, max_upload: int) -> tuple[dict[str, Any], Upload | None]:
    """Multipart (as the official SDK sends), urlencoded or JSON -> (fields, upload)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload: Upload | None = None
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=1, max_fields=64)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "input_reference":
                    raise ApiError(400, f"unexpected file field {key!r}; the only file is input_reference", param=key)
                upload = check_upload(await value.read(max_upload + 1), max_upload)
            elif key == "input_reference[image_url]":
                upload = from_reference(value, max_upload)
            elif key in fields:
                raise ApiError(400, f"field {key!r} given twice", param=key)
            else:
                fields[key] = value
        await form.close()
        return fields, upload
    if ctype in ("application/json", ""):
        raw = await request.body()
        try:
            body = json.loads(raw or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object")
        if body.get("input_reference") is not None:
            upload = from_reference(body["input_reference"], max_upload)
        return body, upload
    raise ApiError(415, f"Content-Type {ctype!r} not supported: send multipart/form-data or application/json")


def create_app(svc: Services) -> FastAPI:
    app = FastAPI(title="t2vrt serve", docs_url=None, redoc_url=None, openapi_url=None)
    _install_errors(app)

    def job_or_404(video_id: str) -> Job:
        job = svc.store.get(video_id) if is_job_id(video_id) else None
        if job is None:
            raise not_found(video_id)
        return job

    def obj(job: Job) -> dict[str, Any]:
        pos = svc.store.ahead_of(job) if job.status == "queued" else None
        return video_object(job, svc.live.get(job.id), pos)

    def enqueue(req: JobRequest, upload: Upload | None, source: Job | None = None) -> dict[str, Any]:
        job_id = new_id()
        params: dict[str, Any] = {"prompt": req.prompt, "given": req.given, "resolved": req.resolved, "input": None}
        try:
            if upload is not None:
                path = svc.state.write_upload(job_id, upload.data, upload.ext)
                params["input"] = {"file": str(path.relative_to(svc.state.root)), "kind": upload.kind}
            elif source is not None:
                path = svc.state.copy_upload(job_id, svc.state.result_file(source.id, "video"), ".mp4")
                params["input"] = {"file": str(path.relative_to(svc.state.root)), "kind": "video"}
            job = svc.store.create(job_id, req.model, params, svc.max_queue, remixed_from=source.id if source else None)
        except QueueFull as e:
            svc.state.remove(job_id)
            wait = svc.live.retry_after(e.active)
            raise ApiError(
                429,
                f"the queue is full ({e.active} jobs queued or running, limit {svc.max_queue}); retry in {wait} s",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            ) from None
        except BaseException:
            svc.state.remove(job_id)
            raise
        svc.worker.notify()
        return obj(job)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        html = resources.files("t2vrt.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "draining" if svc.closing.is_set() else "ok", "worker": svc.worker.alive}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [m.to_api() for m in svc.executor.models().values()]}

    @app.post("/v1/videos")
    async def create(request: Request) -> JSONResponse:
        if svc.closing.is_set():
            raise ApiError(
                503, "the server is shutting down; retry shortly", code="shutting_down", headers={"Retry-After": "5"}
            )
        fields, upload = await _read_body(request, svc.max_upload_bytes)
        req = parse_request(fields, svc.executor, svc.max_prompt_chars, upload=upload)
        return JSONResponse(await run_in_threadpool(enqueue, req, upload))

    @app.get("/v1/videos")
    def list_videos(limit: int = 20, after: str | None = None, order: str = "desc") -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise ApiError(400, f"limit must be in 1..100, got {limit}", param="limit")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order must be asc or desc, got {order!r}", param="order")
        try:
            jobs, more = svc.store.page(limit, after if after else None, order)
        except KeyError:
            raise ApiError(400, f"after: no video with id {after!r}", param="after") from None
        data = [obj(j) for j in jobs]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    @app.get("/v1/videos/{video_id}")
    def retrieve(video_id: str) -> JSONResponse:
        job = job_or_404(video_id)
        headers = {} if job.status in ("completed", "failed") else {"openai-poll-after-ms": str(svc.poll_after_ms)}
        return JSONResponse(obj(job), headers=headers)

    @app.get("/v1/videos/{video_id}/content")
    def content(video_id: str, variant: str = "video") -> FileResponse:
        if variant not in VARIANTS:
            raise ApiError(400, f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}", param="variant")
        job = job_or_404(video_id)
        if job.status != "completed":
            raise ApiError(
                404,
                f"video {video_id} is {job.status}; its content exists once it is completed",
                param="video_id",
                code="video_not_ready",
            )
        path = svc.state.result_file(job.id, variant)
        if not path.is_file():
            raise ApiError(404, f"video {video_id} has no {variant} file", param="variant")
        name, mime = VARIANTS[variant]
        return FileResponse(
            path, media_type=mime, filename=f"{job.id}{name[name.index('.') :]}", content_disposition_type="inline"
        )

    @app.delete("/v1/videos/{video_id}")
    def delete(video_id: str) -> dict[str, Any]:
        if not is_job_id(video_id):
            raise not_found(video_id)
        job = svc.store.delete(video_id)
        if job is None:
            raise not_found(video_id)
        if job.status == "in_progress":
            svc.worker.cancel(video_id)  # the worker removes its files when it stops
        else:
            svc.state.remove(video_id)
        return deleted_object(video_id)

    @app.post("/v1/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request) -> JSONResponse:
        source = await run_in_threadpool(job_or_404, video_id)
        if source.status != "completed":
            raise ApiError(
                400, f"video {video_id} is {source.status}; only a completed video can be remixed", param="video_id"
            )
        fields, upload = await _read_body(request, svc.max_upload_bytes)
        if upload is not None:
            raise ApiError(
                400, "a remix takes no input_reference: its input is the video being remixed", param="input_reference"
            )
        of = {"model": source.model, "given": source.params["given"], "resolved": source.params["resolved"]}
        req = parse_request(fields, svc.executor, svc.max_prompt_chars, remix_of=of)
        return JSONResponse(await run_in_threadpool(enqueue, req, None, source))

    @app.get("/v1/videos/{video_id}/events")
    async def events(video_id: str) -> StreamingResponse:
        """Server-Sent Events: the video object when it has changed (sampled every 0.25 s, so steps that pass faster are
        coalesced), until it is completed, failed or deleted; the last event is always the final state."""
        await run_in_threadpool(job_or_404, video_id)

        async def stream() -> AsyncIterator[str]:
            last, quiet = "", 0.0
            while not svc.closing.is_set():
                job = await run_in_threadpool(svc.store.get, video_id)
                if job is None:
                    yield f"event: deleted\ndata: {json.dumps(deleted_object(video_id))}\n\n"
                    return
                data = json.dumps(await run_in_threadpool(obj, job))
                if data != last:
                    yield f"event: video\ndata: {data}\n\n"
                    last, quiet = data, 0.0
                elif quiet >= 15.0:
                    yield ": keep-alive\n\n"
                    quiet = 0.0
                if job.status in ("completed", "failed"):
                    return
                await asyncio.sleep(0.25)
                quiet += 0.25

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    return app
