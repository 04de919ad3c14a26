"""In-process checks of the serve building blocks: the job store's transitions, uploads by content, request
parsing with the CLI's messages, state paths, config rules. The server itself is tested as a process elsewhere."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from t2vrt.errors import UsageError
from t2vrt.serve.errors import ApiError
from t2vrt.serve.files import StateDir
from t2vrt.serve.ids import is_job_id, new_id
from t2vrt.serve.store import JobStore, QueueFull
from t2vrt.serve.uploads import check_upload, from_reference, sniff


def _params(prompt: str = "p") -> dict[str, Any]:
    return {
        "prompt": prompt,
        "given": {},
        "resolved": {"frames": 8, "fps": 8, "width": 64, "height": 64, "steps": 2},
        "input": None,
    }


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def test_store_is_wal_and_runs_jobs_in_submission_order(store: JobStore, tmp_path: Path) -> None:
    import sqlite3

    mode = sqlite3.connect(tmp_path / "jobs.sqlite3").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    ids = [new_id() for _ in range(3)]
    for i in ids:
        store.create(i, "tiny", _params(), max_active=10)
    claimed = [store.claim_next() for _ in range(3)]
    assert [j.id for j in claimed if j] == ids
    assert all(j is not None and j.status == "in_progress" and j.attempts == 1 for j in claimed)
    assert store.claim_next() is None


def test_store_bounds_the_queue_under_concurrent_submits(store: JobStore) -> None:
    accepted, refused = [], []

    def submit() -> None:
        try:
            accepted.append(store.create(new_id(), "tiny", _params(), max_active=5).id)
        except QueueFull:
            refused.append(1)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 5 and len(refused) == 15
    assert store.active_count() == 5


def test_store_recovers_a_running_job_once_then_fails_it(store: JobStore) -> None:
    jid = new_id()
    store.create(jid, "tiny", _params(), max_active=10)
    store.claim_next()  # attempt 1, then the process "dies"
    assert store.recover(ttl=60) == {"requeued": [jid], "failed": [], "deleted": []}
    job = store.get(jid)
    assert job is not None and job.status == "queued"
    store.claim_next()  # attempt 2 dies too
    out = store.recover(ttl=60)
    assert out["failed"] == [jid]
    job = store.get(jid)
    assert job is not None and job.status == "failed" and job.error is not None
    assert job.error["code"] == "interrupted" and "2 times" in job.error["message"]
    assert job.expires_at is not None


def test_store_requeue_on_drain_does_not_spend_an_attempt(store: JobStore) -> None:
    jid = new_id()
    store.create(jid, "tiny", _params(), max_active=10)
    store.claim_next()
    store.requeue(jid)
    job = store.get(jid)
    assert job is not None and (job.status, job.attempts, job.progress) == ("queued", 0, 0)


def test_store_delete_marks_a_running_job_and_removes_others(store: JobStore) -> None:
    running, queued = new_id(), new_id()
    store.create(running, "tiny", _params(), max_active=10)
    store.create(queued, "tiny", _params(), max_active=10)
    store.claim_next()
    assert store.delete(running).status == "in_progress"  # type: ignore[union-attr]
    assert store.get(running) is None and store.is_deleted(running)
    assert store.delete(queued).status == "queued"  # type: ignore[union-attr]
    assert store.delete(queued) is None
    assert store.recover(ttl=None)["deleted"] == [running]  # a crash before the worker purged it


def test_store_pages_and_expires(store: JobStore) -> None:
    ids = [new_id() for _ in range(5)]
    for i in ids:
        store.create(i, "tiny", _params(), max_active=10)
    first, more = store.page(2, order="asc")
    assert [j.id for j in first] == ids[:2] and more
    rest, more = store.page(10, after=ids[1], order="asc")
    assert [j.id for j in rest] == ids[2:] and not more
    desc, _ = store.page(2, order="desc")
    assert [j.id for j in desc] == ids[::-1][:2]
    with pytest.raises(KeyError):
        store.page(2, after=new_id())
    job = store.claim_next()
    assert job is not None
    store.complete(job.id, {"frames": 8}, ttl=10)
    assert store.expire(at=job.created_at + 5) == []
    assert store.expire(at=job.created_at + 100) == [job.id]
    assert store.get(job.id) is None


def test_ids_cannot_address_files() -> None:
    assert is_job_id(new_id())
    for bad in ("../jobs.sqlite3", "video_../../x", "video_" + "0" * 31, "video_" + "G" * 32, "", "video_" + "a" * 33):
        assert not is_job_id(bad)


def test_state_dir_paths_come_from_ids_only(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    with pytest.raises(ValueError):
        state.result_dir("../../etc")
    with pytest.raises(ValueError):
        state.upload_path(new_id(), ".py")
    jid = new_id()
    p = state.write_upload(jid, b"\x89PNG\r\n\x1a\n....", ".png")
    assert p.parent == state.root / "uploads" and p.read_bytes().startswith(b"\x89PNG")
    (state.root / "uploads" / f"{new_id()}.png").write_bytes(b"orphan")
    (state.root / "videos" / f".{jid}.partial").mkdir()
    assert state.sweep({jid}) == 2  # the orphan upload and the partial result go; the known upload stays
    assert p.exists()


def _png(w: int = 8, h: int = 8) -> bytes:
    import imageio.v3 as iio

    return bytes(iio.imwrite("<bytes>", np.zeros((h, w, 3), np.uint8), extension=".png", plugin="pillow"))


def test_uploads_are_judged_by_content() -> None:
    assert sniff(_png()) == ("image", ".png")
    assert sniff(b"\xff\xd8\xff\xe0" + b"0" * 20) == ("image", ".jpg")
    assert sniff(b"GIF89a" + b"0" * 20) == ("video", ".gif")
    assert sniff(b"\x1a\x45\xdf\xa3" + b"0" * 20) == ("video", ".webm")
    assert sniff(b"\x00\x00\x00\x20ftypisom" + b"0" * 20) == ("video", ".mp4")
    assert sniff(b"#!/bin/sh\nrm -rf /\n") is None
    with pytest.raises(ApiError) as e:
        check_upload(b"<?php system($_GET['c']); ?>", 1000)
    assert e.value.status == 415 and e.value.param == "input_reference"
    with pytest.raises(ApiError) as e:
        check_upload(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 1000)  # a PNG signature on garbage
    assert e.value.status == 400 and "not a readable image" in e.value.message
    with pytest.raises(ApiError) as e:
        check_upload(_png(), 10)
    assert e.value.status == 413
    assert check_upload(_png(), 10_000).kind == "image"


def test_reference_objects_take_data_urls_and_never_fetch() -> None:
    url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert from_reference({"image_url": url}, 10_000).ext == ".png"
    assert from_reference(url, 10_000).kind == "image"
    for bad in ({"image_url": "http://169.254.169.254/latest"}, {"file_id": "file_1"}, "data:image/png,raw", 7):
        with pytest.raises(ApiError) as e:
            from_reference(bad, 10_000)
        assert e.value.status == 400 and e.value.param == "input_reference"


class FakeExecutor:
    """The real validation (resolve_options over a real manifest) with no engines: models() and validate() only."""

    def __init__(self, bundle: Path, accepts: frozenset[str] = frozenset()) -> None:
        from t2vrt.manifest import load_manifest
        from t2vrt.runtime import samplers
        from t2vrt.runtime.options import resolve_options
        from t2vrt.serve.executor import ModelInfo

        self.manifest = load_manifest(bundle)
        self.info = ModelInfo(
            "tiny", str(bundle), resolve_options(self.manifest, ""), 8, 64, tuple(samplers.SAMPLERS), accepts
        )

    def models(self) -> dict[str, Any]:
        return {"tiny": self.info}

    def validate(self, model: str, prompt: str, **given: Any) -> Any:
        from t2vrt.runtime.options import resolve_options
        from t2vrt.serve.executor import V2V_KWARGS, pipeline_kwargs

        kw = {k: v for k, v in pipeline_kwargs(given).items() if k not in V2V_KWARGS}
        return resolve_options(self.manifest, prompt, **kw)

    def run(self, job: dict[str, Any], out_dir: Path, on_step: Any) -> dict[str, Any]:
        raise AssertionError("request parsing never runs a job")

    def close(self) -> None:
        pass


def test_params_use_the_cli_messages_and_name_the_field(tiny_bundle: Path) -> None:
    from t2vrt.runtime.options import resolve_options
    from t2vrt.serve.params import parse_request

    ex = FakeExecutor(tiny_bundle)
    req = parse_request({"prompt": "a cat", "seconds": "2", "size": "128x64", "steps": "3", "guidance": "1"}, ex, 100)
    assert (req.resolved["frames"], req.resolved["width"], req.resolved["height"]) == (16, 128, 64)
    assert req.given["steps"] == 3 and 0 <= req.resolved["seed"] < 2**32  # a random seed, recorded

    cases = {
        ("size", "65x64"): "width",
        ("steps", "0"): "steps",
        ("guidance", "0.5"): "guidance",
        ("sampler", "euler"): "scheduler",
        ("frames", "2000"): "frames",
        ("seed", "-1"): "seed",
    }
    cli_names = {
        "width": "width",
        "steps": "num_inference_steps",
        "guidance": "guidance_scale",
        "scheduler": "scheduler",
        "frames": "num_frames",
        "seed": "seed",
    }
    for (field, value), cli_field in cases.items():
        with pytest.raises(ApiError) as e:
            parse_request({"prompt": "a cat", field: value}, ex, 100)
        typed: Any = {
            "width": 65,
            "num_inference_steps": 0,
            "guidance_scale": 0.5,
            "scheduler": "euler",
            "num_frames": 2000,
            "seed": -1,
        }[cli_names[cli_field]]
        with pytest.raises(UsageError) as cli:
            resolve_options(ex.manifest, "a cat", **{cli_names[cli_field]: typed})
        assert e.value.status == 400 and e.value.message == str(cli.value)
        assert e.value.param == field
    for fields, param in (
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 101}, "prompt"),
        ({"prompt": "a", "steps": "many"}, "steps"),
        ({"prompt": "a", "seconds": "0"}, "seconds"),
        ({"prompt": "a", "size": "big"}, "size"),
        ({"prompt": "a", "model": "sora-2"}, "model"),
        ({"prompt": "a", "colour": "red"}, "colour"),
        ({"prompt": "a", "strength": "0.5"}, "strength"),
        ({"prompt": "a", "steps": True}, "steps"),
    ):
        with pytest.raises(ApiError) as e:
            parse_request(fields, ex, 100)
        assert e.value.status == 400 and e.value.param == param, (fields, e.value.message)


def test_params_refuse_input_reference_where_the_pipeline_cannot(tiny_bundle: Path) -> None:
    from t2vrt.serve.params import parse_request
    from t2vrt.serve.uploads import Upload

    clip = Upload(b"", "video", ".mp4")
    with pytest.raises(ApiError) as e:
        parse_request({"prompt": "a"}, FakeExecutor(tiny_bundle), 100, upload=clip)
    assert e.value.param == "input_reference" and "init_video" in e.value.message
    able = FakeExecutor(tiny_bundle, frozenset({"init_video", "strength"}))
    req = parse_request({"prompt": "a", "strength": "0.6"}, able, 100, upload=clip)
    assert req.given["strength"] == 0.6 and req.resolved["input"] == "video"
    with pytest.raises(ApiError) as e:
        parse_request({"prompt": "a", "strength": "1.5"}, able, 100, upload=clip)
    assert e.value.param == "strength"


def test_config_requires_a_key_off_loopback() -> None:
    from t2vrt.commands.serve import parse_age, parse_bundles
    from t2vrt.serve.server import ServeConfig, check_config, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    with pytest.raises(UsageError, match="API key"):
        check_config(ServeConfig(bundles={}, host="0.0.0.0"))
    check_config(ServeConfig(bundles={}, host="0.0.0.0", api_key="k" * 20))
    with pytest.raises(UsageError, match="at least 16"):
        check_config(ServeConfig(bundles={}, api_key="short"))
    assert parse_age("7d") == 7 * 86400 and parse_age("90s") == 90 and parse_age("never") is None
    with pytest.raises(UsageError):
        parse_age("soon")
    with pytest.raises(UsageError, match="not a directory"):
        parse_bundles(("/nonexistent/bundle",))


def test_spritesheet_tiles_frames_in_order() -> None:
    from t2vrt.serve.executor import _spritesheet

    frames = np.stack([np.full((2, 2, 3), i, np.uint8) for i in range(5)])
    sheet = _spritesheet(frames)
    assert sheet.shape == (2 * 2, 3 * 2, 3)  # 5 frames -> 3 columns (ceil sqrt) x 2 rows, the last cell black
    assert [sheet[0, 0, 0], sheet[0, 2, 0], sheet[0, 4, 0], sheet[2, 0, 0], sheet[2, 2, 0]] == [0, 1, 2, 3, 4]
    assert not sheet[2:, 4:].any()
