"""Two pure-ASGI guards in front of the app: the request-size limit and the API key.

The size limit counts the bytes as they arrive (a missing or false Content-Length does not get past it) and answers
413 before the app reads a byte too many. The key is compared in constant time; only `/v1/...` needs it (the page
itself holds no data; it asks for the key and sends it with every API call).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from t2vrt.serve.errors import error_body

Scope = dict[str, Any]
Message = dict[str, Any]


async def _reply(
    send: Any, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TooLarge(Exception):
    """Raised from `receive` past the limit; the app's handler for it answers 413 (see api.py)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"request body over the {max_bytes}-byte limit (see --max-upload-mb)")


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = str(TooLarge(self.max_bytes))
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _reply(send, 413, message, "request_too_large")
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            msg: Message = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise TooLarge(self.max_bytes)
            return msg

        async def tracked(msg: Message) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except TooLarge:
            if not started:
                await _reply(send, 413, message, "request_too_large")


class ApiKey:
    def __init__(self, app: Any, key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.expected is None or scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            what = "missing" if not given else "wrong"
            await _reply(
                send,
                401,
                f"API key {what}: send Authorization: Bearer <key> (the server's --api-key)",
                "invalid_api_key",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)
