"""Build the bundle's tokenizer.json: open_clip's CLIP BPE as a HuggingFace `tokenizers` file (export time only).

The runtime then tokenizes with `tokenizers` alone (no torch, no open_clip, no `regex`). What the file encodes:
- vocab: open_clip's order: the 256 byte symbols, the same with "</w>", one entry per merge, then
  <start_of_text> (49406) and <end_of_text> (49407);
- model: BPE with the "</w>" end-of-word suffix over CLIP's byte-level alphabet (GPT-2's bytes_to_unicode);
- pre-tokenizer: open_clip's regex (kept matches only, case-insensitive as open_clip compiles it), then byte-level
  mapping without its own regex;
- post-processor, truncation and padding as open_clip.tokenize frames ids: SOT + tokens + EOT, cut to the context
  keeping EOT last, zero padding (id 0 is "!": the diffusers port calls it the pad token).
Text cleaning (ftfy, html unescape, whitespace, lower case) is not in the file: `tokenizers` has no ftfy, so the
runtime does it in Python (t2vrt/runtime/tokenizer.py).
"""

from __future__ import annotations

import gzip
import os
import uuid
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE

from t2vrt.runtime.tokenizer import N_MERGES, bytes_to_unicode

SOT, EOT = "<start_of_text>", "<end_of_text>"
SOT_ID, EOT_ID = 49406, 49407
# open_clip's pre-tokenization pattern (tokenizer.py, SimpleTokenizer.pat), special tokens first.
PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def default_bpe_path() -> Path:
    from open_clip.tokenizer import default_bpe  # type: ignore[import-untyped]

    return Path(default_bpe())


def build_tokenizer(bpe_path: str | os.PathLike[str] | None = None, context_length: int = 77) -> Tokenizer:
    """open_clip's tokenizer as a `tokenizers.Tokenizer` (see the module docstring)."""
    if context_length < 2:
        raise ValueError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
    path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path} does not look like CLIP's bpe_simple_vocab_16e6 merges file")

    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens) or vocab[SOT] != SOT_ID or vocab[EOT] != EOT_ID:
        raise ValueError(f"unexpected vocabulary from {path}: {len(vocab)} entries, SOT id {vocab.get(SOT)}")

    tok = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,  # type: ignore[arg-type]
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
            fuse_unk=False,
        )
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("(?i)" + PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Decoding (for people): "</w>" becomes the byte-level space symbol, then byte-level symbols become UTF-8.
    tok.decoder = decoders.Sequence([decoders.Replace("</w>", "\u0120"), decoders.ByteLevel()])
    tok.add_special_tokens(
        [AddedToken(SOT, special=True, normalized=False), AddedToken(EOT, special=True, normalized=False)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, SOT_ID), (EOT, EOT_ID)]
    )
    tok.enable_truncation(max_length=context_length)
    tok.enable_padding(length=context_length, pad_id=0, pad_token=tokens[0])
    return tok


def write_tokenizer_json(
    path: str | os.PathLike[str], context_length: int = 77, bpe_path: str | os.PathLike[str] | None = None
) -> Path:
    """Write the tokenizer file to `path` (via a temp name beside it, then rename) and return the path."""
    path = Path(path)
    tok = build_tokenizer(bpe_path, context_length)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tok.save(str(tmp), pretty=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
