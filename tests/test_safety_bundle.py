"""Bundles are untrusted: escaping paths, changed bytes and malformed values are one line; export never deletes a
directory or file t2vrt did not write."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from t2vrt.cli import cli
from t2vrt.config import PRESETS, ConfigError
from t2vrt.config.checks import check_model_config
from t2vrt.errors import UsageError
from t2vrt.manifest import load_manifest


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("T2VRT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("engines"))
    return out


def _edit(bundle: Path, fn) -> None:  # type: ignore[no-untyped-def]
    p = bundle / "manifest.json"
    raw = json.loads(p.read_text())
    fn(raw)
    p.write_text(json.dumps(raw))


def _one_line_error(args: list[str]) -> str:
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()  # generate says which backend it chose first
    assert [x for x in lines if "error" in x.lower()] == lines[-1:] and lines[-1].startswith("error: "), r.output
    return lines[-1]


def test_each_kind_of_escaping_path_is_refused(bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "unet/fp32/model.onnx", outside)

    def unet(rel: str):  # type: ignore[no-untyped-def]
        return lambda raw: raw["components"]["unet"]["files"]["fp32"].update(path=rel)

    for edit, why in (
        (unet(str(outside)), "is absolute"),
        (unet("../elsewhere.onnx"), "contains '..'"),
        (lambda raw: raw["tokenizer"].update(file="/etc/passwd"), "is absolute"),
    ):
        saved = (bundle / "manifest.json").read_text()
        _edit(bundle, edit)
        assert why in _one_line_error(["info", str(bundle)])
        (bundle / "manifest.json").write_text(saved)
    (bundle / "unet/fp32/model.onnx").unlink()
    os.symlink(outside, bundle / "unet/fp32/model.onnx")  # a symlink leaving the bundle
    assert "leaves the bundle through a symlink" in _one_line_error(["info", str(bundle)])


def test_a_flipped_byte_is_caught_by_info_and_generate(bundle: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["info", str(bundle)])
    assert r.exit_code == 0 and "verified: sha256 of" in r.output, r.output
    f = bundle / "unet/fp32/model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(data)
    assert "fails its sha256 check" in _one_line_error(["info", str(bundle)])
    msg = _one_line_error(
        ["generate", "x", "--bundle", str(bundle), "-o", str(tmp_path / "o.gif"), "-q", "--backend", "onnxruntime-cpu"]
    )
    assert "model.onnx fails its sha256 check" in msg and not (tmp_path / "o.gif").exists()


def test_a_changed_tokenizer_is_caught_by_info_and_generate(bundle: Path, tmp_path: Path) -> None:
    assert len(load_manifest(bundle).tokenizer.sha256) == 64  # recorded by the export
    f = bundle / "tokenizer.json"
    f.write_text(f.read_text().replace('"a</w>"', '"b</w>"', 1))  # one vocabulary entry: other ids, same graphs
    assert "tokenizer.json fails its sha256 check" in _one_line_error(["info", str(bundle)])
    msg = _one_line_error(
        ["generate", "x", "--bundle", str(bundle), "-o", str(tmp_path / "o.gif"), "-q", "--backend", "onnxruntime-cpu"]
    )
    assert "tokenizer.json fails its sha256 check" in msg and not (tmp_path / "o.gif").exists()


@pytest.mark.parametrize(
    "edit, why",
    [
        (lambda c: c["defaults"].update(fps=0), r"defaults.fps must be in 1..240, got 0"),
        (lambda c: c["unet"].update(channel_mult=[]), r"unet.channel_mult must list 1..8 levels"),
        (lambda c: c["unet"].update(num_heads=-8), r"unet.num_heads must be in 1..1024, got -8"),
        (lambda c: c["text_encoder"].update(context_length=0), r"text_encoder.context_length must be in 1..4096"),
        (lambda c: c["vae"].update(ch_mult=[]), r"vae.ch_mult must list"),  # downscale 2 ** -1
        (lambda c: c["schedule"].update(num_train_timesteps=0), r"num_train_timesteps must be in 2..100000"),
        (lambda c: c["text_encoder"].update(layers=10**9), r"text_encoder.layers must be in 1..256"),
    ],
)
def test_manifest_values_are_checked_before_work(bundle: Path, edit, why: str) -> None:  # type: ignore[no-untyped-def]
    _edit(bundle, lambda raw: edit(raw["model"]["config"]))
    with pytest.raises(UsageError, match=why):
        load_manifest(bundle)


def test_deep_json_and_checkpoint_configs(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(UsageError, match="nests 50000 levels deep"):
        load_manifest(bundle)
    tiny = PRESETS["tiny"]
    for cfg, why in (
        (replace(tiny, unet=replace(tiny.unet, num_res_blocks=10**6)), "num_res_blocks must be in 1..16"),
        (replace(tiny, unet=replace(tiny.unet, head_dim=-1)), "head_dim must be in"),
        (replace(tiny, vae=replace(tiny.vae, norm_groups=7)), "norm_groups 7 must divide"),
    ):
        with pytest.raises(ConfigError, match=why):
            check_model_config(cfg)


def test_export_never_deletes_what_it_did_not_write(bundle: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"my": "data"}')
    (mine / "thesis.tex").write_text("years of work")
    assert "was not written by t2vrt" in _one_line_error(["export", "tiny", "--out", str(mine)])
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.json", "thesis.tex"]

    # Re-export onto a bundle t2vrt wrote: files a user added, and engines, are carried into the new bundle.
    (bundle / "notes.txt").write_text("mine")
    (bundle / "engines" / "gpu").mkdir(parents=True)
    (bundle / "engines" / "gpu" / "x.plan").write_text("engine")
    r = CliRunner().invoke(cli, ["export", "tiny", "--out", str(bundle), "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert (bundle / "notes.txt").read_text() == "mine" and (bundle / "engines/gpu/x.plan").read_text() == "engine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.")]
    load_manifest(bundle)
