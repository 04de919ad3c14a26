"""input_reference: what the bytes are is decided by their content (magic numbers), never by a name or a header.

Accepted: PNG, JPEG (images: image-to-video) and MP4/MOV, WebM/Matroska, GIF (clips: video-to-video). Images are
also decoded once (Pillow), so a truncated or hostile file fails at submit rather than in the worker.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

from t2vrt.serve.errors import ApiError

ALLOWED = "a PNG or JPEG image, or an MP4, WebM or GIF clip"
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Upload:
    data: bytes
    kind: str  # "image" | "video"
    ext: str  # ".png" | ".jpg" | ".gif" | ".mp4" | ".webm"


def sniff(data: bytes) -> tuple[str, str] | None:
    """(kind, extension) from the first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image", ".jpg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "video", ".gif"
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: WebM / Matroska
        return "video", ".webm"
    if len(data) >= 12 and data[4:8] == b"ftyp":  # ISO base media: MP4 / MOV
        return "video", ".mp4"
    return None


def check_upload(data: bytes, max_bytes: int) -> Upload:
    if not data:
        raise ApiError(400, "input_reference is empty", param="input_reference")
    if len(data) > max_bytes:
        raise ApiError(
            413,
            f"input_reference is {len(data)} bytes; the limit is {max_bytes}",
            param="input_reference",
            code="upload_too_large",
        )
    found = sniff(data)
    if found is None:
        raise ApiError(
            415,
            f"input_reference must be {ALLOWED} (checked by content); got bytes starting {data[:8].hex()}",
            param="input_reference",
            code="unsupported_media",
        )
    kind, ext = found
    if kind == "image":
        _check_image(data)
    return Upload(data, kind, ext)


def _check_image(data: bytes) -> None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ApiError(
                    400, f"input_reference is {w}x{h}; at most {MAX_IMAGE_PIXELS} pixels", param="input_reference"
                )
            im.load()
    except ApiError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ApiError(400, f"input_reference is not a readable image: {e}", param="input_reference") from None


def from_reference(value: object, max_bytes: int) -> Upload:
    """A JSON input_reference: a data: URL string, or {"image_url": "data:..."}. Nothing is fetched from the web."""
    if isinstance(value, dict):
        if "file_id" in value:
            raise ApiError(
                400,
                "input_reference.file_id is not supported here: upload the file (multipart) or send a data: URL",
                param="input_reference",
            )
        value = value.get("image_url")
    if not isinstance(value, str):
        raise ApiError(
            400,
            'input_reference must be an uploaded file, a data: URL, or {"image_url": "data:..."}',
            param="input_reference",
        )
    if not value.startswith("data:"):
        raise ApiError(
            400,
            "input_reference URLs are not fetched; send the file itself (multipart upload or a base64 data: URL)",
            param="input_reference",
        )
    header, sep, payload = value.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ApiError(
            400, "input_reference data: URL must be base64 (data:<type>;base64,...)", param="input_reference"
        )
    if len(payload) > max_bytes * 4 // 3 + 4:
        raise ApiError(
            413, f"input_reference is over the {max_bytes}-byte limit", param="input_reference", code="upload_too_large"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "input_reference data: URL is not valid base64", param="input_reference") from None
    return check_upload(data, max_bytes)
