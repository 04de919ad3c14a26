"""Malformed values are one line before work starts: .npy latents, JSON files, noise schedules; NaN/inf blamed on
the stage and cause that made them."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from t2vrt.errors import T2VError, UsageError
from t2vrt.safety import finite
from t2vrt.safety.jsonfile import read_json
from t2vrt.safety.npy import load_npy

SHAPE = (1, 4, 2, 3, 3)


def _npy_header(tmp_path: Path, name: str, descr: str, shape: tuple[int, ...], data: bytes = b"") -> Path:
    from numpy.lib import format as npformat

    p = tmp_path / name
    with open(p, "wb") as f:
        npformat.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)
    return p


def test_npy_reader_refuses_every_bad_file(tmp_path: Path) -> None:
    good = np.random.default_rng(0).standard_normal(SHAPE)
    cases: dict[str, tuple[Path, str]] = {}

    def case(name: str, why: str, arr: np.ndarray | None = None, raw: bytes | None = None) -> None:
        p = tmp_path / f"{name}.npy"
        if arr is not None:
            np.save(p, arr, allow_pickle=True)
        else:
            p.write_bytes(raw or b"")
        cases[name] = (p, why)

    case("text", "is a text file", raw=b"0.1 0.2 0.3\n")
    case("pickle", "not a .npy array", raw=pickle.dumps(good))
    case("empty", "not a .npy array", raw=b"")
    case("object", "holds object values", arr=np.array([{"a": 1}], dtype=object))
    case("string", "holds <U5 values", arr=np.array(["hello"]))
    case("structured", "holds", arr=np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")]))
    case("complex", "holds complex64 values", arr=good.astype(np.complex64))
    case("int", "holds int64 values", arr=good.astype(np.int64))
    case("rank", "has 2 dimensions", arr=np.zeros((2, 2), np.float32))
    case("nan", "contains NaN or inf", arr=np.where(good > 1, np.nan, good))
    case("overflow", "beyond float32", arr=np.where(good > 1, 1e300, good))
    big = _npy_header(tmp_path, "terabytes.npy", "<f4", (1, 4, 10**6, 10**4, 10**4))
    cases["terabytes"] = (big, "claims shape .* at most")
    trunc = tmp_path / "truncated.npy"
    np.save(trunc, good.astype(np.float32))
    trunc.write_bytes(trunc.read_bytes()[:-7])
    cases["truncated"] = (trunc, "truncated")
    cases["header"] = (_npy_header(tmp_path, "header.npy", "<f4", SHAPE).with_name("header.npy"), "promises")
    cut = tmp_path / "cut.npy"
    cut.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': os.system('x')}      \n")
    cases["cut"] = (cut, "malformed .npy header")
    code = b"{'descr': __import__('os').system('touch x'), 'fortran_order': False, 'shape': (1,), }"
    code += b" " * (63 - (10 + len(code)) % 64) + b"\n"
    (tmp_path / "code.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(code).to_bytes(2, "little") + code)
    cases["code"] = (tmp_path / "code.npy", "malformed .npy header")

    for name, (p, why) in cases.items():
        with pytest.raises(UsageError, match=why) as e:
            load_npy(p, ndim=5)
        assert "\n" not in str(e.value), name
    assert not (tmp_path / "x").exists()

    ok = tmp_path / "ok.npy"
    np.save(ok, np.asfortranarray(good))  # float64, Fortran order, big values within float32: accepted
    out = load_npy(ok, ndim=5)
    assert out.dtype == np.float32 and out.flags.c_contiguous and np.allclose(out, good, rtol=1e-6)


def test_json_reader_bounds_nesting_and_size(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UsageError, match="nests 100000 levels deep"):
        read_json(deep)
    tricky = tmp_path / "strings.json"
    tricky.write_text('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[["}')
    assert read_json(tricky)["a"].startswith("[[[")  # brackets inside strings do not count
    for text, why in (("{nope", "not valid JSON"), ("\xff\xfe", "not UTF-8")):
        (tmp_path / "bad.json").write_bytes(text.encode("latin-1"))
        with pytest.raises(UsageError, match=why):
            read_json(tmp_path / "bad.json", hint="re-export the bundle")
    with pytest.raises(UsageError, match="at most 10 expected"):
        read_json(tricky, max_bytes=10)


@pytest.mark.parametrize(
    "betas, n, why",
    [
        ([0.01] * 999, 1000, r"shape \(999,\); expected 1000"),
        ([0.01] * 999 + [1.5], 1000, r"betas\[999\] = 1.5"),
        ([0.01] * 10 + [float("nan")], 11, "betas"),
        ([0.0] * 4, 4, r"betas\[0\] = 0.0"),
        ("abc", 3, "list of numbers|shape"),
        ([0.01] * 4, 0, "num_train_timesteps"),
    ],
)
def test_schedule_checks(betas: object, n: object, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        finite.check_schedule(betas, n)


def test_nonfinite_values_are_blamed_on_their_cause() -> None:
    x = np.ones((1, 4, 2, 2, 2), np.float32)
    bad = x.copy()
    bad[0, 0, 0, 0, 0] = np.nan
    # A graph: finite in, NaN out.
    with pytest.raises(T2VError, match="the UNet graph produced NaN or inf at t=981 from finite inputs"):
        finite.check_graph_output("UNet", bad, {"latents": x, "timestep": np.array([981.0])}, " at t=981")
    # Its input was already broken: the stage before is to blame.
    with pytest.raises(T2VError, match="its input 'latents' already holds NaN"):
        finite.check_graph_output("VAE decoder", bad, {"latents": bad})
    # The user's guidance overflows float32 in the guidance sum: a usage error naming the value.
    with pytest.raises(UsageError, match="guidance 1e\\+38 overflows float32"):
        finite.guidance_sum(x * 5, x, 1e38)
    np.testing.assert_allclose(finite.guidance_sum(x * 3, x, 9.0), x * 19)
    # A sampler step from finite latents and eps: the schedule.
    with pytest.raises(T2VError, match="noise schedule"):
        finite.check_step(x, x, bad, 21)
    assert finite.check_step(x, x, x, 21) is x
