"""What keeps one client from holding up the others: a request body limit (413) enforced before the body is
parsed, and error responses that are valid JSON whatever the client sent."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmdual.serve.schema import error_body


class ErrorResponse(JSONResponse):
    """A JSON error, ASCII-escaped: a message quoting odd client text (a lone surrogate) still encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


DRAIN_BYTES = 64 * 2**20  # an oversized body is read and dropped up to this, so its client can read the 413


class BodyLimit:
    """ASGI middleware buffering each request body up to ``max_bytes``: a larger one is answered 413 without
    being parsed, known by its Content-Length or as soon as a chunked upload passes the limit. The rest is read
    and dropped (up to ``DRAIN_BYTES``) first: a client still writing would otherwise see a reset, not the 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(receive, send, int(declared))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-upload
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(receive if more else None, send, size)
                return
        body = b"".join(chunks)

        async def replay() -> Message:
            nonlocal body
            if body is None:
                return await receive()  # after the body: disconnects, which streaming responses watch for
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, receive: Receive | None, send: Send, size: int) -> None:
        """Drain what is left of the body (``receive`` None: nothing is), then answer 413 and close."""
        drained = 0
        while receive is not None and drained < DRAIN_BYTES:
            message = await receive()
            drained += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        limit_mb = self.max_bytes / 2**20
        message = (f"the request body ({size} bytes or more) is larger than this server's limit of {limit_mb:g} MB "
                   f"(--max-body-mb)")
        response = ErrorResponse(error_body(message, "invalid_request_error", None, "request_too_large"),
                                 status_code=413, headers={"connection": "close"})
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
