"""The README's picture of the `t2vrt serve` page: headless Chromium (Debian's chromium + chromium-driver, via
Selenium) generates a video with the tiny bundle through the form, starts a second one, and saves docs/serve-page.png
mid-way through it: the progress bar with step and ETA, the first video playing with its parameters, the history.
The tiny model has random weights: its video is coloured noise.
Usage: .venv/bin/python benchmarks/serve_page_screenshot.py [--bundle DIR] [--out docs/serve-page.png]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from t2vrt.serve.process import ServerProcess, wait_for


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs" / "serve-page.png")
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_exe):
        sys.exit("needs chromium and chromedriver: apt-get install chromium chromium-driver")
    with tempfile.TemporaryDirectory(prefix="t2vrt-shot-") as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "tiny"
            subprocess.run(
                [sys.executable, "-m", "t2vrt.cli", "export", "tiny", "--out", str(bundle), "--precision", "fp32"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        opts = Options()
        opts.binary_location = chromium
        for a in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1280,1060",
            "--autoplay-policy=no-user-gesture-required",
            "--hide-scrollbars",
        ):
            opts.add_argument(a)
        with ServerProcess([f"tiny={bundle}"], Path(tmp) / "state") as srv:
            d = webdriver.Chrome(options=opts, service=Service(driver_exe))
            try:
                d.get(srv.url + "/")
                wait_for(lambda: d.execute_script("return document.getElementById('frames').value") == "8", 30)
                status = "return document.getElementById('status').textContent"
                for prompt, steps, seed in (
                    ("a tiny green monster and a big flying UFO", "20", "42"),
                    ("an astronaut riding a horse on the moon", "60", "7"),
                ):
                    for fid, value in (
                        ("prompt", prompt),
                        ("steps", steps),
                        ("seed", seed),
                        ("negative", "text, watermark, blurry"),
                    ):
                        el = d.find_element("id", fid)
                        el.clear()
                        el.send_keys(value)
                    d.find_element("id", "generate").click()
                    wait_for(lambda: not d.execute_script(status).startswith("Done"), 30, 0.02)  # accepted
                    if steps == "20":
                        wait_for(lambda: d.execute_script(status).startswith("Done"), 120, 0.1)
                    else:
                        wait_for(lambda: re.match(r"step (1\d|[2-9]\d)/", d.execute_script(status)), 120, 0.05)
                wait_for(lambda: d.execute_script("return document.getElementById('result').readyState >= 2"), 30)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                d.save_screenshot(str(args.out))
            finally:
                d.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
