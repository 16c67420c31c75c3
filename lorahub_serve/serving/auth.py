"""API-key check on every route (vLLM's own `--api-key` guards only `/v1`, `/v2`, ... prefixes).

Pure ASGI middleware, added outermost, so nothing behind it (vLLM's routes, ours, `/health`,
`/metrics`, `/invocations`, docs) answers without `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from lorahub_serve.serving.errors import error_body


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyMiddleware:
    """Reject any HTTP or websocket request whose bearer token is not the key (401)."""

    def __init__(self, app, api_key: str):
        if not api_key:
            raise ValueError("ApiKeyMiddleware needs a non-empty api_key")
        self.app = app
        self._key = _digest(api_key)

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(
                    _digest(token.strip()), self._key)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(error_body(
            "missing or invalid API key: send the header 'Authorization: Bearer <key>'",
            "AuthenticationError", 401)).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
