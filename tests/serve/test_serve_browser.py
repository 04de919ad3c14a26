"""The page in a real browser: Debian's headless Chromium driven by Selenium against the real server. Submit from the
form, watch the progress bar and the step/ETA line advance, see the <video> decode and play the H.264 mp4 (frames
presented, time advancing), the parameters and download link, a history that survives a reload, and Cancel.

Needs `chromium` and `chromium-driver` (Debian packages; .ci/run installs them). Without them the test is skipped
and says so."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from t2vrt.serve.process import wait_for

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs Debian's chromium + chromium-driver (apt-get install chromium chromium-driver)",
)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM  # type: ignore[assignment]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-gpu",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def _set(driver: Any, element_id: str, value: str) -> None:
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(value)


def test_the_page_generates_shows_progress_plays_and_remembers(start_server: Any, browser: Any) -> None:
    srv = start_server()
    browser.get(srv.url + "/")
    wait_for(
        lambda: _js(browser, "return document.getElementById('frames').value") == "8",
        30,
        what="the model defaults in the form",
    )
    assert _js(browser, "return [...document.getElementById('model').options].map(o => o.value)") == ["tiny"]

    _set(browser, "prompt", "a lighthouse at night")
    _set(browser, "steps", "40")
    _set(browser, "seed", "5")
    browser.find_element("id", "generate").click()

    seen_progress: set[int] = set()
    lines: list[str] = []
    end = time.monotonic() + 120
    while time.monotonic() < end:
        p, line = _js(
            browser,
            "return [document.getElementById('bar').dataset.progress, document.getElementById('status').textContent]",
        )
        if p is not None:
            seen_progress.add(int(p))
        lines.append(line)
        if line.startswith(("Done", "Failed")):
            break
        time.sleep(0.05)
    assert lines[-1].startswith("Done"), lines[-5:]
    steps = [int(m.group(1)) for m in (re.match(r"step (\d+)/40", s) for s in lines) if m]
    assert len(set(steps)) >= 3 and steps == sorted(steps), sorted(set(steps))  # the bar moved step by step
    assert any("ETA" in s for s in lines)
    assert len({p for p in seen_progress if 0 < p < 100}) >= 3 and 100 in seen_progress

    # The result plays inline: decoded (videoWidth), no media error, frames presented and time advancing (looping).
    codec = _js(browser, "return document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.42E01E\"')")
    assert codec in ("probably", "maybe"), f"this Chromium cannot play H.264 ({codec!r})"
    wait_for(
        lambda: _js(browser, "const v = document.getElementById('result'); return v.readyState >= 2 && !v.paused"),
        30,
        what="the video to start playing",
    )
    state = _js(
        browser,
        "const v = document.getElementById('result'); return {w: v.videoWidth, h: v.videoHeight, "
        "err: v.error && v.error.code, loop: v.loop, frames: v.getVideoPlaybackQuality().totalVideoFrames,"
        " t: v.currentTime}",
    )
    assert (state["w"], state["h"], state["err"], state["loop"]) == (64, 64, None, True)
    time.sleep(1.5)
    later = _js(
        browser,
        "const v = document.getElementById('result'); "
        "return {frames: v.getVideoPlaybackQuality().totalVideoFrames, t: v.currentTime}",
    )
    assert later["frames"] > state["frames"] and later["t"] != state["t"], (state, later)

    params = _js(browser, "return [...document.querySelectorAll('#params tr')].map(r => r.innerText)")
    assert any(p.startswith("seed") and p.endswith("5") for p in params), params
    assert any("40 (ddim)" in p for p in params), params
    href = browser.find_element("id", "download").get_attribute("href")
    video_id = re.search(r"/v1/videos/(video_[0-9a-f]{32})/content", href).group(1)  # type: ignore[union-attr]
    assert httpx.get(href).content[4:8] == b"ftyp"

    # History comes from the store: still there after a reload, with its thumbnail.
    browser.refresh()
    wait_for(
        lambda: _js(browser, f"return !!document.querySelector('.item[data-id=\"{video_id}\"] img')"),
        30,
        what="the job in the history after a reload",
    )
    wait_for(
        lambda: _js(browser, f"return document.querySelector('.item[data-id=\"{video_id}\"] img').naturalWidth"),
        30,
        what="the history thumbnail",
    )
    browser.find_element("css selector", f'.item[data-id="{video_id}"]').click()
    wait_for(
        lambda: _js(browser, "const v = document.getElementById('result'); return v.readyState >= 2"),
        30,
        what="the history entry's video",
    )

    # Cancel stops a running job: it disappears from the API and the form is ready again.
    _set(browser, "prompt", "a long one")
    _set(browser, "steps", "400")
    browser.find_element("id", "generate").click()
    wait_for(
        lambda: _js(browser, "return document.getElementById('status').textContent.startsWith('step')"),
        60,
        what="the second job to run",
    )
    newest = httpx.get(srv.url + "/v1/videos", params={"limit": 1}).json()["data"][0]
    assert newest["status"] == "in_progress" and newest["t2vrt"]["parameters"]["steps"] == 400
    browser.find_element("id", "cancel").click()
    wait_for(
        lambda: _js(browser, "return document.getElementById('status').textContent") == "Cancelled.",
        30,
        what="the page to say Cancelled",
    )
    assert httpx.get(f"{srv.url}/v1/videos/{newest['id']}").status_code == 404
    assert _js(browser, "return document.getElementById('generate').disabled") is False
