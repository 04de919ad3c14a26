"""The one key-renaming helper every key map uses: a state dict's keys renamed by a table, every key accounted for.

A key the table does not know, a key given twice (under two names), or a key the table needs but the state dict lacks
is a KeyMapError naming it; the loader turns it into one line naming the component and file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

V = TypeVar("V")


class KeyMapError(KeyError):
    """A state dict that does not fit a key map (a KeyError, so `except KeyError` callers keep working)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "key map error"


def rename(
    sd: Mapping[str, V],
    names: Mapping[str, str],
    what: str,
    *,
    skip: tuple[str, ...] = (),
    alias: Callable[[str], str] | None = None,
    convert: Callable[[str, V], V] | None = None,
) -> dict[str, V]:
    """{names[k]: v} for every (k, v) of `sd`, in the order of `names`' values.

    `skip`: key prefixes the map ignores (the other half of a shared file); `alias(k)`: an older spelling -> the
    table's; `convert(new_key, v)`: a value change that goes with the rename (e.g. a Linear weight as a 1x1 conv)."""
    out: dict[str, V] = {}
    for k, v in sd.items():
        if skip and k.startswith(skip):
            continue
        src = alias(k) if alias is not None else k
        if src not in names:
            raise KeyMapError(f"unexpected {what} key {k!r}")
        dst = names[src]
        if dst in out:
            raise KeyMapError(f"{what} key {k!r} given twice (under two names)")
        out[dst] = convert(dst, v) if convert is not None else v
    for src, dst in names.items():
        if dst not in out:
            raise KeyMapError(f"{what} state dict lacks {src!r}")
    return {dst: out[dst] for dst in names.values()}
