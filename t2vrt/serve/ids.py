"""Job ids: made by the server, checked by shape before any use, so an id can never address a file."""

from __future__ import annotations

import re
import secrets

PREFIX = "video_"
_ID = re.compile(r"video_[0-9a-f]{32}")


def new_id() -> str:
    return PREFIX + secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))
