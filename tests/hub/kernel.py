"""Run code in a kernel of a hub user's server, through the proxy, as that user (REST + websocket)."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


def _message(code: str, session: str) -> dict[str, Any]:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": session,
                   "msg_type": "execute_request", "version": "5.3",
                   "date": datetime.datetime.now(datetime.timezone.utc).isoformat()},
        "parent_header": {}, "metadata": {}, "buffers": [], "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }


async def _execute(ws_url: str, token: str, code: str, timeout_s: float) -> dict[str, Any]:
    request = HTTPRequest(ws_url, headers={"Authorization": f"token {token}"})
    conn = await asyncio.wait_for(websocket_connect(request), timeout_s)
    try:
        msg = _message(code, uuid.uuid4().hex)
        await conn.write_message(json.dumps(msg))
        out: dict[str, Any] = {"stdout": "", "error": None, "status": None}
        idle = False
        async def pump() -> None:
            nonlocal idle
            while out["status"] is None or not idle:
                raw = await conn.read_message()
                if raw is None:
                    raise ConnectionError("kernel websocket closed")
                reply = json.loads(raw)
                if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                    continue
                kind = reply["msg_type"] if "msg_type" in reply else reply["header"]["msg_type"]
                content = reply["content"]
                if kind == "stream":
                    out["stdout"] += content.get("text", "")
                elif kind == "error":
                    out["error"] = f"{content['ename']}: {content['evalue']}"
                elif kind == "execute_reply":
                    out["status"] = content["status"]
                elif kind == "status" and content.get("execution_state") == "idle":
                    idle = True
        await asyncio.wait_for(pump(), timeout_s)
        return out
    finally:
        conn.close()


def run_in_kernel(hub: Any, user: str, code: str, kernel_id: str | None = None,
                  timeout_s: float = 90) -> tuple[str, dict[str, Any]]:
    """Start (or reuse) a kernel on ``user``'s server and run ``code``; returns ``(kernel_id, result)``.

    ``result`` has ``stdout``, ``error`` (``"Name: message"`` or ``None``) and ``status``.
    """
    token = hub.token_for(user)
    if kernel_id is None:
        status, body = hub.request("POST", f"/user/{user}/api/kernels", {"name": "python3"}, token=token)
        assert status == 201, (status, body)
        kernel_id = body["id"]
    ws_url = hub.url.replace("http://", "ws://") + f"/user/{user}/api/kernels/{kernel_id}/channels"
    return kernel_id, asyncio.run(_execute(ws_url, token, code, timeout_s))
