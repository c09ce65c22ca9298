"""The engine's API key check, for engines that have none of their own (``transformers serve``).

A pure ASGI middleware with vLLM's rule (``AuthenticationMiddleware`` in
``vllm/entrypoints/serve/utils/server_utils.py``): the request must carry
``Authorization: Bearer <key>``, compared as SHA-256 digests with
``secrets.compare_digest``; a missing or wrong key gets 401 and a JSON error. One
difference: vLLM guards ``/v1`` and a few prefixes only, while ``transformers serve``
also answers ``/load_model`` and ``/reset`` outside ``/v1``, so here everything is
guarded except ``GET /health`` (which says nothing but "up").

Why our own code: Starlette's ``AuthenticationMiddleware`` only labels requests (routes
then decide), and ``transformers serve`` has no routes of ours to decorate; vLLM's class
is the same dozen lines and would bring vLLM.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Paths answered without a key (GET only).
OPEN_PATHS = frozenset({"/health"})


class BearerKeyMiddleware:
    """Refuse every request without the engine's key, except ``GET /health``.

    Args:
        app: the ASGI app (transformers' FastAPI app).
        key: the engine's API key.
    """

    def __init__(self, app: ASGIApp, key: str) -> None:
        if not key:
            raise ValueError("an engine's API key cannot be empty")
        self.app = app
        self._digest = hashlib.sha256(key.encode("utf-8")).digest()

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return False
                return secrets.compare_digest(hashlib.sha256(token.strip().encode("utf-8")).digest(), self._digest)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):  # lifespan: start-up and shut-down of the app
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", "")).removeprefix(str(scope.get("root_path", "")))
        if (kind == "http" and scope.get("method") == "GET" and path in OPEN_PATHS) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": {"message": "a valid API key is required (Authorization: Bearer KEY)",
                                     "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
