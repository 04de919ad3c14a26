"""The runtime tokenizer (tokenizers + the exported tokenizer.json) against open_clip.tokenize, id for id."""

from __future__ import annotations

import json

import numpy as np
import pytest

from t2vrt.errors import T2VError, UsageError
from t2vrt.runtime.tokenizer import Tokenizer, clean

open_clip = pytest.importorskip("open_clip")
from t2vrt.export.tokenizer_json import build_tokenizer, bytes_to_unicode, write_tokenizer_json  # noqa: E402

PROMPTS = [
    "A panda eating bamboo on a rock.",  # plain
    "Hello, World!!! ... ?! (really) [yes] {no} @home #tag $5 %d ^_^ ~/path",  # punctuation
    "3.14159 and 2024-01-01, 1,000,000 x2 4k 1080p",  # numbers (one token per digit)
    "it's they're we've I'm you'll he'd don't IT'S THEY'RE",  # contractions
    "café naïve résumé Ångström crème brûlée",  # accents
    "一只熊猫在吃竹子",  # CJK (Chinese)
    "日本語のテキスト、한국어 텍스트",  # CJK (Japanese, Korean)
    "Tom &amp; Jerry &lt;3 &#39;quoted&#39; &amp;amp; &gt;",  # html entities, double-escaped too
    "Ã©tÃ© mojibake â€œquotesâ€\x9d donâ€™t",  # mojibake ftfy repairs
    "fire 🔥 emoji 👩‍👩‍👧 ok ✨✨",  # emoji, ZWJ sequence
    "tabs\tand\nnewlines   and  spaces \r\n  ",  # whitespace
    " ".join(f"word{i}" for i in range(60)),  # very long: > 77 tokens
    "",  # empty
    "<start_of_text> literal <end_of_text> tokens",  # special-token names typed by a user
    "'ſ long s, İstanbul ΣΊΣΥΦΟΣ ß",  # case folding corner cases
    "x\u00a0y\u2003z\u200bw ﬁ ligature ½ ² ④",  # unicode spaces, zero width, compatibility characters
    "a" * 300,  # one huge word
    "\x1c\x1dcontrol\x85chars\x00",  # control characters
]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    return write_tokenizer_json(tmp_path_factory.mktemp("tok") / "tokenizer.json", context_length=77)


@pytest.fixture(scope="module")
def tok(tok_path):
    return Tokenizer.from_file(tok_path, context_length=77)


def test_byte_table_is_open_clips():
    from open_clip.tokenizer import bytes_to_unicode as reference

    assert list(bytes_to_unicode().items()) == list(reference().items())


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_each_prompt_matches_open_clip(tok, prompt):
    ours = tok.encode(prompt)
    ref = open_clip.tokenize(prompt).numpy()
    assert ours.dtype == np.int64 and ours.shape == (1, 77)
    np.testing.assert_array_equal(ours, ref)


def test_batch_matches_open_clip(tok):
    ours = tok.encode(PROMPTS)
    ref = open_clip.tokenize(PROMPTS).numpy()
    assert ours.shape == (len(PROMPTS), 77)
    np.testing.assert_array_equal(ours, ref)
    print(f"tokenizer: {len(PROMPTS)} prompts, {int((ref != 0).sum())} ids, all equal to open_clip.tokenize")


def test_framing(tok):
    ids = tok.encode(["", "a photo of a cat", " ".join(["cat"] * 200)])
    assert list(ids[0, :3]) == [49406, 49407, 0]
    assert ids[1, 0] == 49406 and (ids[1] == 49407).sum() == 1 and ids[1, -1] == 0
    assert ids[2, 0] == 49406 and ids[2, -1] == 49407 and (ids[2] != 0).all()  # truncated, EOT kept last
    assert tok.num_tokens(" ".join(["cat"] * 200)) == 202
    assert tok.decode(ids[1]) == "a photo of a cat"


def test_other_context_length(tok_path):
    short = Tokenizer.from_file(tok_path, context_length=8)
    np.testing.assert_array_equal(short.encode(PROMPTS), open_clip.tokenize(PROMPTS, context_length=8).numpy())


def test_the_file_alone_gives_open_clips_ids(tok_path):
    # Third-party users of tokenizer.json get the same framing from the file's post-processor, truncation, padding.
    import tokenizers

    hf = tokenizers.Tokenizer.from_file(str(tok_path))
    ids = np.array([e.ids for e in hf.encode_batch([clean(p) for p in PROMPTS])])
    np.testing.assert_array_equal(ids, open_clip.tokenize(PROMPTS).numpy())
    assert json.loads(tok_path.read_text())["model"]["end_of_word_suffix"] == "</w>"


def test_cleaning_is_open_clips():
    from open_clip.tokenizer import _clean_lower

    for p in PROMPTS:
        assert clean(p) == _clean_lower(p)


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    out = write_tokenizer_json(tmp_path / "tokenizer.json")
    assert out == tmp_path / "tokenizer.json" and out.stat().st_size > 1_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]


def test_errors(tmp_path, tok):
    with pytest.raises(UsageError, match="not found"):
        Tokenizer.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(T2VError, match="cannot read"):
        Tokenizer.from_file(bad)
    with pytest.raises(UsageError, match="context_length"):
        Tokenizer(build_tokenizer(), context_length=1)
    with pytest.raises(UsageError, match="string"):
        tok.encode(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="string"):
        tok.encode(None)  # type: ignore[arg-type]
