"""The API through the real `t2vrt serve` process over loopback HTTP: jobs end to end with SSE progress, the files
they produce, the official openai SDK as a client, errors in OpenAI's shape with the CLI's messages, and delete as
cancel. One server for the module (tiny bundle, --max-upload-mb 1)."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from t2vrt.runtime.video import read_video
from t2vrt.serve.process import ServerProcess, wait_for


def _sse(c: httpx.Client, video_id: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Every `video` event of a job's stream until the server closes it."""
    events = []
    with c.stream("GET", f"/v1/videos/{video_id}/events", timeout=timeout) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "video":
                events.append(json.loads(line[6:]))
    return events


def _state(server: ServerProcess) -> Path:
    return Path(server.args[server.args.index("--state") + 1])


def test_page_and_models(http: httpx.Client) -> None:
    page = http.get("/")
    assert page.status_code == 200 and "<video" in page.text and "/v1/videos" in page.text
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    info = models["data"][0]["t2vrt"]
    assert info["defaults"]["frames"] == 8 and info["fps"] == 8 and info["size_multiple"] == 64
    assert info["video_to_video"] is True and info["image_to_video"] is True  # the tiny bundle has a VAE encoder


def test_a_json_job_streams_progress_and_produces_its_files(
    http: httpx.Client, tiny_bundle: Path, tmp_path: Path
) -> None:
    r = http.post("/v1/videos", json={"prompt": "a red ball", "steps": 6, "seed": 7, "size": "64x64"})
    assert r.status_code == 200, r.text
    v = r.json()
    assert (v["object"], v["status"], v["model"], v["size"], v["seconds"]) == ("video", "queued", "tiny", "64x64", "1")
    assert v["t2vrt"]["parameters"]["seed"] == 7 and v["t2vrt"]["parameters"]["steps"] == 6

    events = _sse(http, v["id"])
    progress = [e["progress"] for e in events]
    assert events[-1]["status"] == "completed" and progress[-1] == 100
    assert progress == sorted(progress) and any(0 < p < 100 for p in progress), progress
    # The stream samples the job 4x a second, so fast steps coalesce: the steps seen rise and never pass the 6 asked.
    steps = [e["t2vrt"]["live"]["step"] for e in events if "live" in e["t2vrt"]]
    assert steps and steps == sorted(steps) and 0 <= steps[0] and steps[-1] <= 6, steps
    assert all(e["t2vrt"]["live"]["steps"] == 6 for e in events if "live" in e["t2vrt"])
    done = http.get(f"/v1/videos/{v['id']}").json()
    assert done["completed_at"] >= done["created_at"] and done["expires_at"] > done["completed_at"]
    assert "openai-poll-after-ms" not in http.get(f"/v1/videos/{v['id']}").headers

    mp4 = http.get(f"/v1/videos/{v['id']}/content")
    assert mp4.status_code == 200 and mp4.headers["content-type"] == "video/mp4" and mp4.content[4:8] == b"ftyp"
    assert b"avc1" in mp4.content[:4096] or b"avcC" in mp4.content  # H.264, what browsers and chat apps play
    (tmp_path / "served.mp4").write_bytes(mp4.content)
    frames = read_video(tmp_path / "served.mp4")
    assert frames.shape == (8, 64, 64, 3)

    # The same request in-process, written by the same encoder, gives the same video: prompt, steps and seed pass
    # through the server unchanged (and another seed gives another video).
    from t2vrt import Pipeline
    from t2vrt.runtime.video import save_video

    with Pipeline.from_bundle(tiny_bundle, backend="onnxruntime-cpu") as pipe:
        for seed in (7, 8):
            save_video(pipe("a red ball", num_inference_steps=6, seed=seed).frames, tmp_path / f"{seed}.mp4", fps=8)
    same = np.abs(frames.astype(np.int16) - read_video(tmp_path / "7.mp4")).mean()
    other = np.abs(frames.astype(np.int16) - read_video(tmp_path / "8.mp4")).mean()
    assert same < 0.5 and other > 20, (same, other)

    thumb = http.get(f"/v1/videos/{v['id']}/content", params={"variant": "thumbnail"})
    sheet = http.get(f"/v1/videos/{v['id']}/content", params={"variant": "spritesheet"})
    from PIL import Image

    assert thumb.headers["content-type"] == "image/png" and Image.open(io.BytesIO(thumb.content)).size == (64, 64)
    assert sheet.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(sheet.content)).size == (192, 192)
    assert http.get(f"/v1/videos/{v['id']}/content", params={"variant": "gif"}).json()["error"]["param"] == "variant"


def test_the_openai_sdk_works_unchanged(shared_server: ServerProcess) -> None:
    import openai

    warnings.simplefilter("ignore", DeprecationWarning)  # the SDK marks its Sora methods deprecated
    client = openai.OpenAI(base_url=shared_server.url + "/v1", api_key="unused-on-loopback", max_retries=0)
    # The SDK's type hints list Sora's seconds and sizes; on the wire both are plain strings.
    video = client.videos.create_and_poll(
        prompt="a paper boat",
        model="tiny",
        seconds="1",
        size="64x64",  # type: ignore[arg-type]
        extra_body={"steps": 3, "seed": 11},
        poll_interval_ms=100,
    )
    assert video.status == "completed" and video.progress == 100 and video.error is None
    data = client.videos.download_content(video.id).read()
    assert data[4:8] == b"ftyp"
    assert client.videos.download_content(video.id, variant="thumbnail").read().startswith(b"\x89PNG")
    assert client.videos.retrieve(video.id).prompt == "a paper boat"
    assert video.id in [v.id for v in client.videos.list(limit=5, order="desc").data]

    # Remix: video-to-video of the finished video with a new prompt (the tiny bundle has a VAE encoder).
    remix = client.videos.remix(video.id, prompt="a paper boat on fire", extra_body={"strength": 0.5, "steps": 4})
    assert remix.remixed_from_video_id == video.id and remix.status == "queued"
    remix = client.videos.poll(remix.id, poll_interval_ms=100)
    assert remix.status == "completed", remix.error
    assert remix.size == video.size and remix.seconds == video.seconds  # the source clip's shape
    assert client.videos.download_content(remix.id).read()[4:8] == b"ftyp"
    # Image-to-video from an uploaded still, as the SDK uploads it (multipart file).
    still = client.videos.create(
        prompt="animate this",
        model="tiny",
        input_reference=("still.png", http_png(), "image/png"),
        extra_body={"steps": 2, "hold_frames": 2},
    )
    still = client.videos.poll(still.id, poll_interval_ms=100)
    assert still.status == "completed", still.error
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(prompt="x", model="tiny", size="720x1280")  # Sora's sizes are not multiples of 64
    assert e.value.body["param"] == "size" and "multiple of 64" in e.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.videos.create(prompt="x", model="tiny", extra_body={"frames": 0})
    assert e.value.body["param"] == "frames"  # type: ignore[index]

    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def http_png() -> bytes:
    import imageio.v3 as iio

    return bytes(iio.imwrite("<bytes>", np.zeros((64, 64, 3), np.uint8), extension=".png", plugin="pillow"))


def test_errors_have_one_shape_and_the_cli_messages(http: httpx.Client, tiny_bundle: Path, tmp_path: Path) -> None:
    from t2vrt.cli import cli

    r = http.post("/v1/videos", data={"prompt": "a cat", "size": "65x64"})  # multipart/urlencoded, as forms send
    body = r.json()
    assert r.status_code == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "size" and body["error"]["type"] == "invalid_request_error"
    cli_run = CliRunner().invoke(
        cli, ["generate", "a cat", "--bundle", str(tiny_bundle), "--width", "65", "-o", str(tmp_path / "x.mp4")]
    )
    assert cli_run.exit_code == 2
    assert cli_run.output.strip().splitlines()[-1] == f"error: {body['error']['message']}"

    for path in (
        "/v1/videos/..%2F..%2Fjobs.sqlite3",
        "/v1/videos/video_" + "0" * 32,
        "/v1/videos/video_" + "0" * 32 + "/content",
        "/v1/videos/%2e%2e/content",
    ):
        r = http.get(path)
        assert r.status_code == 404 and "error" in r.json(), path
    assert http.delete("/v1/videos/../../etc").status_code == 404
    assert http.get("/v1/nothing").json()["error"]["message"].endswith("GET /v1/nothing")
    assert http.post("/v1/videos", content=b"<x/>", headers={"content-type": "text/xml"}).status_code == 415
    assert http.post("/v1/videos", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert http.post("/v1/videos", json={"prompt": "a", "steps": 2, "oops": 1}).json()["error"]["param"] == "oops"
    assert http.get("/v1/videos", params={"limit": 0}).json()["error"]["param"] == "limit"

    script = http.post(
        "/v1/videos", data={"prompt": "a"}, files={"input_reference": ("x.png", b"#!/bin/sh\n", "image/png")}
    )
    assert script.status_code == 415 and script.json()["error"]["param"] == "input_reference"
    big = http.post(
        "/v1/videos",
        data={"prompt": "a"},
        files={"input_reference": ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(1_200_000), "image/png")},
    )
    assert big.status_code == 413  # over --max-upload-mb 1
    huge = http.post("/v1/videos", content=b"{" + b" " * (3 << 20) + b"}", headers={"content-type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"


def test_delete_cancels_running_and_queued_jobs(
    http: httpx.Client, shared_server: ServerProcess, wait_status: Any
) -> None:
    long = http.post("/v1/videos", json={"prompt": "long", "steps": 400}).json()
    queued = http.post("/v1/videos", json={"prompt": "waiting", "steps": 400}).json()
    wait_for(lambda: http.get(f"/v1/videos/{long['id']}").json()["progress"] > 0, 60, what="the long job to start")
    assert http.get(f"/v1/videos/{queued['id']}").json()["t2vrt"]["queue_position"] == 1
    for v in (queued, long):
        d = http.delete(f"/v1/videos/{v['id']}")
        assert d.json() == {"id": v["id"], "object": "video.deleted", "deleted": True}
        assert http.get(f"/v1/videos/{v['id']}").status_code == 404
        assert http.delete(f"/v1/videos/{v['id']}").status_code == 404
    # The worker stopped the long job between two steps and moved on: a new job runs to the end.
    nxt = http.post("/v1/videos", json={"prompt": "next", "steps": 2}).json()
    assert wait_status(http, nxt["id"], ("completed", "failed"), 60)["status"] == "completed"
    state = _state(shared_server)
    assert not list((state / "videos").glob(f"*{long['id']}*")) and not list((state / "uploads").glob(f"{long['id']}*"))


def test_list_pages_in_both_orders(http: httpx.Client) -> None:
    ids = [http.post("/v1/videos", json={"prompt": f"p{i}", "steps": 1}).json()["id"] for i in range(3)]
    newest = http.get("/v1/videos", params={"limit": 2}).json()
    assert [v["id"] for v in newest["data"]] == ids[::-1][:2] and newest["has_more"]
    assert newest["first_id"] == ids[2] and newest["last_id"] == ids[1]
    rest = http.get("/v1/videos", params={"limit": 2, "after": newest["last_id"]}).json()
    assert rest["data"][0]["id"] == ids[0]
    asc = http.get("/v1/videos", params={"limit": 100, "order": "asc"}).json()["data"]
    listed = [v["id"] for v in asc]
    assert listed[-3:] == ids and len(listed) == len(set(listed))


def test_an_uploaded_clip_is_restyled(http: httpx.Client, shared_server: ServerProcess, wait_status: Any) -> None:
    """input_reference as a video (multipart): video-to-video with `strength`; the stored upload has a server name."""
    src = http.post("/v1/videos", json={"prompt": "source", "steps": 2}).json()
    wait_status(http, src["id"], ("completed",), 60)
    clip = http.get(f"/v1/videos/{src['id']}/content").content
    r = http.post(
        "/v1/videos",
        data={"prompt": "restyled", "strength": "0.7", "steps": "4"},
        files={"input_reference": ("../../evil.sh", clip, "application/octet-stream")},
    )
    assert r.status_code == 200, r.text
    v = r.json()
    assert v["t2vrt"]["parameters"]["input"] == "video" and v["t2vrt"]["parameters"]["strength"] == 0.7
    uploads = _state(shared_server) / "uploads"
    assert (uploads / f"{v['id']}.mp4").is_file() and not list(uploads.parent.rglob("evil*"))
    done = wait_status(http, v["id"], ("completed", "failed"), 60)
    assert done["status"] == "completed", done["error"]
