"""The zeroscope workflow's second stage as one command on the tiny model: a clip t2vrt generated upscales with its
recorded prompt; continuation from the CLI; and the commands' one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.runtime.clip import read_clip
from t2vrt.runtime.metadata import read_metadata
from t2vrt.runtime.video import read_video, save_video

PROMPT = "a red panda playing an electric guitar"


@pytest.fixture(scope="module")
def clip(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clips") / "panda.mp4"
    r = CliRunner().invoke(
        cli,
        [
            "generate",
            PROMPT,
            "--bundle",
            str(tiny_bundle),
            "-o",
            str(out),
            "--frames",
            "4",
            "--steps",
            "3",
            "--negative",
            "blurry",
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    return out


def test_a_generated_clip_upscales_with_one_command(tiny_bundle: Path, clip: Path) -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "t2vrt.cli",
            "upscale",
            str(clip),
            "--bundle",
            str(tiny_bundle),
            "--size",
            "128x64",
            "--steps",
            "5",
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    out = clip.with_name("panda_upscaled.mp4")
    assert f"wrote {out}" in p.stdout and "strength 0.7, 3 of 5 steps" in p.stdout, p.stdout
    assert PROMPT in p.stderr  # said which prompt it reused
    c = read_clip(out)
    assert c.frames.shape == (4, 64, 128, 3)
    rec = c.metadata
    assert rec is not None and rec["prompt"] == PROMPT and rec["negative_prompt"] == "blurry"
    assert rec["init"]["kind"] == "video" and rec["init"]["source"] == "panda.mp4" and rec["init"]["strength"] == 0.7
    assert rec["init"]["source_prompt"] == PROMPT


def test_upscale_options_and_errors(tiny_bundle: Path, clip: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke
    out = tmp_path / "up.gif"
    r = run(
        cli,
        [
            "upscale",
            str(clip),
            "-b",
            str(tiny_bundle),
            "-o",
            str(out),
            "--size",
            "64x128",
            "--frames",
            "2",
            "--start-frame",
            "1",
            "--strength",
            "0.5",
            "--steps",
            "4",
            "--prompt",
            "another prompt",
            "--posterior-noise",
            "mean",
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert read_video(out).shape == (2, 128, 64, 3) and read_metadata(out)["prompt"] == "another prompt"
    plain = tmp_path / "plain.mp4"
    save_video(np.zeros((4, 64, 64, 3), np.uint8), plain)  # no t2vrt record
    cases = [
        (["upscale", str(plain), "-b", str(tiny_bundle), "--size", "64x64"], "carries no t2vrt record of its prompt"),
        (
            ["upscale", str(clip), "-b", str(tiny_bundle), "--size", "100x64", "-o", str(tmp_path / "a.mp4")],
            "width must be a positive multiple of 64",
        ),
        (["upscale", str(clip), "-b", str(tiny_bundle), "--size", "big"], "expected WIDTHxHEIGHT"),
        (["upscale", str(clip), "-b", str(tiny_bundle), "--strength", "0"], r"strength must be a number in (0, 1]"),
        (
            ["upscale", str(clip), "-b", str(tiny_bundle), "--frames", "9", "-o", str(tmp_path / "b.mp4")],
            "has only 4 frames from frame 0; 9 are needed",
        ),
        (["upscale", str(tmp_path / "none.mp4"), "-b", str(tiny_bundle)], "no such clip"),
        (
            ["extend", str(clip), "-b", str(tiny_bundle), "--overlap", "8", "--frames", "8"],
            "overlap must be an integer in 1..7",
        ),
        (
            ["generate", "x", "-b", str(tiny_bundle), "--strength", "0.5", "-o", str(tmp_path / "c.mp4")],
            "only with an init video or an init image",
        ),
        (
            [
                "generate",
                "x",
                "-b",
                str(tiny_bundle),
                "--init-video",
                str(clip),
                "--posterior-noise",
                "x.txt",
                "-o",
                str(tmp_path / "d.mp4"),
            ],
            "must be 'mean' or a .npy",
        ),
    ]
    for args, message in cases:
        r = run(cli, [*args, "--backend", "onnxruntime-cpu", "-q"])
        assert r.exit_code == 2, (args, r.output)
        assert r.output.startswith("error: ") and message in r.output and r.output.count("\n") == 1, r.output


def test_generate_from_a_clip_and_from_an_image(tiny_bundle: Path, clip: Path, tmp_path: Path) -> None:
    import imageio.v3 as iio

    run = CliRunner().invoke
    out = tmp_path / "vid2vid_stage.mp4"
    r = run(
        cli,
        [
            "generate",
            "a blue whale",
            "-b",
            str(tiny_bundle),
            "-o",
            str(out),
            "--init-video",
            str(clip),
            "--frames",
            "3",
            "--start-frame",
            "1",
            "--steps",
            "5",
            "--strength",
            "0.6",
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "video-to-video from panda.mp4 (frame 1 on): strength 0.6, 3 of 5 steps" in r.output
    assert read_video(out).shape == (3, 64, 64, 3)
    image = tmp_path / "still.png"
    iio.imwrite(image, read_video(clip)[0])
    out = tmp_path / "i2v.mp4"
    r = run(
        cli,
        [
            "generate",
            "a blue whale",
            "-b",
            str(tiny_bundle),
            "-o",
            str(out),
            "--init-image",
            str(image),
            "--hold-frames",
            "2",
            "--frames",
            "4",
            "--steps",
            "3",
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "image-to-video from still.png: 2 held frame(s)" in r.output
    assert read_metadata(out)["init"]["hold_frames"] == 2


def test_extend_from_the_command_line(tiny_bundle: Path, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "long.mp4"
    r = CliRunner().invoke(
        cli,
        [
            "extend",
            str(clip),
            "-b",
            str(tiny_bundle),
            "--overlap",
            "2",
            "--windows",
            "2",
            "--frames",
            "4",
            "--steps",
            "2",
            "-o",
            str(out),
            "--backend",
            "onnxruntime-cpu",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    frames = read_video(out)
    assert frames.shape == (4 + 2 * 2, 64, 64, 3)
    source = read_video(clip)
    assert np.abs(frames[:4].astype(int) - source.astype(int)).mean() < 4  # the clip itself, re-encoded once
    rec = read_metadata(out)
    assert rec["prompt"] == PROMPT and rec["init"]["kind"] == "continuation" and rec["init"]["source"] == "panda.mp4"
