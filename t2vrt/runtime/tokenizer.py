"""Prompt -> token ids, exactly as open_clip.tokenize gives them, from the bundle's tokenizer.json (torch-free).

open_clip's text cleaning runs here in Python (ftfy and html are not something `tokenizers` can do); the BPE, its
pre-tokenization regex and the vocabulary come from the file (built by t2vrt/export/tokenizer_json.py). Framing is
done here too, whatever truncation or padding the file carries: SOT + tokens + EOT, cut to the context with EOT
kept as the last id, zero padding.

Known difference: open_clip's regex tries the special-token names at each match position, tokenizers extracts them
from the whole text first; a literal "<start_of_text>" glued to preceding punctuation (e.g. "!!<start_of_text>")
tokenizes differently. Anywhere else a literal special-token name gives the same ids as open_clip.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import ftfy
import numpy as np
import tokenizers

from t2vrt.errors import T2VError, UsageError

SOT, EOT = "<start_of_text>", "<end_of_text>"
N_MERGES = 49152 - 256 - 2  # open_clip reads lines 1 .. 48894 of the merges file (line 0 is a header)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (same order as open_clip's, which sets the ids)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    # dict order must be printable bytes first, then the remapped ones: open_clip numbers the vocab in this order.
    return {b: table[b] for b in [*printable, *(b for b in range(256) if b not in printable)]}


def clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy.fix_text, html.unescape twice, collapse whitespace, strip, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class Tokenizer:
    def __init__(self, tok: tokenizers.Tokenizer, context_length: int = 77) -> None:
        if context_length < 2:
            raise UsageError(f"context_length must be >= 2 (room for SOT and EOT), got {context_length}")
        sot, eot = tok.token_to_id(SOT), tok.token_to_id(EOT)
        if sot is None or eot is None:
            raise T2VError(
                f"the tokenizer file has no {SOT} / {EOT} tokens: not a CLIP tokenizer (re-export the bundle)"
            )
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        self.context_length = context_length
        self.sot_id, self.eot_id = int(sot), int(eot)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], context_length: int = 77) -> Tokenizer:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"tokenizer file not found: {path}")
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
            raise T2VError(f"cannot read tokenizer file {path}: {e}") from e
        return cls(tok, context_length)

    def tokens(self, text: str) -> list[int]:
        """The BPE ids of one prompt, cleaned, without SOT/EOT and untruncated."""
        return list(self._tok.encode(clean(text), add_special_tokens=False).ids)

    def encode(self, texts: str | Sequence[str]) -> np.ndarray:
        """int64 [B, context_length] ids (B = 1 for a single string), as open_clip.tokenize(texts, context_length)."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
            raise UsageError(f"prompts must be a string or a list of strings, got {type(texts).__name__}")
        encodings = self._tok.encode_batch([clean(t) for t in texts], add_special_tokens=False)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, enc in zip(out, encodings):
            ids = [self.sot_id, *enc.ids, self.eot_id][: self.context_length]
            ids[-1] = self.eot_id  # a truncated prompt still ends with EOT (the text encoder pools/attends up to it)
            row[: len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """One row of ids back to (cleaned) text: SOT dropped, stops at the first EOT."""
        row = [int(i) for i in ids]
        if row and row[0] == self.sot_id:
            row = row[1:]
        if self.eot_id in row:
            row = row[: row.index(self.eot_id)]
        return str(self._tok.decode(row, skip_special_tokens=True)).strip()

    def num_tokens(self, text: str) -> int:
        """How many ids a prompt takes with SOT and EOT, before truncation (to warn about cut-off prompts)."""
        return len(self.tokens(text)) + 2
